//! Requests to routes: the only place that looks at a request's method, path
//! and query. Everything a client sends is checked here, before it reaches
//! selection, a script, a log line or the filesystem: path segments are plain
//! names ([`EntryName`], [`ArtifactFile`]), and every identity claim has the
//! shape iPXE gives it ([`Claims`]) or the request is refused with 400.

use crate::model::{ArtifactFile, EntryName};
use crate::serve::http::respond::Conditions;
use hyper::header::{self, HeaderMap};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// What a request asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/boot.ipxe?LABELS`: the script that sends the machine's identity on.
    Chain {
        labels: Labels,
    },
    /// `/ipxe?mac=..&uuid=..&LABELS`: the script for this machine's group.
    Machine {
        claims: Claims,
        labels: Labels,
    },
    /// `/profiles/<name>/boot.ipxe`: a profile's script for any machine.
    Profile {
        name: String,
    },
    /// `/artifacts/<entry>/<file>`, with the request's conditional and range headers.
    Artifact {
        entry: EntryName,
        file: ArtifactFile,
        conditions: Conditions,
    },
    /// `/signed/<entry>/<cert>/<file>`: the copy of an entry's UKI signed
    /// with the certificate whose SHA-256 starts with `cert` (32 hex digits).
    Signed {
        entry: EntryName,
        cert: String,
        file: ArtifactFile,
        conditions: Conditions,
    },
    /// `<script or boot file>.sig`: the detached CMS signature of what the
    /// same path without `.sig` (and the same query) answers, for iPXE's
    /// `imgverify` (`[ipxe_signing]`).
    Signature(Box<Route>),
    /// `/loaders/<file>`: an iPXE build for UEFI HTTP boot (`--proxy-dhcp`).
    Loader {
        loader: super::loaders::Loader,
    },
    Metrics,
    Healthz,
    /// `/status` (HTML) or `/status.json`, `?sort=step|time`.
    Status {
        json: bool,
        sort: super::status::Sort,
    },
}

impl Route {
    /// The endpoint label in metrics.
    pub(crate) fn endpoint(&self) -> &'static str {
        match self {
            Route::Chain { .. } => "boot.ipxe",
            Route::Machine { .. } => "ipxe",
            Route::Profile { .. } => "profile",
            Route::Artifact { .. } => "artifacts",
            Route::Signed { .. } => "signed",
            Route::Signature(_) => "signature",
            Route::Loader { .. } => "loaders",
            Route::Metrics => "metrics",
            Route::Healthz => "healthz",
            Route::Status { .. } => "status",
        }
    }
}

/// Why a request has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not GET or HEAD.
    Method,
    /// A path or query value that cannot be right; the message says which.
    BadRequest(String),
    NotFound,
}

pub use super::machines::Claims;

/// Extra query parameters (`/boot.ipxe?rack=12`), matched by `labels` selectors.
pub(crate) type Labels = BTreeMap<String, String>;

/// At most this many labels, and this long a value: a query is not a data store.
const MAX_LABELS: usize = 32;
const MAX_VALUE: usize = 256;

/// The route of a request: GET or HEAD, its path and query, and for an
/// artifact its conditional and range headers.
pub(crate) fn parse(method: &hyper::Method, uri: &hyper::Uri, headers: &HeaderMap) -> Result<Route, Refused> {
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return Err(Refused::Method);
    }
    let mut route = route(uri.path(), uri.query())?;
    if let Route::Artifact { conditions, .. } | Route::Signed { conditions, .. } = &mut route {
        let h = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        *conditions = Conditions {
            if_none_match: h(header::IF_NONE_MATCH),
            if_range: h(header::IF_RANGE),
            range: h(header::RANGE),
        };
    }
    Ok(route)
}

/// The route of a path and query.
pub(crate) fn route(path: &str, query: Option<&str>) -> Result<Route, Refused> {
    // The longest route has four segments: kept on the stack, not in a Vec
    // (two allocations a request). A longer path is checked, then no route.
    let mut decoded: [Cow<str>; 4] = Default::default();
    let mut n = 0;
    each_segment(path, |s| {
        if let Some(slot) = decoded.get_mut(n) {
            *slot = s;
        }
        n += 1;
    })
    .ok_or_else(|| Refused::BadRequest("bad path".into()))?;
    if n > decoded.len() {
        return Err(Refused::NotFound);
    }
    let mut all = decoded.each_ref().map(|s| &**s);
    let seg = &mut all[..n];
    if let Some(last) = seg.last_mut().filter(|l| l.ends_with(".sig")) {
        *last = &last[..last.len() - ".sig".len()];
        return match route_of(seg, query)? {
            of @ (Route::Chain { .. } | Route::Machine { .. } | Route::Profile { .. } | Route::Artifact { .. }) => {
                Ok(Route::Signature(Box::new(of)))
            }
            _ => Err(Refused::NotFound),
        };
    }
    route_of(seg, query)
}

fn route_of(seg: &[&str], query: Option<&str>) -> Result<Route, Refused> {
    match seg {
        ["boot.ipxe"] => {
            let (_, labels) = split_query(query)?;
            Ok(Route::Chain { labels })
        }
        ["ipxe"] => {
            let (claims, labels) = split_query(query)?;
            Ok(Route::Machine { claims, labels })
        }
        ["profiles", name, "boot.ipxe"] if crate::model::valid_name(name) => {
            Ok(Route::Profile { name: name.to_string() })
        }
        ["artifacts", entry, file] => {
            let entry = EntryName::new(entry).map_err(|_| Refused::NotFound)?;
            let file = ArtifactFile::new(file).map_err(|_| Refused::NotFound)?;
            Ok(Route::Artifact { entry, file, conditions: Conditions::default() })
        }
        ["signed", entry, cert, file] => {
            let entry = EntryName::new(entry).map_err(|_| Refused::NotFound)?;
            let cert_ok = cert.len() == 32 && cert.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            let file = ArtifactFile::new(file).map_err(|_| Refused::NotFound)?;
            if !cert_ok {
                return Err(Refused::NotFound);
            }
            Ok(Route::Signed { entry, cert: cert.to_string(), file, conditions: Conditions::default() })
        }
        ["loaders", name] => {
            super::loaders::Loader::from_name(name).map(|loader| Route::Loader { loader }).ok_or(Refused::NotFound)
        }
        ["metrics"] => Ok(Route::Metrics),
        ["healthz"] => Ok(Route::Healthz),
        [page @ ("status" | "status.json")] => {
            let mut sort = super::status::Sort::default();
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                sort = match pair.strip_prefix("sort=").and_then(super::status::Sort::parse) {
                    Some(s) => s,
                    None => return Err(Refused::BadRequest("query: only sort=step or sort=time".into())),
                };
            }
            Ok(Route::Status { json: *page == "status.json", sort })
        }
        _ => Err(Refused::NotFound),
    }
}

/// The segments [`each_segment`] finds.
#[cfg(test)]
fn segments(path: &str) -> Option<Vec<Cow<'_, str>>> {
    let mut out = Vec::new();
    each_segment(path, |s| out.push(s))?;
    Some(out)
}

/// A path's percent-decoded segments, each handed to `each` as it is
/// found; `None` for anything that could name another path once decoded
/// (separators, dot segments, NUL, backslash). Borrowed from the path when
/// a segment has nothing to decode.
fn each_segment<'p>(path: &'p str, mut each: impl FnMut(Cow<'p, str>)) -> Option<()> {
    if path == "/" {
        return Some(());
    }
    for raw in path.split('/').skip(1) {
        let seg = match raw.contains('%') {
            true => percent_encoding::percent_decode_str(raw).decode_utf8().ok()?,
            false => Cow::Borrowed(raw),
        };
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['/', '\\', '\0', '%']) {
            return None;
        }
        each(seg);
    }
    Some(())
}

/// The query as identity claims and labels. An empty value is no claim
/// (iPXE sends `hostname=` when it has none); a value of the wrong shape is
/// a 400 naming the key.
pub(crate) fn split_query(q: Option<&str>) -> Result<(Claims, Labels), Refused> {
    let bad = |k: &str, why: &str| Refused::BadRequest(format!("query parameter `{}`: {why}", k.escape_debug()));
    let mut claims = Claims::default();
    let mut labels = Labels::new();
    let mut rest = q.unwrap_or("");
    while !rest.is_empty() {
        let pair;
        (pair, rest) = cut(rest, b'&');
        if pair.is_empty() {
            continue;
        }
        let (k, v) = cut(pair, b'=');
        let (k, v) = (decode(k).map_err(|_| bad(k, "not UTF-8"))?, decode(v).map_err(|_| bad(k, "not UTF-8"))?);
        if v.len() > MAX_VALUE {
            return Err(bad(&k, "too long"));
        }
        // Bytes first: a value as iPXE sends it is printable ASCII.
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) && v.chars().any(char::is_control) {
            return Err(bad(&k, "control characters"));
        }
        let slot = match &*k {
            // Parsed here, once: compared as bytes and shown one way after.
            "mac" if v.is_empty() => continue,
            "mac" => {
                claims.mac = Some(v.parse().map_err(|_| bad(&k, "six hex pairs, : or - throughout"))?);
                continue;
            }
            "uuid" => &mut claims.uuid,
            "hostname" => &mut claims.hostname,
            "serial" => &mut claims.serial,
            "arch" => &mut claims.arch,
            "platform" => &mut claims.platform,
            _ => {
                let key_ok = !k.is_empty()
                    && k.len() <= 64
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                if !key_ok {
                    return Err(bad(&k, "a label name is letters, digits, _ - ."));
                }
                labels.insert(k.into_owned(), v.into_owned());
                if labels.len() > MAX_LABELS {
                    return Err(bad("labels", "too many"));
                }
                continue;
            }
        };
        if v.is_empty() {
            continue;
        }
        if let Err(why) = check_claim(&k, &v) {
            return Err(bad(&k, why));
        }
        *slot = Some(v.into_owned());
    }
    Ok((claims, labels))
}

/// `s` before and after the first `sep` (an ASCII byte), or all of `s` and
/// nothing. A byte search: `str::split` and `split_once` by a char were
/// ~700 instructions of a two-parameter query.
fn cut(s: &str, sep: u8) -> (&str, &str) {
    match s.bytes().position(|b| b == sep) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

/// A query key or value decoded (`+` is a space, `%XX` a byte), borrowed
/// when it holds neither: as iPXE sends them, so a script request makes no
/// copies of its query (the copies were ~5% of a render's CPU).
fn decode(s: &str) -> Result<std::borrow::Cow<'_, str>, std::str::Utf8Error> {
    if !s.bytes().any(|b| b == b'+' || b == b'%') {
        return Ok(std::borrow::Cow::Borrowed(s));
    }
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8().map(|c| std::borrow::Cow::Owned(c.into_owned()))
}

/// The shape of each claim as iPXE sends it.
fn check_claim(key: &str, v: &str) -> Result<(), &'static str> {
    let hex_groups = |sep: &[u8], sizes: &[usize]| {
        let parts: Vec<&str> = v.split(|c: char| c.is_ascii() && sep.contains(&(c as u8))).collect();
        parts.len() == sizes.len()
            && parts.iter().zip(sizes).all(|(p, n)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let ok = match key {
        "uuid" => hex_groups(b"-", &[8, 4, 4, 4, 12]),
        "hostname" => v.len() <= 253 && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')),
        // SMBIOS serials are free text; keep them printable and short.
        "serial" => v.len() <= 128 && v.bytes().all(|b| (0x20..0x7f).contains(&b)),
        _ => v.len() <= 16 && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
    };
    if ok {
        Ok(())
    } else {
        Err(match key {
            "mac" => "not a MAC address (six hex pairs)",
            "uuid" => "not a UUID",
            "hostname" => "not a host name",
            "serial" => "not a printable serial number",
            _ => "not a short lowercase word",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn a_sig_suffix_names_the_signature_of_a_script_or_boot_file_only() {
        let e = "0123456789abcdef0123456789abcdef-hello";
        let sig = |p: &str, q: Option<&str>| match route(p, q) {
            Ok(Route::Signature(of)) => Some(*of),
            _ => None,
        };
        assert_eq!(sig("/boot.ipxe.sig", None), Some(Route::Chain { labels: Labels::new() }));
        assert_eq!(sig("/ipxe.sig", Some("mac=52-54-00-aa-bb-cc")), route("/ipxe", Some("mac=52-54-00-aa-bb-cc")).ok());
        assert_eq!(
            sig(&format!("/artifacts/{e}/vmlinuz.sig"), None),
            route(&format!("/artifacts/{e}/vmlinuz"), None).ok()
        );
        assert_eq!(sig("/profiles/hello/boot.ipxe.sig", None), Some(Route::Profile { name: "hello".into() }));
        // Nothing else has a signature, and a bad query is still a 400.
        for p in ["/metrics.sig", "/healthz.sig", "/loaders/snponly.efi.sig", "/.sig", "/boot.ipxe.sig.sig"] {
            assert!(sig(p, None).is_none(), "{p}");
        }
        assert!(matches!(route("/ipxe.sig", Some("mac=zz")), Err(Refused::BadRequest(_))));
    }

    #[test]
    fn traversal_in_any_encoding_is_refused() {
        assert_eq!(segments("/artifacts/e/initrd").unwrap(), ["artifacts", "e", "initrd"]);
        assert!(segments("/").unwrap().is_empty());
        for bad in [
            "/artifacts/../etc/passwd",
            "/artifacts/e/..",
            "/artifacts/%2e%2e/x",
            "/artifacts/e/%2fetc%2fpasswd",
            "/artifacts/e/%252e%252e",
            "/artifacts/e/..%5c..%5cx",
            "/artifacts/e/a%00b",
            "/artifacts//x",
            "/artifacts/e\\..\\x",
        ] {
            assert!(segments(bad).is_none(), "{bad} was accepted");
        }
    }

    #[test]
    fn routes_are_typed() {
        let e = format!("{}-hello", "ab".repeat(16));
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, "bytes=0-9".parse().unwrap());
        let uri: hyper::Uri = format!("/artifacts/{e}/initrd").parse().unwrap();
        let conditions = Conditions { range: Some("bytes=0-9".into()), ..Default::default() };
        let file = ArtifactFile::new("initrd").unwrap();
        let artifact = Route::Artifact { entry: EntryName::new(&e).unwrap(), file, conditions };
        assert_eq!(parse(&Method::GET, &uri, &headers), Ok(artifact));
        assert_eq!(route("/artifacts/not-an-entry/initrd", None), Err(Refused::NotFound));
        assert_eq!(route(&format!("/artifacts/{e}/manifest.json"), None), Err(Refused::NotFound));
        let post = parse(&Method::POST, &"/boot.ipxe".parse().unwrap(), &HeaderMap::new());
        assert_eq!(post, Err(Refused::Method));
        let head = parse(&Method::HEAD, &"/metrics".parse().unwrap(), &HeaderMap::new());
        assert_eq!(head, Ok(Route::Metrics));
        assert_eq!(route("/profiles/a.b/boot.ipxe", None), Err(Refused::NotFound));
        let snp = super::super::loaders::Loader::UefiSnp;
        assert_eq!(route("/loaders/snponly.efi", None), Ok(Route::Loader { loader: snp }));
        assert_eq!(route("/loaders/ipxe.lkrn", None), Err(Refused::NotFound));
        // Longer than any route: no route, once every segment is checked.
        assert_eq!(route(&format!("/signed/{e}/{}/initrd/x", "0".repeat(32)), None), Err(Refused::NotFound));
        assert_eq!(route("/a/b/c/d/e/%2e%2e", None), Err(Refused::BadRequest("bad path".into())));
        let signed = route(&format!("/artifacts/{e}/initrd.sig"), None).unwrap();
        assert!(matches!(signed, Route::Signature(_)), "{signed:?}");
        assert_eq!(route("/", None), Err(Refused::NotFound));
    }

    #[test]
    fn claims_have_ipxes_shapes_and_the_rest_are_labels() {
        let (c, l) = split_query(Some(
            "mac=52-54-00-AA-bb-cc&uuid=11111111-2222-3333-4444-555555555555&hostname=&serial=SN+0042&arch=x86_64&platform=efi&rack=7",
        ))
        .unwrap();
        assert_eq!(c.mac.map(|m| m.to_string()).as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(c.hostname, None, "empty is no claim");
        assert_eq!(c.serial.as_deref(), Some("SN 0042"));
        assert_eq!(l.get("rack").map(String::as_str), Some("7"));
        // Encoded and plain forms mean the same (plain ones are borrowed, not copied).
        let (c, l) = split_query(Some("mac=52%3A54%3A00%3Aaa%3Abb%3Acc&r%61ck=a+b%2Bc&row=3")).unwrap();
        assert_eq!(c.mac.map(|m| m.to_string()).as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(l.get("rack").map(String::as_str), Some("a b+c"));
        assert_eq!(l.get("row").map(String::as_str), Some("3"));
        for bad in [
            "mac=x%20%3B%20chain%20http://evil/",
            "mac=52-54-00-aa-bb-cc%0Aforged",
            "mac=52:54-00:aa:bb:cc",
            "uuid=not-a-uuid",
            "hostname=a%20b",
            "serial=a%0Ab",
            "arch=X86%3B",
            "rack=a%0Ab",
            "ra%20ck=1",
            "mac=%FF",
        ] {
            assert!(matches!(split_query(Some(bad)), Err(Refused::BadRequest(_))), "{bad} was accepted");
        }
    }
}
