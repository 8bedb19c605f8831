//! The group index of an [`EnrollmentEngine`](super::EnrollmentEngine):
//! group name to the position of the first policy listing it (only the
//! first can ever apply through that group, so later ones are not kept).
//!
//! Names of up to 16 bytes (most group names) are kept inside the table as
//! two words: a lookup builds them with a few fixed-size loads, hashes them
//! with one multiply, and compares them in the slot it already loaded,
//! without following a pointer or calling memcmp. Longer names go to a
//! plain map. Keys come from configuration and the seeds are random per
//! index, so chosen lookups cannot degrade the table.

use std::hash::BuildHasher;

use foldhash::HashMap;
use foldhash::fast::RandomState;
use hashbrown::HashTable;

fn word8(b: &[u8]) -> u64 {
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&b[..8]);
    u64::from_le_bytes(eight)
}

fn word4(b: &[u8]) -> u64 {
    let mut four = [0u8; 4];
    four.copy_from_slice(&b[..4]);
    u64::from(u32::from_le_bytes(four))
}

/// A name of at most 16 bytes as (first word, last word, length): its first
/// and last bytes, overlapping when shorter, which with the length
/// determine the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShortName {
    head: u64,
    tail: u64,
    len: u8,
}

impl ShortName {
    fn new(name: &str) -> Option<Self> {
        let b = name.as_bytes();
        let n = b.len();
        let (head, tail) = match n {
            0 => (0, 0),
            1..=3 => (
                u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
                0,
            ),
            4..=7 => (word4(b), word4(&b[n - 4..])),
            8..=16 => (word8(b), word8(&b[n - 8..])),
            _ => return None,
        };
        Some(Self {
            head,
            tail,
            len: n as u8,
        })
    }
}

/// The 64-bit multiply folded onto itself (as in wyhash and foldhash).
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

#[derive(Clone, Debug)]
struct Slot {
    name: ShortName,
    position: u32,
}

/// Group name to a policy position; the first insertion for a name wins.
#[derive(Clone)]
pub(crate) struct GroupIndex {
    seeds: [u64; 2],
    short: HashTable<Slot>,
    long: HashMap<Box<str>, u32>,
}

impl Default for GroupIndex {
    fn default() -> Self {
        let random = RandomState::default();
        Self {
            seeds: [
                random.hash_one(0x243f_6a88_85a3_08d3_u64) | 1,
                random.hash_one(0x1319_8a2e_0370_7344_u64) | 1,
            ],
            short: HashTable::new(),
            long: HashMap::default(),
        }
    }
}

impl std::fmt::Debug for GroupIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupIndex")
            .field("groups", &(self.short.len() + self.long.len()))
            .finish()
    }
}

impl GroupIndex {
    fn hash(seeds: [u64; 2], name: &ShortName) -> u64 {
        folded_multiply(
            name.head ^ seeds[0],
            name.tail ^ seeds[1] ^ (u64::from(name.len) << 56),
        )
    }

    /// Records `position` for `group` unless an earlier one is recorded.
    pub(crate) fn insert_first(&mut self, group: &str, position: u32) {
        let Some(name) = ShortName::new(group) else {
            self.long.entry(group.into()).or_insert(position);
            return;
        };
        let seeds = self.seeds;
        let hash = Self::hash(seeds, &name);
        if self.short.find(hash, |s| s.name == name).is_none() {
            self.short
                .insert_unique(hash, Slot { name, position }, |s| {
                    Self::hash(seeds, &s.name)
                });
        }
    }

    pub(crate) fn get(&self, group: &str) -> Option<u32> {
        match ShortName::new(group) {
            Some(name) => self
                .short
                .find(Self::hash(self.seeds, &name), |s| s.name == name)
                .map(|s| s.position),
            None => self.long.get(group).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_of_a_short_name_counts() {
        // Each name of length 0 to 20, and each one-byte change of it,
        // must be told apart.
        let base = "abcdefghijklmnopqrst";
        let mut index = GroupIndex::default();
        for n in 0..=base.len() {
            index.insert_first(&base[..n], n as u32);
        }
        for n in 0..=base.len() {
            assert_eq!(index.get(&base[..n]), Some(n as u32));
            for i in 0..n {
                let mut changed = base[..n].to_string().into_bytes();
                changed[i] = b'_';
                let changed = String::from_utf8(changed).unwrap();
                assert_eq!(index.get(&changed), None, "{changed:?}");
            }
        }
    }

    #[test]
    fn first_insertion_wins_for_short_and_long_names() {
        let long = "a-group-name-that-is-longer-than-16-bytes";
        let exactly_16 = "0123456789abcdef";
        let exactly_17 = "0123456789abcdefg";
        let mut index = GroupIndex::default();
        for (group, position) in [
            ("staff", 3),
            ("staff", 1),
            (long, 7),
            (long, 2),
            (exactly_16, 4),
            (exactly_17, 5),
            ("abc", 10),
            ("abcdefg", 11),
            ("", 6),
            ("a", 8),
            ("gruppe-ä", 9),
        ] {
            index.insert_first(group, position);
        }
        let cases: &[(&str, Option<u32>)] = &[
            ("staff", Some(3)),
            ("Staff", None),
            ("staf", None),
            ("staff ", None),
            (long, Some(7)),
            (&long[..16], None),
            (exactly_16, Some(4)),
            (exactly_17, Some(5)),
            ("0123456789abcdeF", None),
            ("0123456789bbcdef", None),
            ("0123456789abcde", None),
            ("abc", Some(10)),
            ("abd", None),
            ("bbc", None),
            ("aXc", None),
            ("ab", None),
            ("abcdefg", Some(11)),
            ("abcXefg", None),
            ("abcdefh", None),
            ("", Some(6)),
            ("a", Some(8)),
            ("a\0", None),
            ("gruppe-ä", Some(9)),
            ("ops", None),
        ];
        for (group, expected) in cases {
            assert_eq!(index.get(group), *expected, "{group:?}");
        }
    }

    #[test]
    fn survives_growth() {
        let mut index = GroupIndex::default();
        for i in 0..5_000u32 {
            index.insert_first(&format!("group-{i}"), i);
        }
        for i in 0..5_000u32 {
            index.insert_first(&format!("group-{i}"), 0);
        }
        for i in 0..5_000u32 {
            assert_eq!(index.get(&format!("group-{i}")), Some(i));
        }
        assert_eq!(index.get("group-5000"), None);
    }
}
