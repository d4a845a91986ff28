//! Errors in user input (profiles, hardware files, `--set`): they always name the
//! file, the line and column where known, and the key, and map to exit code 2.

use std::path::Path;

pub use crate::model::error::ConfigError;

/// 1-based (line, column) of a byte offset in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Turns a `toml` deserialization error into a [`ConfigError`] for `file`.
///
/// The toml crate reports the span of the offending value; the key is recovered
/// from the text at that span (`key = value` on the same line) or from the
/// message ("unknown field `x`").
pub(crate) fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim().to_string();
    let pos = err.span().map(|s| line_col(text, s.start));
    let key = quoted_field(&message).or_else(|| {
        let span = err.span()?;
        key_before(text, span.start)
    });
    ConfigError { file: file.to_path_buf(), pos, key, message }
}

/// "unknown field `foo`, expected ..." -> "foo"
fn quoted_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("missing field `"))?;
    Some(rest.split('`').next()?.to_string())
}

/// The key on the line holding `offset`, when the line reads `key = ...`.
fn key_before(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[start..offset];
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.contains(['[', '{', '#'])).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a = 1\nbb = 2\n", 6), (2, 1));
        assert_eq!(line_col("a = 1\nbb = 2\n", 11), (2, 6));
    }

    #[test]
    fn key_is_recovered_from_the_line() {
        assert_eq!(key_before("x = 1\nsize = \"big\"\n", 13).as_deref(), Some("size"));
    }
}
