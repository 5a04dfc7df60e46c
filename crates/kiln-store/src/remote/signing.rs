//! ed25519 keys that sign remote entries, in Nix's text form: `NAME:BASE64`.
//!
//! A secret key's text is its name, a colon and the base64 of the 32-byte seed followed by
//! the 32-byte public key; a public key's text is its name and the base64 of the public key.
//! The name travels with every signature, so a refusal can say which key signed an entry.

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::{ClosureHash, OutputHash};

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a key's text was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No `NAME:` before the key.
    #[error("a key is written `NAME:BASE64`, and this one has no name before a `:`")]
    MissingName,
    /// The name holds characters other than letters, digits, `-`, `_` and `.` (the text is
    /// not repeated: it may be a secret key written the wrong way round).
    #[error("a key's name (before the `:`) may only hold ASCII letters, digits, `-`, `_` and `.`")]
    BadName,
    /// The part after the colon is not base64 of the right length.
    #[error("the key `{name}` is not base64 of {expected} bytes")]
    BadEncoding {
        /// The key's name.
        name: String,
        /// How many bytes the key must have.
        expected: usize,
    },
    /// The public half of a secret key does not belong to its seed.
    #[error("the secret key `{0}` is damaged: its public half does not match its seed")]
    Mismatch(String),
    /// The operating system gave no random bytes.
    #[error("cannot draw random bytes for a new key: {0}")]
    Random(String),
}

fn check_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() {
        return Err(KeyError::MissingName);
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(KeyError::BadName);
    }
    Ok(())
}

/// Splits `NAME:BASE64` into the name and the decoded bytes (empty when not base64).
fn split(text: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, encoded) = text.trim().split_once(':').ok_or(KeyError::MissingName)?;
    check_name(name)?;
    Ok((name, BASE64.decode(encoded).unwrap_or_default()))
}

/// A secret signing key. Its `Debug` and `Display` never show the secret.
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Makes a new key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { name: name.to_owned(), key: SigningKey::from_bytes(&seed) })
    }

    /// Reads a key from its text (`NAME:BASE64(seed ‖ public)`).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(text)?;
        let bad = || KeyError::BadEncoding { name: name.to_owned(), expected: 64 };
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| bad())?;
        let seed: [u8; 32] = bytes[..32].try_into().map_err(|_| bad())?;
        let key = SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[32..] {
            return Err(KeyError::Mismatch(name.to_owned()));
        }
        Ok(Self { name: name.to_owned(), key })
    }

    /// The key's text, for the secret key file. Keep it secret.
    pub fn to_secret_text(&self) -> String {
        let mut bytes = self.key.to_bytes().to_vec();
        bytes.extend_from_slice(self.key.verifying_key().as_bytes());
        format!("{}:{}", self.name, BASE64.encode(bytes))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs an entry: the signature covers its closure, output hash, metadata and listing.
    pub fn sign(&self, closure: &ClosureHash, output: &OutputHash, meta: &[u8], listing: &[u8]) -> Signature {
        let signature = self.key.sign(&fingerprint(closure, output, meta, listing));
        Signature { key: self.name.clone(), signature: BASE64.encode(signature.to_bytes()) }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("name", &self.name).finish_non_exhaustive()
    }
}

/// A public key trusted to sign entries.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Reads a key from its text (`NAME:BASE64(public)`).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split(text)?;
        let bad = || KeyError::BadEncoding { name: name.to_owned(), expected: 32 };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad())?;
        Ok(Self { name: name.to_owned(), key })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` is this key's signature of the entry.
    pub fn verifies(
        &self,
        signature: &Signature,
        closure: &ClosureHash,
        output: &OutputHash,
        meta: &[u8],
        listing: &[u8],
    ) -> bool {
        let Ok(bytes) = BASE64.decode(&signature.signature) else { return false };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes) else { return false };
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.key.verify_strict(&fingerprint(closure, output, meta, listing), &signature).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// One signature of an entry, as a manifest carries it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signature {
    /// The signing key's name.
    pub key: String,
    /// The ed25519 signature, base64.
    pub signature: String,
}

/// What a signature covers: the entry's closure, its output hash, the BLAKE3 of its metadata
/// text (whose derivation must hash to the closure) and the BLAKE3 of its listing as the
/// manifest writes it (so sizes, which the output hash leaves out, are signed too).
fn fingerprint(closure: &ClosureHash, output: &OutputHash, meta: &[u8], listing: &[u8]) -> Vec<u8> {
    format!("kiln-entry-v1\n{closure}\n{output}\n{}\n{}\n", blake3::hash(meta), blake3::hash(listing)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sign() {
        let secret = SecretKey::generate("ci-1").expect("generate");
        let again = SecretKey::parse(&secret.to_secret_text()).expect("parse secret");
        let public = PublicKey::parse(&again.public().to_string()).expect("parse public");
        assert_eq!(public, secret.public());
        assert!(!format!("{secret:?}").contains(&secret.to_secret_text()[5..]), "Debug hides the secret");

        let closure = ClosureHash::from_blake3(blake3::hash(b"c"));
        let output = OutputHash::from_blake3(blake3::hash(b"o"));
        let signature = secret.sign(&closure, &output, b"meta", b"files");
        assert!(public.verifies(&signature, &closure, &output, b"meta", b"files"));
        assert!(!public.verifies(&signature, &closure, &output, b"meta2", b"files"));
        assert!(!public.verifies(&signature, &closure, &output, b"meta", b"files2"));
        let other = ClosureHash::from_blake3(blake3::hash(b"d"));
        assert!(!public.verifies(&signature, &other, &output, b"meta", b"files"));
        let stranger = SecretKey::generate("other").expect("generate").public();
        assert!(!stranger.verifies(&signature, &closure, &output, b"meta", b"files"));
    }

    #[test]
    fn bad_key_texts_are_named() {
        assert!(matches!(PublicKey::parse("no-colon"), Err(KeyError::MissingName)));
        assert!(matches!(PublicKey::parse("a b:AAAA"), Err(KeyError::BadName)));
        let secret_text = SecretKey::generate("k").expect("generate").to_secret_text();
        let (name, encoded) = secret_text.split_once(':').expect("colon");
        let swapped = SecretKey::parse(&format!("{encoded}:{name}")).expect_err("swapped halves");
        assert!(!swapped.to_string().contains(encoded.trim_end_matches('=')), "never repeats a secret: {swapped}");
        assert!(matches!(PublicKey::parse("k:AAAA"), Err(KeyError::BadEncoding { expected: 32, .. })));
        let secret = SecretKey::generate("k").expect("generate");
        let mut text = secret.to_secret_text();
        text.truncate(text.len() - 8);
        text.push_str("AAAAAAA=");
        assert!(matches!(SecretKey::parse(&text), Err(KeyError::Mismatch(_)) | Err(KeyError::BadEncoding { .. })));
    }
}
