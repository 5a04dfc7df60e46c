//! Rootfs paths: normalisation, the component-wise order of tree keys, and the lexical check
//! that a symlink target stays inside the rootfs.

use std::cmp::Ordering;

use crate::errors::PathProblem;

/// A normalised rootfs-absolute path (`/a/b`: no empty, `.` or `..` components, never `/`),
/// ordered component by component so that a directory sorts directly before its subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key(pub(crate) String);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.split('/').cmp(other.0.split('/'))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Normalises `path` (with or without a leading `/`; `.` and empty components dropped) to
/// `/a/b`, or `""` for the root.
pub(crate) fn normalise_allow_root(path: &str) -> Result<String, PathProblem> {
    if path.contains('\0') {
        return Err(PathProblem::Nul);
    }
    let mut out = String::with_capacity(path.len() + 1);
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(PathProblem::ParentComponent),
            name => {
                out.push('/');
                out.push_str(name);
            }
        }
    }
    Ok(out)
}

/// Like [`normalise_allow_root`], but the root itself is an error.
pub(crate) fn normalise(path: &str) -> Result<String, PathProblem> {
    let out = normalise_allow_root(path)?;
    if out.is_empty() { Err(PathProblem::Root) } else { Ok(out) }
}

/// The parent of a normalised path (`""` for the root's children).
pub(crate) fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// The proper ancestors of a normalised path, outermost first (`/a`, `/a/b` for `/a/b/c`).
pub(crate) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').skip(1).map(move |(i, _)| &path[..i])
}

/// Whether a symlink at `link` (normalised) pointing at `target` climbs above the root when
/// resolved lexically: relative targets from the link's directory, absolute ones from `/`.
pub(crate) fn symlink_escapes(link: &str, target: &str) -> bool {
    let mut depth = if target.starts_with('/') { 0 } else { parent(link).split('/').count() - 1 };
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if depth == 0 => return true,
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_common_forms() {
        assert_eq!(normalise("/a/b").as_deref(), Ok("/a/b"));
        assert_eq!(normalise("./a//b/").as_deref(), Ok("/a/b"));
        assert_eq!(normalise("a/./b").as_deref(), Ok("/a/b"));
        assert_eq!(normalise("./"), Err(PathProblem::Root));
        assert_eq!(normalise_allow_root("/").as_deref(), Ok(""));
        assert_eq!(normalise("a/../b"), Err(PathProblem::ParentComponent));
        assert_eq!(normalise("a\0b"), Err(PathProblem::Nul));
    }

    #[test]
    fn keys_sort_parents_before_their_subtrees() {
        let mut keys: Vec<Key> =
            ["/a-b", "/a/b", "/a", "/a/b/c", "/b", "/a.x"].iter().map(|s| Key(s.to_string())).collect();
        keys.sort();
        let got: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        assert_eq!(got, ["/a", "/a/b", "/a/b/c", "/a-b", "/a.x", "/b"]);
    }

    #[test]
    fn ancestors_and_parent() {
        assert_eq!(ancestors("/a/b/c").collect::<Vec<_>>(), ["/a", "/a/b"]);
        assert_eq!(ancestors("/a").count(), 0);
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "");
    }

    #[test]
    fn symlink_escape_is_lexical_from_the_links_directory() {
        assert!(!symlink_escapes("/bin/sh", "busybox"));
        assert!(!symlink_escapes("/bin/sh", "/bin/busybox"));
        assert!(!symlink_escapes("/etc/x", "/etc/alternatives/x"));
        assert!(!symlink_escapes("/usr/lib/x/libfoo.so", "../../../lib/libfoo.so.1"));
        assert!(!symlink_escapes("/usr/bin/x", "/usr/../bin/x"));
        assert!(symlink_escapes("/a/l", "../../../etc"));
        assert!(symlink_escapes("/a/l", "../.."));
        assert!(symlink_escapes("/l", "../etc"));
        assert!(symlink_escapes("/l", "/../etc"));
        assert!(symlink_escapes("/a/b/l", "x/../../../../y"));
    }
}
