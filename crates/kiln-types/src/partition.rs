//! One shard of a test run spread over several CI jobs, written as cargo-nextest writes it:
//! `count:K/N` or `hash:K/N`.

use std::{fmt, str::FromStr};

/// Which of `total` shards to run (`shard` counts from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// `count:K/N`: the items in name order, dealt out in turn: the Kth, the (K+N)th, ...
    /// Even shard sizes; adding an item can move others to another shard.
    Count {
        /// K.
        shard: u64,
        /// N.
        total: u64,
    },
    /// `hash:K/N`: the items whose name hashes to K: an item stays in its shard whatever
    /// else is added or removed; shard sizes vary.
    Hash {
        /// K.
        shard: u64,
        /// N.
        total: u64,
    },
}

impl Partition {
    /// The items of this shard, by `name` (every item's name must differ), in their order.
    pub fn select<T>(&self, items: Vec<T>, name: impl Fn(&T) -> String) -> Vec<T> {
        match *self {
            Partition::Count { shard, total } => {
                let mut names: Vec<String> = items.iter().map(&name).collect();
                names.sort();
                items
                    .into_iter()
                    .filter(|item| {
                        let index = names.binary_search(&name(item)).unwrap_or(0) as u64;
                        index % total == shard - 1
                    })
                    .collect()
            }
            Partition::Hash { shard, total } => {
                items.into_iter().filter(|item| name_hash(&name(item)) % total == shard - 1).collect()
            }
        }
    }
}

/// A stable 64-bit hash of a name (FNV-1a: the same on every machine and every run).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

impl FromStr for Partition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || format!("`{text}` is not a partition: write `count:K/N` or `hash:K/N` with 1 <= K <= N");
        let (kind, shards) = text.split_once(':').ok_or_else(usage)?;
        let (shard, total) = shards.split_once('/').ok_or_else(usage)?;
        let (shard, total): (u64, u64) =
            (shard.trim().parse().map_err(|_| usage())?, total.trim().parse().map_err(|_| usage())?);
        if shard == 0 || total == 0 || shard > total {
            return Err(usage());
        }
        match kind {
            "count" => Ok(Partition::Count { shard, total }),
            "hash" => Ok(Partition::Hash { shard, total }),
            _ => Err(format!("`{kind}` is not a kind of partition: `count` or `hash`")),
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Count { shard, total } => write!(f, "count:{shard}/{total}"),
            Partition::Hash { shard, total } => write!(f, "hash:{shard}/{total}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("case{i:02}/machine")).collect()
    }

    #[test]
    fn parses_nextests_syntax_and_refuses_the_rest() {
        assert_eq!("count:1/3".parse(), Ok(Partition::Count { shard: 1, total: 3 }));
        assert_eq!("hash:2/2".parse(), Ok(Partition::Hash { shard: 2, total: 2 }));
        assert_eq!("hash:2/2".parse::<Partition>().map(|p| p.to_string()), Ok("hash:2/2".to_owned()));
        for bad in ["count:0/3", "count:4/3", "hash:1/0", "count:1", "1/3", "slice:1/3", "count:a/3"] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_shards_of_either_kind_cover_every_item_once() {
        for kind in ["count", "hash"] {
            let total = 4;
            let mut seen = Vec::new();
            for shard in 1..=total {
                let partition: Partition = format!("{kind}:{shard}/{total}").parse().expect("partition");
                let picked = partition.select(names(23), String::clone);
                if kind == "count" {
                    assert!((5..=6).contains(&picked.len()), "{kind} {shard}: {picked:?}");
                }
                seen.extend(picked);
            }
            seen.sort();
            assert_eq!(seen, names(23), "{kind}");
        }
    }

    #[test]
    fn a_hash_shard_keeps_its_items_when_others_are_added() {
        let partition = Partition::Hash { shard: 2, total: 3 };
        let before = partition.select(names(10), String::clone);
        let after = partition.select(names(30), String::clone);
        assert!(before.iter().all(|name| after.contains(name)), "{before:?} vs {after:?}");
        assert_eq!(name_hash("smoke/x86_64"), name_hash("smoke/x86_64"));
    }
}
