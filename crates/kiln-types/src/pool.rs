//! How many restored guests a run pool keeps ready: a number, or `auto`, as many as kiln runs
//! guests at once (`-j`, by default the host's CPUs), so cargo's or nextest's parallel test
//! processes each find one.

use std::{fmt, str::FromStr};

/// A run pool's size (`run --pool N|auto`, `[run] pool = N | "auto"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolSize {
    /// This many guests; 0: no pool.
    Guests(usize),
    /// As many as guests run at once (`-j`).
    Auto,
}

impl PoolSize {
    /// The number of guests, with `auto` taken as `jobs`.
    pub fn guests(self, jobs: usize) -> usize {
        match self {
            Self::Guests(count) => count,
            Self::Auto => jobs.max(1),
        }
    }
}

impl fmt::Display for PoolSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Guests(count) => write!(f, "{count}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for PoolSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            other => other.parse().map(Self::Guests).map_err(|_| {
                format!("`{other}` is not a pool size: give a number of guests (0: no pool) or `auto` (one per job)")
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_numbers_or_auto() {
        assert_eq!("3".parse(), Ok(PoolSize::Guests(3)));
        assert_eq!("auto".parse(), Ok(PoolSize::Auto));
        assert_eq!(PoolSize::Auto.guests(4), 4);
        assert_eq!(PoolSize::Auto.guests(0), 1);
        assert_eq!(PoolSize::Guests(0).guests(4), 0);
        let refused = "two".parse::<PoolSize>().expect_err("a word");
        assert!(refused.contains("`two` is not a pool size") && refused.contains("`auto`"), "{refused}");
    }
}
