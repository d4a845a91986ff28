//! Address -> the MAC of the machine last seen there, as two maps: IPv4
//! keys as their 4 bytes (11 bytes a slot with the MAC and hashbrown's
//! control byte, not 24 with an `IpAddr` key). A proxyDHCP storm of 10,000
//! machines fills it: ~180 KiB instead of ~390.

use crate::model::Mac;
use hashbrown::HashMap;
use std::net::{IpAddr, Ipv6Addr};

#[derive(Default)]
pub(super) struct Addresses {
    v4: HashMap<[u8; 4], Mac>,
    v6: HashMap<Ipv6Addr, Mac>,
}

impl Addresses {
    pub(super) fn get(&self, a: &IpAddr) -> Option<&Mac> {
        match a {
            IpAddr::V4(a) => self.v4.get(&a.octets()),
            IpAddr::V6(a) => self.v6.get(a),
        }
    }

    pub(super) fn insert(&mut self, a: IpAddr, mac: Mac) {
        match a {
            IpAddr::V4(a) => self.v4.insert(a.octets(), mac),
            IpAddr::V6(a) => self.v6.insert(a, mac),
        };
    }

    pub(super) fn remove(&mut self, a: &IpAddr) {
        match a {
            IpAddr::V4(a) => self.v4.remove(&a.octets()),
            IpAddr::V6(a) => self.v6.remove(a),
        };
    }

    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

impl FromIterator<(IpAddr, Mac)> for Addresses {
    fn from_iter<I: IntoIterator<Item = (IpAddr, Mac)>>(iter: I) -> Addresses {
        let mut m = Addresses::default();
        for (a, mac) in iter {
            m.insert(a, mac);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_are_kept_apart_and_found() {
        let mac = |n: u8| Mac([0x52, 0x54, 0, 0, 0, n]);
        let v4 = IpAddr::from([10, 0, 0, 1]);
        // The same 16 bytes as an IPv4-mapped IPv6 address: another machine.
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let mut m: Addresses = [(v4, mac(1)), (mapped, mac(2))].into_iter().collect();
        assert_eq!((m.get(&v4), m.get(&mapped), m.len()), (Some(&mac(1)), Some(&mac(2)), 2));
        m.insert(v4, mac(3));
        m.remove(&mapped);
        assert_eq!((m.get(&v4), m.get(&mapped), m.len()), (Some(&mac(3)), None, 1));
        assert!(std::mem::size_of::<([u8; 4], Mac)>() == 10);
    }
}
