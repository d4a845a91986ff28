//! The names a build is known by, each checked once where it enters (a
//! manifest read from disk or S3, a URL, a machines file) and carried typed
//! from there: no layer re-checks a `String` or slices one it was handed.
//!
//! Each reads as the `str` it holds (`Deref`), so printing, formatting and
//! passing one where text is wanted cost nothing.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Hex digits of the input hash used in entry names (128 bits).
pub const NAME_HASH_LEN: usize = 32;

/// Why a string is not the name it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not {what}")]
pub struct BadName {
    /// The rejected value, escaped: it may come from anywhere.
    pub value: String,
    pub what: &'static str,
}

impl BadName {
    pub(crate) fn new(value: &str, what: &'static str) -> BadName {
        BadName { value: value.chars().take(80).collect::<String>().escape_debug().to_string(), what }
    }
}

/// Whether `name` can name a profile: letters, digits, - and _ (it becomes
/// part of store entry names, S3 keys and AMI names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The shared face of a checked name: read as `str`, shown as itself,
/// (de)serialized as a string through its check.
macro_rules! checked_name {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        // Eq, Ord and Hash are the string's: a map keyed by the name can be
        // asked with a `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = BadName;
            fn from_str(s: &str) -> Result<$name, BadName> {
                $name::new(s)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $name::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The input hash of a build: SHA-256 over every input (recipe, tools,
/// templates), 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InputHash(String);
checked_name!(InputHash);

impl InputHash {
    pub(crate) fn new(s: &str) -> Result<InputHash, BadName> {
        lower_hex(s, 64)
            .then(|| InputHash(s.to_string()))
            .ok_or_else(|| BadName::new(s, "an input hash (64 hex digits)"))
    }

    /// The hash of inputs whose SHA-256 is `digest`.
    pub(crate) fn of_sha256(digest: [u8; 32]) -> InputHash {
        InputHash(hex::encode(digest))
    }

    /// The part entry names carry.
    pub(crate) fn short(&self) -> &str {
        &self.0[..NAME_HASH_LEN]
    }
}

/// `<32 hex of the input hash>-<profile>`: the only names the store gives
/// entries, and so the only ones a URL, an S3 key or a machines file may use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryName(String);
checked_name!(EntryName);

impl EntryName {
    pub(crate) fn new(s: &str) -> Result<EntryName, BadName> {
        let ok = s.split_once('-').is_some_and(|(h, profile)| lower_hex(h, NAME_HASH_LEN) && valid_name(profile));
        ok.then(|| EntryName(s.to_string())).ok_or_else(|| BadName::new(s, "an entry name (32 hex digits-profile)"))
    }

    /// The entry a build of `profile` with input `hash` makes.
    pub fn of(hash: &InputHash, profile: &str) -> Result<EntryName, BadName> {
        EntryName::new(&format!("{}-{profile}", hash.short()))
    }
}

/// The BLAKE3 digest of a file, 64 lowercase hex digits: what a manifest
/// promises each artifact's bytes hash to ([`crate::hash::ArtifactDigest`]
/// computes it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blake3(String);
checked_name!(Blake3);

impl Blake3 {
    pub(crate) fn new(s: &str) -> Result<Blake3, BadName> {
        lower_hex(s, 64)
            .then(|| Blake3(s.to_string()))
            .ok_or_else(|| BadName::new(s, "a BLAKE3 digest (64 hex digits)"))
    }

    /// The digest of a whole file as read.
    pub(crate) fn of_file(path: &std::path::Path) -> std::io::Result<Blake3> {
        Ok(crate::hash::ArtifactDigest::of_file(path)?.finish().into())
    }
}

impl From<blake3::Hash> for Blake3 {
    fn from(h: blake3::Hash) -> Blake3 {
        Blake3(h.to_hex().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_where_they_are_made() {
        let h = "ab".repeat(32);
        let hash = InputHash::new(&h).unwrap();
        let entry = EntryName::of(&hash, "my-web").unwrap();
        assert_eq!(&*entry, format!("{}-my-web", &h[..32]));
        assert_eq!(EntryName::new(&entry).unwrap(), entry);
        for bad in ["", "abc", &h.to_uppercase(), &format!("{h}0"), &format!("{}g", &h[..63])] {
            assert!(InputHash::new(bad).is_err(), "{bad}");
            assert!(Blake3::new(bad).is_err(), "{bad}");
        }
        for bad in [format!("{}-", &h[..32]), format!("{}-a/b", &h[..32]), format!("{}-x", &h[..31]), "x-y".into()] {
            assert!(EntryName::new(&bad).is_err(), "{bad}");
        }
        assert!(EntryName::of(&hash, "a b").is_err());
        let e = EntryName::new("a\nb").unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn serde_goes_through_the_check() {
        let d = Blake3::new(&"0f".repeat(32)).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Blake3>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Blake3>("\"../x\"").is_err());
    }
}
