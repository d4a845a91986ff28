//! Debian's control-file format (deb822): paragraphs of `Field: value` lines,
//! continuation lines starting with a space, paragraphs split by blank lines.
//!
//! Written here rather than taken from a crate: the grammar is a dozen lines,
//! and the crates that parse it build a lossless syntax tree (rowan) that a
//! read-only index of 60,000 packages does not need.

use std::collections::HashMap;

/// One paragraph; field names compare case-insensitively, as in Debian.
#[derive(Debug, Default, Clone)]
pub(crate) struct Paragraph {
    fields: HashMap<String, String>,
}

impl Paragraph {
    pub(crate) fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(&field.to_ascii_lowercase()).map(String::as_str)
    }
}

/// Every paragraph of `text`. A line that is neither a field nor a
/// continuation is an error naming its line number.
pub(crate) fn parse(text: &str) -> Result<Vec<Paragraph>, String> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    let mut last: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some(key) = &last else { return Err(format!("line {}: continuation line without a field", i + 1)) };
            let v = cur.fields.entry(key.clone()).or_default();
            v.push('\n');
            v.push_str(line.trim());
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!("line {}: expected `Field: value`", i + 1));
        };
        let key = k.trim().to_ascii_lowercase();
        cur.fields.insert(key.clone(), v.trim().to_string());
        last = Some(key);
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_fields_and_continuations() {
        let p = parse("Package: a\nDescription: x\n more\n\n\nPackage: b\nversion: 2\n").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].get("Description"), Some("x\nmore"));
        assert_eq!(p[1].get("Version"), Some("2"));
        assert!(parse(" orphan\n").is_err());
        assert!(parse("Package a\n").unwrap_err().contains("line 1"));
    }
}
