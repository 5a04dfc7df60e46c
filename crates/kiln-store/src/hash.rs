//! Hash newtypes that cannot be swapped for one another.

use std::{fmt, str::FromStr};

/// The BLAKE3 key-derivation context that domain-separates tree hashes (output hashes and
/// source-set hashes), as `docs/closure-hash.md` specifies.
pub(crate) const TREE_CONTEXT: &str = "kiln 2026-11 tree v1";

/// Names a store entry: BLAKE3 over the versioned encoding of a derivation and its inputs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClosureHash(blake3::Hash);

/// Hash of an output tree's canonical serialisation; recorded in an entry's metadata.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutputHash(blake3::Hash);

/// The text is not a canonical (64 lowercase hex digits) hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a hash: expected 64 lowercase hexadecimal digits")]
pub struct ParseHashError(pub String);

fn parse_canonical_hex(text: &str) -> Result<blake3::Hash, ParseHashError> {
    let canonical = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !canonical {
        return Err(ParseHashError(text.to_owned()));
    }
    blake3::Hash::from_hex(text).map_err(|_| ParseHashError(text.to_owned()))
}

macro_rules! hash_newtype {
    ($name:ident) => {
        impl $name {
            /// Wraps a raw BLAKE3 hash.
            pub fn from_blake3(hash: blake3::Hash) -> Self {
                Self(hash)
            }

            /// The 32 raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                self.0.as_bytes()
            }

            /// The first `len` hex digits, for display in tables.
            pub fn short(&self) -> String {
                let mut hex = self.to_string();
                hex.truncate(12);
                hex
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = ParseHashError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_canonical_hex(s).map(Self)
            }
        }
    };
}

hash_newtype!(ClosureHash);
hash_newtype!(OutputHash);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_uppercase() {
        let hash = ClosureHash::from_blake3(blake3::hash(b"kiln"));
        let text = hash.to_string();
        assert_eq!(text.parse::<ClosureHash>(), Ok(hash));
        assert!(text.to_uppercase().parse::<ClosureHash>().is_err());
        assert!(text[..63].parse::<ClosureHash>().is_err());
    }
}
