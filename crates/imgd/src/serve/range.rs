//! `Range: bytes=...` per RFC 9110 §14: what part of an artifact to send.

/// Inclusive byte range.
pub type Span = (u64, u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// No (usable) Range header: send everything with 200.
    Full,
    /// One satisfiable range: 206 with Content-Range.
    Single(Span),
    /// Several: 206 multipart/byteranges.
    Multi(Vec<Span>),
    /// A valid header none of whose ranges overlap the file: 416.
    Unsatisfiable,
}

/// More ranges than this are treated as no Range at all (a server may ignore
/// Range, §14.2), so a client cannot make us send one file a thousand times.
const MAX_RANGES: usize = 16;

pub fn parse(header: Option<&str>, size: u64) -> Ranges {
    let Some(h) = header else { return Ranges::Full };
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return Ranges::Full };
    let mut spans = Vec::new();
    let mut parts = 0;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        parts += 1;
        let Some((a, b)) = part.split_once('-') else { return Ranges::Full };
        let (a, b) = (a.trim(), b.trim());
        let num = |s: &str| s.parse::<u64>().ok().filter(|_| s.bytes().all(|c| c.is_ascii_digit()));
        let span = if a.is_empty() {
            // Suffix: the last n bytes.
            let Some(n) = num(b) else { return Ranges::Full };
            if n == 0 || size == 0 {
                None
            } else {
                Some((size.saturating_sub(n), size - 1))
            }
        } else {
            let Some(first) = num(a) else { return Ranges::Full };
            let last = if b.is_empty() {
                u64::MAX
            } else {
                match num(b) {
                    Some(l) if l >= first => l,
                    _ => return Ranges::Full, // invalid range-spec: ignore the header
                }
            };
            (first < size).then(|| (first, last.min(size - 1)))
        };
        if let Some(s) = span {
            spans.push(s);
        }
    }
    if parts == 0 || parts > MAX_RANGES {
        return Ranges::Full;
    }
    match spans.len() {
        0 => Ranges::Unsatisfiable,
        1 => Ranges::Single(spans[0]),
        _ => Ranges::Multi(spans),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9110_examples() {
        let n = 10_000;
        assert_eq!(parse(Some("bytes=0-499"), n), Ranges::Single((0, 499)));
        assert_eq!(parse(Some("bytes=500-999"), n), Ranges::Single((500, 999)));
        assert_eq!(parse(Some("bytes=-500"), n), Ranges::Single((9500, 9999)));
        assert_eq!(parse(Some("bytes=9500-"), n), Ranges::Single((9500, 9999)));
        assert_eq!(parse(Some("bytes=0-0,-1"), n), Ranges::Multi(vec![(0, 0), (9999, 9999)]));
        assert_eq!(parse(Some("bytes=500-600,601-999"), n), Ranges::Multi(vec![(500, 600), (601, 999)]));
        assert_eq!(parse(Some("bytes=0-99999"), n), Ranges::Single((0, 9999)), "last clamps to the size");
        assert_eq!(parse(Some("bytes=-99999"), n), Ranges::Single((0, 9999)));
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(parse(Some("bytes=10000-"), 10_000), Ranges::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10_000), Ranges::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-1"), 0), Ranges::Unsatisfiable);
        assert_eq!(parse(None, 10), Ranges::Full);
        assert_eq!(parse(Some("items=0-1"), 10), Ranges::Full);
        assert_eq!(parse(Some("bytes=5-2"), 10), Ranges::Full);
        assert_eq!(parse(Some("bytes=a-b"), 10), Ranges::Full);
        assert_eq!(parse(Some("bytes=+1-2"), 10), Ranges::Full);
        let many = format!("bytes={}", (0..20).map(|i| format!("{i}-{i}")).collect::<Vec<_>>().join(","));
        assert_eq!(parse(Some(&many), 100), Ranges::Full);
    }
}
