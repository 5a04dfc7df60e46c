//! Derivations and their closure hashes (encoding v1, specified in `docs/closure-hash.md`).

use std::collections::BTreeMap;

use crate::ClosureHash;

/// The BLAKE3 key-derivation context that domain-separates closure hashes.
pub(crate) const DERIVATION_CONTEXT: &str = "kiln 2026-11 derivation v1";

/// The hash of one named input of a derivation: another entry's closure, a file, a source
/// set, a tool's version text or an environment variable's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InputHash(pub [u8; 32]);

impl InputHash {
    /// Hashes arbitrary bytes (a tool's version text, an environment variable's value).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The input hash that stands for another entry.
    pub fn of_closure(closure: ClosureHash) -> Self {
        Self(*closure.as_bytes())
    }

    /// Lowercase hex, for `why` listings.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

/// One build step: its kind, its settings and its named inputs.
///
/// Every input is named, so two inputs whose values are swapped give a different hash.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Derivation {
    /// What kind of step this is, e.g. `cargo-build`.
    pub kind: String,
    /// The step's settings (target triple, profile, features, ...), by name.
    pub settings: BTreeMap<String, String>,
    /// Hashes of everything the output depends on, by input name (`source:PKG`, `tool:rustc`).
    #[serde(with = "inputs_as_hex")]
    pub inputs: BTreeMap<String, InputHash>,
}

impl Derivation {
    /// Starts a derivation of the given kind.
    pub fn new(kind: impl Into<String>) -> Self {
        Self { kind: kind.into(), ..Self::default() }
    }

    /// Adds (or replaces) a setting.
    pub fn setting(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.settings.insert(name.into(), value.into());
        self
    }

    /// Adds (or replaces) a named input.
    pub fn input(&mut self, name: impl Into<String>, hash: InputHash) -> &mut Self {
        self.inputs.insert(name.into(), hash);
        self
    }

    /// The canonical byte encoding the closure hash is computed over.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, &self.kind);
        put_len(&mut out, self.settings.len());
        for (name, value) in &self.settings {
            put_str(&mut out, name);
            put_str(&mut out, value);
        }
        put_len(&mut out, self.inputs.len());
        for (name, hash) in &self.inputs {
            put_str(&mut out, name);
            out.extend_from_slice(&hash.0);
        }
        out
    }

    /// The closure hash naming this derivation's store entry.
    pub fn closure_hash(&self) -> ClosureHash {
        let mut hasher = blake3::Hasher::new_derive_key(DERIVATION_CONTEXT);
        hasher.update(&self.encode());
        ClosureHash::from_blake3(hasher.finalize())
    }
}

pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, text: &str) {
    put_bytes(out, text.as_bytes());
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

mod inputs_as_hex {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    use super::InputHash;

    pub fn serialize<S: Serializer>(inputs: &BTreeMap<String, InputHash>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(inputs.iter().map(|(name, hash)| (name, hash.to_hex())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, InputHash>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(name, hex)| {
                let hash = blake3::Hash::from_hex(&hex).map_err(D::Error::custom)?;
                Ok((name, InputHash(*hash.as_bytes())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Derivation {
        let mut drv = Derivation::new("cargo-build");
        drv.setting("target", "riscv64gc-unknown-none-elf").setting("profile", "release");
        drv.input("tool:rustc", InputHash::of_bytes(b"rustc 1.95.0"));
        drv.input("file:Cargo.lock", InputHash::of_bytes(b"lock"));
        drv
    }

    #[test]
    fn swapping_two_named_inputs_changes_the_hash() {
        let drv = example();
        let mut swapped = drv.clone();
        swapped.input("tool:rustc", InputHash::of_bytes(b"lock"));
        swapped.input("file:Cargo.lock", InputHash::of_bytes(b"rustc 1.95.0"));
        assert_ne!(drv.closure_hash(), swapped.closure_hash());
    }

    #[test]
    fn setting_boundaries_are_unambiguous() {
        let mut a = Derivation::new("k");
        a.setting("ab", "c");
        let mut b = Derivation::new("k");
        b.setting("a", "bc");
        assert_ne!(a.closure_hash(), b.closure_hash());
    }

    #[test]
    fn metadata_round_trip_keeps_the_hash() {
        let drv = example();
        let text = toml::to_string(&drv).expect("serialize");
        let back: Derivation = toml::from_str(&text).expect("deserialize");
        assert_eq!(back.closure_hash(), drv.closure_hash());
    }
}
