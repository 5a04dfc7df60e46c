//! The GitHub Actions workflow `init` writes at the git root: kiln's action with its store
//! cache, least privilege, and what workflow linters (actionlint, zizmor) ask for.

/// `actions/checkout` pinned by commit (v4.2.2).
const CHECKOUT: &str = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2";

/// The workflow; `dir` is the project's directory below the git root, if any.
pub(super) fn text(dir: Option<&str>) -> String {
    let action_version = env!("CARGO_PKG_VERSION").split('.').take(1).collect::<String>();
    let mut text = format!(
        "# Written by `cargo kiln init`: builds, boots and judges every Kiln.toml case on each push\n\
         # and pull request; kiln's action installs QEMU and caches kiln's store, so an unchanged\n\
         # kernel or image is never rebuilt.\n\
         name: kiln\n\
         on:\n  push:\n  pull_request:\n\
         permissions:\n  contents: read\n\
         concurrency:\n  group: kiln-${{{{ github.ref }}}}\n  cancel-in-progress: true\n\
         jobs:\n  test:\n    runs-on: ubuntu-latest\n    timeout-minutes: 60\n    steps:\n\
         \x20     - uses: {CHECKOUT}\n        with:\n          persist-credentials: false\n\
         \x20     - uses: kiln-rs/kiln/action@v{action_version}\n"
    );
    if let Some(dir) = dir {
        text.push_str(&format!("        with:\n          working-directory: {dir}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_project_below_the_git_root_gets_its_working_directory() {
        let text = super::text(Some("kernel"));
        assert!(text.contains("working-directory: kernel\n"), "{text}");
        assert!(text.contains("permissions:\n  contents: read"), "{text}");
        assert!(text.contains("persist-credentials: false"), "{text}");
        assert!(!super::text(None).contains("working-directory"));
    }
}
