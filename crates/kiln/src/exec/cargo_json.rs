//! The parts of cargo's JSON that kiln reads: `cargo metadata --format-version 1` and the
//! `--message-format json` stream of a build. Only the fields kiln uses; cargo adds fields
//! over time, and unknown ones are ignored.

use std::{io::BufRead, path::PathBuf};

use serde::Deserialize;

/// A package's id, as cargo prints it (opaque; compared and printed only).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(transparent)]
pub(crate) struct PackageId {
    /// The id text.
    pub repr: String,
}

impl std::fmt::Display for PackageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repr)
    }
}

/// `cargo metadata`'s answer.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Metadata {
    /// The workspace's packages and, without `--no-deps`, every dependency.
    pub packages: Vec<Package>,
    /// The workspace root directory.
    pub workspace_root: PathBuf,
    /// The dependency graph (absent with `--no-deps`).
    #[serde(default)]
    pub resolve: Option<Resolve>,
}

impl Metadata {
    /// Parses `cargo metadata --format-version 1` output.
    pub(crate) fn parse(json: &str) -> serde_json::Result<Metadata> {
        serde_json::from_str(json)
    }
}

/// One package.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Package {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its id.
    pub id: PackageId,
    /// Where it comes from; `None` for a local (path) package.
    #[serde(default)]
    pub source: Option<String>,
    /// Its `Cargo.toml`.
    pub manifest_path: PathBuf,
    #[cfg_attr(not(feature = "init"), allow(dead_code, reason = "read by init"))]
    /// Its targets.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Its declared dependencies.
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    /// `[package.metadata]`.
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Its `[features]`.
    #[serde(default)]
    pub features: std::collections::BTreeMap<String, Vec<String>>,
}

/// A declared dependency.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Dependency {
    /// The package it names.
    pub name: String,
    /// The name it is used under, when renamed.
    #[serde(default)]
    pub rename: Option<String>,
    #[cfg_attr(not(feature = "init"), allow(dead_code, reason = "read by init"))]
    /// Its version requirement.
    pub req: String,
    #[cfg_attr(not(feature = "init"), allow(dead_code, reason = "read by init"))]
    /// `null` (normal), `"dev"` or `"build"`.
    #[serde(default, deserialize_with = "normal_when_null")]
    pub kind: DependencyKind,
}

/// A build target of a package.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Target {
    /// Its name.
    pub name: String,
    /// Its kinds: `bin`, `lib`, `test`, `custom-build`, ...
    #[serde(default)]
    pub kind: Vec<String>,
}

impl Target {
    /// Whether it is a `[[bin]]`.
    pub(crate) fn is_bin(&self) -> bool {
        self.kind.iter().any(|k| k == "bin")
    }

    #[cfg_attr(not(feature = "init"), allow(dead_code, reason = "read by init"))]
    /// Whether it is an integration test (`tests/*.rs`, `[[test]]`).
    pub(crate) fn is_test(&self) -> bool {
        self.kind.iter().any(|k| k == "test")
    }
}

/// The resolved dependency graph.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Resolve {
    /// One node per package.
    pub nodes: Vec<Node>,
}

/// A package in the graph.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Node {
    /// The package.
    pub id: PackageId,
    /// What it depends on.
    #[serde(default)]
    pub deps: Vec<NodeDep>,
    /// Its enabled features.
    #[serde(default)]
    pub features: Vec<String>,
}

/// An edge of the graph.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct NodeDep {
    /// The name the dependency is used under in code.
    pub name: String,
    /// The package depended on.
    pub pkg: PackageId,
    /// How (normal, dev, build; per platform).
    #[serde(default)]
    pub dep_kinds: Vec<DepKindInfo>,
}

/// One way an edge is used.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct DepKindInfo {
    /// `null` (normal), `"dev"` or `"build"`.
    #[serde(default, deserialize_with = "normal_when_null")]
    pub kind: DependencyKind,
}

fn normal_when_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<DependencyKind, D::Error> {
    Ok(Option::<DependencyKind>::deserialize(deserializer)?.unwrap_or_default())
}

/// The kind of a dependency edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub(crate) enum DependencyKind {
    /// `[dependencies]` (cargo prints `null`).
    #[default]
    #[serde(rename = "normal")]
    Normal,
    /// `[dev-dependencies]`.
    #[serde(rename = "dev")]
    Development,
    /// `[build-dependencies]`.
    #[serde(rename = "build")]
    Build,
}

/// A line of `cargo build --message-format json`.
#[derive(Clone, Debug)]
pub(crate) enum Message {
    /// A target was compiled.
    CompilerArtifact(Artifact),
    /// Anything else (diagnostics, build scripts, the final line).
    Other,
}

/// `"reason": "compiler-artifact"`.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Artifact {
    /// The target.
    pub target: Target,
    /// The profile it was built with.
    pub profile: ArtifactProfile,
    /// The executable, for binaries and tests.
    #[serde(default)]
    pub executable: Option<PathBuf>,
}

/// The profile part of an artifact message.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ArtifactProfile {
    /// Whether this is a test build (`cargo test`).
    #[serde(default)]
    pub test: bool,
}

#[derive(Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
enum Tagged {
    CompilerArtifact(Artifact),
    #[serde(other)]
    Other,
}

impl Message {
    /// The messages of a JSON stream, one per line; a line that is not cargo's JSON (a
    /// build script's own output) is [`Message::Other`]; a read error ends the stream.
    pub(crate) fn parse_stream(reader: impl BufRead) -> impl Iterator<Item = std::io::Result<Message>> {
        reader.lines().map(|line| {
            Ok(match serde_json::from_str::<Tagged>(&line?) {
                Ok(Tagged::CompilerArtifact(artifact)) => Message::CompilerArtifact(artifact),
                Ok(Tagged::Other) | Err(_) => Message::Other,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metadata_and_an_artifact_line_as_cargo_prints_them() {
        let json = r#"{"packages":[{"name":"k","version":"0.1.0","id":"path+file:///k#0.1.0","source":null,
            "manifest_path":"/k/Cargo.toml","targets":[{"name":"k","kind":["bin"],"src_path":"/k/src/main.rs"}],
            "dependencies":[{"name":"bootloader","req":"^0.9","kind":null}],"metadata":{"bootimage":{"test-success-exit-code":33}}}],"workspace_root":"/k",
            "resolve":{"nodes":[{"id":"path+file:///k#0.1.0","deps":[{"name":"b","pkg":"b 1.0",
            "dep_kinds":[{"kind":null,"target":null},{"kind":"dev","target":null}]}]}],"root":null},"version":1}"#;
        let metadata = Metadata::parse(json).expect("parses");
        let package = &metadata.packages[0];
        assert!(package.targets[0].is_bin() && package.source.is_none());
        assert_eq!(package.metadata["bootimage"]["test-success-exit-code"], 33);
        let kinds: Vec<_> =
            metadata.resolve.expect("resolve").nodes[0].deps[0].dep_kinds.iter().map(|k| k.kind).collect();
        assert_eq!(kinds, [DependencyKind::Normal, DependencyKind::Development]);
        let stream = concat!(
            "not json\n",
            r#"{"reason":"compiler-artifact","package_id":"k","target":{"name":"k","kind":["bin"]},"profile":{"test":true},"executable":"/t/k-1","filenames":[]}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n"
        );
        let messages: Vec<_> = Message::parse_stream(stream.as_bytes()).map(|m| m.expect("read")).collect();
        assert_eq!(messages.len(), 3);
        let Message::CompilerArtifact(artifact) = &messages[1] else { panic!("an artifact") };
        assert!(artifact.profile.test && artifact.executable.as_deref() == Some(std::path::Path::new("/t/k-1")));
    }
}
