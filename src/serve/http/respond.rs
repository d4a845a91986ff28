//! What to send for a file: a pure decision from the method's conditionals
//! and ranges (RFC 9110 §13, §14) and what is known of the file (its size and
//! ETag). No sockets and no files here, so every case is a unit test.

use super::range::{self, Ranges};
use bytes::Bytes;

/// Every response's body: whole texts, and artifacts streamed in parts.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What the request said about conditions and ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Conditions {
    pub if_none_match: Option<String>,
    pub if_range: Option<String>,
    pub range: Option<String>,
}

/// What is known of the file.
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    pub size: u64,
    /// Quoted, e.g. `"9f2c…"` (the artifact's SHA-256).
    pub etag: String,
    pub content_type: &'static str,
}

/// A piece of a body: literal bytes (multipart headers) or a region of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Bytes(Bytes),
    /// Offset and length.
    Region(u64, u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// 304: the client has it.
    NotModified,
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable { size: u64 },
    /// 200 or 206 with these headers and body parts.
    Send { status: u16, content_type: String, content_range: Option<String>, parts: Vec<Part>, len: u64 },
}

pub(crate) fn decide(meta: &FileMeta, c: &Conditions) -> Decision {
    if let Some(inm) = &c.if_none_match {
        let hit = inm.split(',').map(|t| t.trim().trim_start_matches("W/")).any(|t| t == "*" || t == meta.etag);
        if hit {
            return Decision::NotModified;
        }
    }
    let range_header = match &c.if_range {
        Some(ir) if ir.trim() != meta.etag => None, // changed since: send it all
        _ => c.range.as_deref(),
    };
    let size = meta.size;
    let ctype = meta.content_type;
    match range::parse(range_header, size) {
        Ranges::Full => Decision::Send {
            status: 200,
            content_type: ctype.into(),
            content_range: None,
            parts: vec![Part::Region(0, size)],
            len: size,
        },
        Ranges::Single((a, b)) => Decision::Send {
            status: 206,
            content_type: ctype.into(),
            content_range: Some(format!("bytes {a}-{b}/{size}")),
            parts: vec![Part::Region(a, b - a + 1)],
            len: b - a + 1,
        },
        Ranges::Multi(spans) => {
            // The boundary comes from the ETag: the same request gets the same bytes.
            let boundary = format!("imgd-{}", meta.etag.trim_matches('"').chars().take(24).collect::<String>());
            let mut parts = Vec::new();
            let mut len = 0;
            for (a, b) in spans {
                let head =
                    format!("\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n");
                len += head.len() as u64 + (b - a + 1);
                parts.push(Part::Bytes(Bytes::from(head)));
                parts.push(Part::Region(a, b - a + 1));
            }
            let tail = format!("\r\n--{boundary}--\r\n");
            len += tail.len() as u64;
            parts.push(Part::Bytes(Bytes::from(tail)));
            Decision::Send {
                status: 206,
                content_type: format!("multipart/byteranges; boundary={boundary}"),
                content_range: None,
                parts,
                len,
            }
        }
        Ranges::Unsatisfiable => Decision::Unsatisfiable { size },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> FileMeta {
        FileMeta { size: 1000, etag: "\"abc\"".into(), content_type: "application/octet-stream" }
    }

    fn send_len(d: &Decision) -> Option<(u16, u64)> {
        match d {
            Decision::Send { status, len, .. } => Some((*status, *len)),
            _ => None,
        }
    }

    #[test]
    fn conditionals() {
        let m = meta();
        assert_eq!(
            decide(&m, &Conditions { if_none_match: Some("\"abc\"".into()), ..Default::default() }),
            Decision::NotModified
        );
        assert_eq!(
            decide(&m, &Conditions { if_none_match: Some("W/\"x\", *".into()), ..Default::default() }),
            Decision::NotModified
        );
        assert_eq!(
            send_len(&decide(&m, &Conditions { if_none_match: Some("\"x\"".into()), ..Default::default() })),
            Some((200, 1000))
        );
        let stale =
            Conditions { if_range: Some("\"old\"".into()), range: Some("bytes=0-9".into()), ..Default::default() };
        assert_eq!(send_len(&decide(&m, &stale)), Some((200, 1000)), "If-Range with another validator: all of it");
        let fresh =
            Conditions { if_range: Some("\"abc\"".into()), range: Some("bytes=0-9".into()), ..Default::default() };
        assert_eq!(send_len(&decide(&m, &fresh)), Some((206, 10)));
    }

    #[test]
    fn ranges() {
        let m = meta();
        let r = |h: &str| decide(&m, &Conditions { range: Some(h.into()), ..Default::default() });
        match r("bytes=100-199") {
            Decision::Send { status: 206, content_range: Some(cr), parts, len: 100, .. } => {
                assert_eq!(cr, "bytes 100-199/1000");
                assert_eq!(parts, [Part::Region(100, 100)]);
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(r("bytes=1000-"), Decision::Unsatisfiable { size: 1000 });
        match r("bytes=0-3,-4") {
            Decision::Send { status: 206, content_type, parts, len, .. } => {
                assert!(content_type.starts_with("multipart/byteranges; boundary=imgd-abc"));
                let body: u64 = parts
                    .iter()
                    .map(|p| match p {
                        Part::Bytes(b) => b.len() as u64,
                        Part::Region(_, n) => *n,
                    })
                    .sum();
                assert_eq!(body, len);
                assert!(parts.contains(&Part::Region(996, 4)));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn overlapping_ranges_never_send_more_than_the_file() {
        let m = meta();
        let many = format!("bytes={}", vec!["0-"; 16].join(","));
        let d = decide(&m, &Conditions { range: Some(many), ..Default::default() });
        let (_, len) = send_len(&d).unwrap();
        assert!(len <= m.size, "{len} bytes for a {}-byte file", m.size);
    }
}
