//! The remote layout: one signed manifest per entry, file contents as shared blobs.
//!
//! ```text
//! <remote>/kiln-v1/entries/<closure>.json           manifest: metadata, listing, signatures
//! <remote>/kiln-v1/blobs/<2 hex>/<blake3>.zst        a file's content, zstd-compressed
//! ```
//! Every object is named by a hash of what it holds (a manifest by its closure, whose
//! metadata it carries), so objects never change once written and concurrent writers of the
//! same name write the same bytes. A pusher uploads the blobs first and the manifest last, so
//! a manifest that can be read names only blobs that are there.

use std::path::{Path, PathBuf};

use object_store::path::Path as ObjectPath;

use crate::{
    ClosureHash, EntryMeta, OutputHash,
    archive::{Rejection, check_components, check_link_target},
    remote::signing::{PublicKey, SecretKey, Signature},
    tree::{Node, hash_nodes},
};

/// The version of the remote layout; it is the first component of every object's name.
pub const REMOTE_LAYOUT: &str = "kiln-v1";

/// The largest manifest kiln reads (a listing of some hundred thousand files).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The object that marks a remote as holding a kiln store.
pub fn layout_path() -> ObjectPath {
    ObjectPath::from(format!("{REMOTE_LAYOUT}/layout.json"))
}

/// Where an entry's manifest lives.
pub fn manifest_path(closure: &ClosureHash) -> ObjectPath {
    ObjectPath::from(format!("{REMOTE_LAYOUT}/entries/{closure}.json"))
}

/// Where a blob lives, by the BLAKE3 of its uncompressed content.
pub fn blob_path(content: &blake3::Hash) -> ObjectPath {
    let hex = content.to_hex();
    ObjectPath::from(format!("{REMOTE_LAYOUT}/blobs/{}/{hex}.zst", &hex[..2]))
}

/// An entry as a remote holds it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The layout version, [`REMOTE_LAYOUT`].
    pub layout: String,
    /// The entry's closure hash.
    pub closure: String,
    /// The entry's output hash.
    pub output_hash: String,
    /// The entry's `meta.toml`, byte for byte.
    pub meta: String,
    /// Every path of the output tree in the tree hash's order.
    pub files: Vec<ManifestFile>,
    /// Signatures of (closure, output hash, metadata).
    pub signatures: Vec<Signature>,
}

/// One path of an entry's output. (`deny_unknown_fields` does not combine with `flatten`.)
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    /// Relative, `/`-separated.
    pub path: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: ManifestKind,
}

/// What a path of an entry's output is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ManifestKind {
    /// A directory.
    Dir,
    /// A file; its content is the blob named by `blake3`.
    File {
        /// BLAKE3 of the content, hex.
        blake3: String,
        /// Length in bytes.
        size: u64,
        /// Whether the owner-execute bit is set.
        executable: bool,
    },
    /// A symlink.
    Symlink {
        /// Its target.
        target: String,
    },
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("the manifest cannot be read: {0}")]
    Unreadable(String),
    /// Another layout version.
    #[error("the manifest is of layout `{found}`, and this kiln reads `{REMOTE_LAYOUT}`")]
    Layout {
        /// The version found.
        found: String,
    },
    /// The manifest names another closure, or its metadata's derivation hashes to another.
    #[error("the manifest does not describe closure {expected}: {what}")]
    WrongClosure {
        /// The closure asked for.
        expected: ClosureHash,
        /// What disagrees.
        what: String,
    },
    /// No signature at all.
    #[error("the entry is not signed")]
    Unsigned,
    /// Signed, but by no trusted key.
    #[error("the entry is signed only by {keys}, none of them in `[store] trusted-keys`")]
    Untrusted {
        /// The names of the keys that signed.
        keys: String,
    },
    /// A trusted key's name is on a signature that does not verify.
    #[error(
        "the signature by trusted key `{key}` does not match the entry (tampered or corrupt, or signed by another key of the same name)"
    )]
    BadSignature {
        /// The key's name.
        key: String,
    },
    /// The listing does not hash to the output hash.
    #[error("the file listing hashes to {actual}, not to the signed output hash {expected}")]
    ListingMismatch {
        /// The signed output hash.
        expected: String,
        /// What the listing hashes to.
        actual: OutputHash,
    },
    /// A path or link target is unsafe.
    #[error("`{path}`: {rejection}")]
    UnsafePath {
        /// The path.
        path: String,
        /// Why it was refused.
        rejection: Rejection,
    },
}

impl Manifest {
    /// The manifest of a local entry's output, signed by `key`.
    pub(crate) fn of_entry(
        closure: &ClosureHash,
        meta_text: &str,
        output: &OutputHash,
        nodes: &[(PathBuf, Node)],
        key: &SecretKey,
    ) -> Result<Self, String> {
        let files = nodes
            .iter()
            .map(|(path, node)| {
                let path = path.to_str().ok_or_else(|| format!("`{}` is not UTF-8", path.display()))?.to_owned();
                let kind = match node {
                    Node::Dir => ManifestKind::Dir,
                    Node::File { executable, content, size } => ManifestKind::File {
                        blake3: blake3::Hash::from(*content).to_hex().to_string(),
                        size: *size,
                        executable: *executable,
                    },
                    Node::Symlink { target } => ManifestKind::Symlink {
                        target: String::from_utf8(target.clone())
                            .map_err(|_| format!("the target of symlink `{path}` is not UTF-8"))?,
                    },
                };
                Ok(ManifestFile { path, kind })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let listing = serde_json::to_vec(&files).map_err(|e| e.to_string())?;
        Ok(Self {
            layout: REMOTE_LAYOUT.to_owned(),
            closure: closure.to_string(),
            output_hash: output.to_string(),
            meta: meta_text.to_owned(),
            files,
            signatures: vec![key.sign(closure, output, meta_text.as_bytes(), &listing)],
        })
    }

    /// Parses a manifest and checks it against `closure` and the trusted keys: the layout,
    /// a valid signature by a trusted key, the metadata's derivation and output hash, the
    /// listing's hash and every path. Returns the parsed metadata.
    pub fn verified(
        bytes: &[u8],
        closure: &ClosureHash,
        trusted: &[PublicKey],
    ) -> Result<(Self, EntryMeta), ManifestError> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
        if manifest.layout != REMOTE_LAYOUT {
            return Err(ManifestError::Layout { found: manifest.layout });
        }
        let wrong = |what: String| ManifestError::WrongClosure { expected: *closure, what };
        if manifest.closure != closure.to_string() {
            return Err(wrong(format!("it names {}", manifest.closure)));
        }
        let output: OutputHash = manifest
            .output_hash
            .parse()
            .map_err(|_| ManifestError::Unreadable(format!("bad output hash `{}`", manifest.output_hash)))?;
        manifest.check_signature(closure, &output, trusted)?;
        let meta: EntryMeta =
            toml::from_str(&manifest.meta).map_err(|e| ManifestError::Unreadable(format!("its metadata: {e}")))?;
        if meta.derivation.closure_hash() != *closure {
            return Err(wrong(format!("its derivation hashes to {}", meta.derivation.closure_hash())));
        }
        if meta.output_hash != manifest.output_hash {
            return Err(wrong(format!("its metadata records output {}", meta.output_hash)));
        }
        let actual = hash_nodes(&manifest.nodes()?);
        if actual != output {
            return Err(ManifestError::ListingMismatch { expected: manifest.output_hash.clone(), actual });
        }
        Ok((manifest, meta))
    }

    fn check_signature(
        &self,
        closure: &ClosureHash,
        output: &OutputHash,
        trusted: &[PublicKey],
    ) -> Result<(), ManifestError> {
        if self.signatures.is_empty() {
            return Err(ManifestError::Unsigned);
        }
        let listing = serde_json::to_vec(&self.files).map_err(|e| ManifestError::Unreadable(e.to_string()))?;
        let mut bad = None;
        for signature in &self.signatures {
            for key in trusted.iter().filter(|key| key.name() == signature.key) {
                if key.verifies(signature, closure, output, self.meta.as_bytes(), &listing) {
                    return Ok(());
                }
                bad = Some(key.name().to_owned());
            }
        }
        Err(match bad {
            Some(key) => ManifestError::BadSignature { key },
            None => ManifestError::Untrusted {
                keys: self.signatures.iter().map(|s| format!("`{}`", s.key)).collect::<Vec<_>>().join(", "),
            },
        })
    }

    /// The listing as tree nodes, every path and link target checked.
    fn nodes(&self) -> Result<Vec<(PathBuf, Node)>, ManifestError> {
        self.files
            .iter()
            .map(|file| {
                let unsafe_path = |rejection| ManifestError::UnsafePath { path: file.path.clone(), rejection };
                check_components(file.path.as_bytes()).map_err(unsafe_path)?;
                if file.path.starts_with('/') {
                    return Err(unsafe_path(Rejection::AbsolutePath));
                }
                let node = match &file.kind {
                    ManifestKind::Dir => Node::Dir,
                    ManifestKind::File { blake3, size, executable } => Node::File {
                        executable: *executable,
                        content: *parse_blob_hash(blake3)
                            .ok_or_else(|| ManifestError::Unreadable(format!("bad blob hash `{blake3}`")))?
                            .as_bytes(),
                        size: *size,
                    },
                    ManifestKind::Symlink { target } => {
                        check_link_target(format!("out/{}", file.path).as_bytes(), target.as_bytes())
                            .map_err(unsafe_path)?;
                        Node::Symlink { target: target.clone().into_bytes() }
                    }
                };
                Ok((PathBuf::from(&file.path), node))
            })
            .collect()
    }

    /// The distinct blobs the entry needs, with the paths below `out` that hold each.
    pub fn blobs(&self, out: &Path) -> Vec<Blob> {
        let mut blobs: std::collections::BTreeMap<[u8; 32], Blob> = Default::default();
        for file in &self.files {
            if let ManifestKind::File { blake3, size, executable } = &file.kind
                && let Some(hash) = parse_blob_hash(blake3)
            {
                let blob = blobs.entry(*hash.as_bytes()).or_insert(Blob { hash, size: *size, targets: Vec::new() });
                blob.targets.push((out.join(&file.path), *executable));
            }
        }
        blobs.into_values().collect()
    }
}

/// One file content an entry needs, and where it goes.
#[derive(Clone, Debug)]
pub struct Blob {
    /// BLAKE3 of the content.
    pub hash: blake3::Hash,
    /// Its length.
    pub size: u64,
    /// The paths that hold it, and whether each is executable.
    pub targets: Vec<(PathBuf, bool)>,
}

/// A blob's hash from its lowercase hex.
fn parse_blob_hash(hex: &str) -> Option<blake3::Hash> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    blake3::Hash::from_hex(hex).ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::{Derivation, Store, tree::list_tree};

    /// A real store entry (a file, an executable, a directory, a symlink) and what a pusher
    /// signs of it.
    struct Fixture {
        _dir: tempfile::TempDir,
        closure: ClosureHash,
        meta: String,
        output: OutputHash,
        nodes: Vec<(PathBuf, Node)>,
        key: SecretKey,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("store");
        let mut drv = Derivation::new("manifest-test");
        drv.setting("tag", "a");
        let (entry, _) = store
            .build(
                &drv,
                "a",
                || {},
                |out| {
                    std::fs::create_dir_all(out.join("bin"))?;
                    std::fs::write(out.join("bin/tool"), b"#!/bin/sh\n")?;
                    std::fs::set_permissions(
                        out.join("bin/tool"),
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    )?;
                    std::fs::write(out.join("data"), b"data")?;
                    symlink("bin/tool", out.join("link"))?;
                    Ok(())
                },
            )
            .expect("entry");
        let meta = std::fs::read_to_string(entry.dir.join("meta.toml")).expect("meta.toml");
        let nodes = list_tree(&entry.out_dir()).expect("listing");
        Fixture {
            closure: entry.closure,
            output: hash_nodes(&nodes),
            meta,
            nodes,
            key: SecretKey::generate("ci-1").expect("key"),
            _dir: dir,
        }
    }

    impl Fixture {
        fn signed(&self, edit: impl FnOnce(&mut Vec<(PathBuf, Node)>, &mut String, &mut OutputHash)) -> Vec<u8> {
            let (mut nodes, mut meta, mut output) = (self.nodes.clone(), self.meta.clone(), self.output);
            edit(&mut nodes, &mut meta, &mut output);
            let manifest = Manifest::of_entry(&self.closure, &meta, &output, &nodes, &self.key).expect("manifest");
            serde_json::to_vec(&manifest).expect("json")
        }

        fn verify(&self, bytes: &[u8]) -> Result<(Manifest, EntryMeta), ManifestError> {
            Manifest::verified(bytes, &self.closure, &[self.key.public()])
        }
    }

    #[test]
    fn a_signed_manifest_of_a_real_entry_verifies_and_names_its_blobs() {
        let f = fixture();
        let (manifest, meta) = f.verify(&f.signed(|_, _, _| {})).expect("verifies");
        assert_eq!(meta.output_hash, f.output.to_string());
        let blobs = manifest.blobs(Path::new("/out"));
        assert_eq!(blobs.len(), 2, "two distinct file contents");
        assert!(blobs.iter().any(|b| b.targets == [(PathBuf::from("/out/bin/tool"), true)]), "{blobs:?}");
    }

    #[test]
    fn signatures_must_come_from_a_trusted_key_and_match() {
        let f = fixture();
        let bytes = f.signed(|_, _, _| {});
        // Nobody trusted.
        let err = Manifest::verified(&bytes, &f.closure, &[]).expect_err("untrusted");
        assert!(matches!(err, ManifestError::Untrusted { ref keys } if keys == "`ci-1`"), "{err}");
        // A trusted key of the same name that did not sign it.
        let impostor = SecretKey::generate("ci-1").expect("key").public();
        let err = Manifest::verified(&bytes, &f.closure, &[impostor]).expect_err("another key");
        assert!(matches!(err, ManifestError::BadSignature { ref key } if key == "ci-1"), "{err}");
        // No signature at all.
        let mut manifest: Manifest = serde_json::from_slice(&bytes).expect("json");
        manifest.signatures.clear();
        let err = f.verify(&serde_json::to_vec(&manifest).expect("json")).expect_err("unsigned");
        assert!(matches!(err, ManifestError::Unsigned), "{err}");
        // Tampered after signing: another file content.
        let mut manifest: Manifest = serde_json::from_slice(&bytes).expect("json");
        if let ManifestKind::File { blake3, .. } =
            &mut manifest.files.iter_mut().find(|f| f.path == "data").expect("data").kind
        {
            *blake3 = "0".repeat(64);
        }
        let err = f.verify(&serde_json::to_vec(&manifest).expect("json")).expect_err("tampered");
        assert!(matches!(err, ManifestError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn a_trusted_signer_cannot_vouch_for_a_manifest_that_contradicts_itself() {
        let f = fixture();
        // Another closure's manifest served under this one's name.
        let mut manifest: Manifest = serde_json::from_slice(&f.signed(|_, _, _| {})).expect("json");
        manifest.closure = "ab".repeat(32);
        let err = f.verify(&serde_json::to_vec(&manifest).expect("json")).expect_err("other closure");
        assert!(matches!(err, ManifestError::WrongClosure { .. }), "{err}");
        // Metadata whose derivation hashes to another closure.
        let err =
            f.verify(&f.signed(|_, meta, _| *meta = meta.replace("manifest-test", "other-kind"))).expect_err("meta");
        assert!(matches!(err, ManifestError::WrongClosure { ref what, .. } if what.contains("derivation")), "{err}");
        // A listing that does not hash to the signed output hash.
        let err =
            f.verify(&f.signed(|nodes, _, _| nodes.retain(|(p, _)| p != Path::new("data")))).expect_err("listing");
        assert!(matches!(err, ManifestError::ListingMismatch { .. }), "{err}");
        // Another layout version.
        let mut manifest: Manifest = serde_json::from_slice(&f.signed(|_, _, _| {})).expect("json");
        manifest.layout = "kiln-v0".into();
        let err = f.verify(&serde_json::to_vec(&manifest).expect("json")).expect_err("layout");
        assert!(matches!(err, ManifestError::Layout { ref found } if found == "kiln-v0"), "{err}");
        assert!(matches!(f.verify(b"{}").expect_err("shape"), ManifestError::Unreadable(_)));
    }

    #[test]
    fn unsafe_paths_and_escaping_links_are_refused_even_when_signed() {
        let f = fixture();
        for (path, node) in [
            ("../escape", Node::Dir),
            ("a//b", Node::Dir),
            ("out-link", Node::Symlink { target: b"../../etc/passwd".to_vec() }),
            ("abs-link", Node::Symlink { target: b"/etc/passwd".to_vec() }),
        ] {
            // Signed, and consistent: the metadata records the output hash of the listing.
            let bytes = f.signed(|nodes, meta, output| {
                nodes.push((PathBuf::from(path), node.clone()));
                nodes.sort_by(|a, b| a.0.as_os_str().as_encoded_bytes().cmp(b.0.as_os_str().as_encoded_bytes()));
                let old = output.to_string();
                *output = hash_nodes(nodes);
                *meta = meta.replace(&old, &output.to_string());
            });
            let err = f.verify(&bytes).expect_err(path);
            assert!(matches!(err, ManifestError::UnsafePath { path: ref p, .. } if p == path), "{path}: {err}");
        }
        assert_eq!(parse_blob_hash(&"A".repeat(64)), None, "only canonical lowercase hex names a blob");
    }
}
