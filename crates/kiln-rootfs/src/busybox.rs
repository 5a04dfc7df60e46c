//! Busybox: its applet names read from the binary itself (which may be for another
//! architecture, so it is never run), and the `/bin/<applet>` symlinks.

use crate::{
    errors::{Error, Result},
    tree::{Data, Tree},
};

/// The start of busybox's `applet_names[]`: NUL-terminated names in ascending order, the
/// first two being `[` and `[[`, the whole block ending with an empty name.
const TABLE_START: &[u8] = b"[\0[[\0";

/// The applet names of a busybox binary, in the binary's (sorted) order, or `None` when it
/// has no applet table.
pub fn busybox_applets(binary: &[u8]) -> Option<Vec<&str>> {
    let mut from = 0;
    while let Some(at) = find(&binary[from..], TABLE_START) {
        let start = from + at;
        if let Some(names) = parse_table(&binary[start..]) {
            return Some(names);
        }
        from = start + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one candidate table; it must end with an empty name and be strictly ascending.
fn parse_table(block: &[u8]) -> Option<Vec<&str>> {
    let mut names: Vec<&str> = Vec::new();
    let mut rest = block;
    loop {
        let end = rest.iter().position(|&b| b == 0)?;
        if end == 0 {
            break;
        }
        let name = std::str::from_utf8(&rest[..end]).ok()?;
        let plausible = name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'[' | b'_' | b'-' | b'.' | b'+'));
        if !plausible || names.last().is_some_and(|last| *last >= name) {
            return None;
        }
        names.push(name);
        rest = &rest[end + 1..];
    }
    (names.len() >= 2).then_some(names)
}

impl Tree {
    /// Installs busybox: `binary` as `/bin/busybox` (mode 0755), a symlink
    /// `/bin/<applet> -> busybox` for every applet found in the binary, and
    /// `/usr/bin/env -> /bin/busybox`. Later insertions replace these as usual. Returns the
    /// number of applets. `origin` names the binary in errors.
    pub fn add_busybox(&mut self, binary: Data, origin: &str) -> Result<usize> {
        let bytes = binary.read_all()?;
        let applets = busybox_applets(&bytes).ok_or_else(|| Error::NotBusybox { origin: origin.to_owned() })?;
        self.insert_file("/bin/busybox", 0o755, binary.clone())?;
        for applet in &applets {
            if *applet != "busybox" {
                self.insert_symlink(&format!("/bin/{applet}"), "busybox")?;
            }
        }
        self.insert_symlink("/usr/bin/env", "/bin/busybox")?;
        Ok(applets.len())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tree::Node;

    /// A fake binary: some noise, a decoy that is not sorted, then a real-looking table.
    pub(crate) fn fake_busybox() -> Vec<u8> {
        let mut bin = b"\x7fELF\0\0junk[\0[[\0zz\0aa\0\0more".to_vec();
        bin.extend_from_slice(b"[\0[[\0ash\0cat\0ls\0sh\0\0trailing data");
        bin
    }

    #[test]
    fn finds_the_sorted_table_past_decoys() {
        assert_eq!(busybox_applets(&fake_busybox()), Some(vec!["[", "[[", "ash", "cat", "ls", "sh"]));
        assert_eq!(busybox_applets(b"no table here"), None);
        assert_eq!(busybox_applets(b"[\0[[\0unterminated"), None);
    }

    #[test]
    fn installs_symlinks_for_every_applet() -> Result<()> {
        let mut tree = Tree::new();
        let count = tree.add_busybox(Data::from(fake_busybox()), "fake busybox")?;
        assert_eq!(count, 6);
        assert_eq!(tree.get("/bin/sh"), Some(&Node::Symlink { target: "busybox".into() }));
        assert_eq!(tree.get("/bin/["), Some(&Node::Symlink { target: "busybox".into() }));
        assert_eq!(tree.get("/usr/bin/env"), Some(&Node::Symlink { target: "/bin/busybox".into() }));
        assert!(matches!(tree.get("/bin/busybox"), Some(Node::File { mode: 0o755, .. })));
        Ok(())
    }

    #[test]
    fn a_binary_without_applets_is_named() {
        let err = Tree::new().add_busybox(Data::from("#!/bin/sh\n"), "/tmp/not-busybox").expect_err("no table");
        assert!(err.to_string().starts_with("/tmp/not-busybox does not look like a busybox binary"), "{err}");
    }
}
