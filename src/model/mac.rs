//! MAC addresses: parsed once where they enter (a machines file, a DHCP
//! packet), compared as bytes, shown one way (`52:54:00:ab:cd:ef`).

use super::names::BadName;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = BadName;

    /// Six hex pairs separated by `:` or `-` (one kind throughout), any case.
    fn from_str(s: &str) -> Result<Mac, BadName> {
        let bad = || BadName::new(s, "a MAC address (six hex pairs: 52:54:00:12:34:56)");
        // Read byte by byte: every script request carries one (a split and
        // a Vec here were 2,000 instructions, a twentieth of a render).
        let b = s.as_bytes();
        if b.len() != 17 || !matches!(b[2], b':' | b'-') {
            return Err(bad());
        }
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && b[at - 1] != b[2] {
                return Err(bad());
            }
            *byte = match (hex(b[at]), hex(b[at + 1])) {
                (Some(h), Some(l)) => h << 4 | l,
                _ => return Err(bad()),
            };
        }
        Ok(Mac(mac))
    }
}

impl Mac {
    /// `52:54:00:ab:cd:ef`, as ASCII. By hand: six `{:02x}` cost 1,500
    /// instructions in each boot step's log line.
    pub fn text(&self) -> [u8; 17] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"00:00:00:00:00:00";
        for (i, b) in self.0.iter().enumerate() {
            text[i * 3] = HEX[usize::from(b >> 4)];
            text[i * 3 + 1] = HEX[usize::from(b & 15)];
        }
        text
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(std::str::from_utf8(&self.text()).map_err(|_| fmt::Error)?)
    }
}

/// As its text (`52:54:00:ab:cd:ef`).
impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A selector's `mac`: one address or a list of them (a group of known
/// machines in one line; matchbox#586).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Macs(pub Vec<Mac>);

impl<'de> Deserialize<'de> for Macs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Macs, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let texts =
            match OneOrMany::deserialize(d).map_err(|_| serde::de::Error::custom("a MAC address or a list of them"))? {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            };
        if texts.is_empty() {
            return Err(serde::de::Error::custom("an empty list of MAC addresses matches no machine"));
        }
        let macs: Vec<Mac> =
            texts.iter().map(|s| s.parse()).collect::<Result<_, _>>().map_err(serde::de::Error::custom)?;
        Ok(Macs(macs))
    }
}

impl Macs {
    pub(crate) fn contains(&self, mac: &Mac) -> bool {
        self.0.contains(mac)
    }

    /// Whether one machine could be in both lists.
    pub(crate) fn overlaps(&self, other: &Macs) -> bool {
        self.0.iter().any(|m| other.contains(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes_colons_and_case_are_one_mac_and_other_shapes_are_refused() {
        let a: Mac = "52-54-00-AB-cd-ef".parse().unwrap();
        let b: Mac = "52:54:00:ab:CD:EF".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(Mac([0, 1, 0x10, 0x9f, 0xf0, 0xff]).to_string(), "00:01:10:9f:f0:ff");
        assert_eq!(format!("[{:>18}]", a), "[ 52:54:00:ab:cd:ef]");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52-54:00-ab-cd-ef",
            "5:254:00:ab:cd:ef",
            "zz:54:00:ab:cd:ef",
            "+1:54:00:ab:cd:ef",
            "52:54-00:ab:cd:ef",
            "52 54 00 ab cd ef",
            "52:54:00:ab:cd:\u{e9}",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_selector_takes_one_mac_or_a_list() {
        #[derive(Deserialize)]
        struct S {
            mac: Macs,
        }
        let one: S = toml::from_str("mac = \"52:54:00:00:00:01\"").unwrap();
        assert_eq!(one.mac.0.len(), 1);
        let many: S = toml::from_str("mac = [\"52:54:00:00:00:01\", \"52-54-00-00-00-02\"]").unwrap();
        assert!(many.mac.contains(&"52:54:00:00:00:02".parse().unwrap()));
        assert!(many.mac.overlaps(&one.mac));
        assert!(toml::from_str::<S>("mac = []").is_err());
        assert!(toml::from_str::<S>("mac = [\"52:54:00:00:00:01\", \"nope\"]").is_err());
        assert!(toml::from_str::<S>("mac = 5").is_err());
    }
}
