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
        let sep = if s.contains('-') { '-' } else { ':' };
        let parts: Vec<&str> = s.split(sep).collect();
        // Hex digits only: from_str_radix would take a sign ("+1").
        if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(&parts) {
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
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
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52-54:00-ab-cd-ef",
            "5:254:00:ab:cd:ef",
            "zz:54:00:ab:cd:ef",
            "+1:54:00:ab:cd:ef",
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
