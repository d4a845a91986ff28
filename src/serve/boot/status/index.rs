//! The table's index, key -> row: a hash table of row numbers alone, the key
//! made from its row. A `HashMap<Key, u32>` stored each 18-byte key again
//! and took ~600 KiB for a 10,000-machine table (the largest allocation of a
//! proxyDHCP server under a storm after the rows themselves); this takes 5
//! bytes a slot, ~80 KiB.
//!
//! The status table's maps hash with hashbrown's default, foldhash, not
//! std's SipHash: a script request looks up its machine, address, group and
//! boot counts, and SipHash took ~250 instructions each. Keys come from
//! clients, but each map has its own random seed, and the table is bounded.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::{BuildHasher, Hash};

/// A row that carries its own key.
pub(super) trait Keyed {
    type Key: Hash + Eq;
    fn key(&self) -> Self::Key;
}

#[derive(Default)]
pub(super) struct Index {
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Index {
    /// The row of `key`.
    pub(super) fn get<R: Keyed>(&self, key: &R::Key, rows: &[R]) -> Option<usize> {
        let found =
            self.table.find(self.hasher.hash_one(key), |&i| rows.get(i as usize).is_some_and(|r| r.key() == *key));
        found.map(|&i| i as usize)
    }

    /// Row `i`, already in `rows`, is its key's.
    pub(super) fn insert<R: Keyed>(&mut self, i: usize, rows: &[R]) {
        let hasher = &self.hasher;
        let slot = hasher.hash_one(rows[i].key());
        // A growing table hashes every row it holds again: all are in `rows`.
        self.table.insert_unique(slot, i as u32, |&j| hasher.hash_one(rows[j as usize].key()));
    }

    /// `key`'s row `from` is now row `to`, or gone (`None`). Found by its
    /// number, not its key: the row itself may have left `rows` already.
    pub(super) fn moved<K: Hash>(&mut self, key: &K, from: usize, to: Option<usize>) {
        let Ok(entry) = self.table.find_entry(self.hasher.hash_one(key), |&j| j as usize == from) else { return };
        match to {
            Some(t) => *entry.into_mut() = t as u32,
            None => drop(entry.remove()),
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}
