//! `Range: bytes=...` per RFC 9110 §14: what part of an artifact to send.

/// Inclusive byte range.
pub(crate) type Span = (u64, u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ranges {
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

pub(crate) fn parse(header: Option<&str>, size: u64) -> Ranges {
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
    // Overlapping or touching ranges are sent once (§14.3 lets a server
    // coalesce them): `bytes=0-,0-,0-` must not cost three files.
    spans.sort_unstable();
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let spans = merged;
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
        assert_eq!(parse(Some("bytes=500-600,601-999"), n), Ranges::Single((500, 999)), "touching ranges coalesce");
        assert_eq!(parse(Some("bytes=500-600,700-999"), n), Ranges::Multi(vec![(500, 600), (700, 999)]));
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

    #[test]
    fn overlapping_ranges_coalesce() {
        let n = 1000;
        assert_eq!(parse(Some(&format!("bytes={}", vec!["0-"; 16].join(","))), n), Ranges::Single((0, 999)));
        assert_eq!(parse(Some("bytes=900-,-200,0-10,5-20"), n), Ranges::Multi(vec![(0, 20), (800, 999)]));
    }

    /// The sum of what any header makes us send is at most the file.
    #[test]
    fn never_more_than_the_file_for_any_header() {
        use proptest::prelude::*;
        let spec = prop::collection::vec((prop::option::of(0u64..2000), prop::option::of(0u64..2000)), 0..20);
        proptest!(ProptestConfig::with_cases(2000), |(parts in spec, size in 0u64..1500)| {
            let h = format!("bytes={}", parts.iter().map(|(a, b)| format!(
                "{}-{}", a.map_or(String::new(), |v| v.to_string()), b.map_or(String::new(), |v| v.to_string())
            )).collect::<Vec<_>>().join(","));
            let total: u64 = match parse(Some(&h), size) {
                Ranges::Full | Ranges::Unsatisfiable => size,
                Ranges::Single((a, b)) => { prop_assert!(a <= b && b < size); b - a + 1 }
                Ranges::Multi(s) => {
                    prop_assert!(s.windows(2).all(|w| w[0].1 + 1 < w[1].0), "sorted, disjoint: {s:?}");
                    s.iter().map(|(a, b)| b - a + 1).sum()
                }
            };
            prop_assert!(total <= size, "{h}: {total} > {size}");
        });
    }
}
