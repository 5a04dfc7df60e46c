//! The GitHub Actions workflows `init` writes at the git root: `kiln.yml` (kiln's action with
//! its store cache) and `kiln-prune.yml` (`ci prune-caches` daily and when a pull request
//! closes), with least privilege and what workflow linters (actionlint, zizmor) ask for.

/// `actions/checkout` pinned by commit (v4.2.2).
const CHECKOUT: &str = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2";
/// `actions/cache/restore` pinned by commit (v4.2.3), as kiln's action pins it.
const CACHE_RESTORE: &str = "actions/cache/restore@5a3ec84eff668545956fd18022155c47e93e2684 # v4.2.3";
/// `actions/cache/save` pinned by commit (v4.2.3).
const CACHE_SAVE: &str = "actions/cache/save@5a3ec84eff668545956fd18022155c47e93e2684 # v4.2.3";

/// The file name of the prune workflow, in `.github/workflows/`.
pub(super) const PRUNE_FILE: &str = "kiln-prune.yml";

/// kiln's action, pinned to the commit this kiln was built from (zizmor's `unpinned-uses`);
/// a kiln built outside git without `KILN_SOURCE_COMMIT` can only name its major version.
fn kiln_action() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match option_env!("KILN_SOURCE_COMMIT") {
        Some(commit) => format!("kiln-rs/kiln/action@{commit} # kiln {version}"),
        None => {
            let major = version.split('.').next().unwrap_or("0");
            format!("kiln-rs/kiln/action@v{major} # pin to a commit of kiln-rs/kiln")
        }
    }
}

/// The workflow; `dir` is the project's directory below the git root, if any.
pub(super) fn text(dir: Option<&str>) -> String {
    let action = kiln_action();
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
         \x20     - uses: {action}\n"
    );
    if let Some(dir) = dir {
        text.push_str(&format!("        with:\n          working-directory: {dir}\n"));
    }
    text
}

/// The prune workflow; `dir` is the project's directory below the git root, if any. It builds
/// the xtask with kiln's `github` feature (`KILN_TOOL_FEATURES`, which the bootstrap passes to
/// cargo) in a step without the token, so no build script sees it, then prunes with the same
/// features (else the bootstrap would rebuild without), taking the pull request's number from
/// the environment, never from an expression inside the script.
pub(super) fn prune_text(dir: Option<&str>) -> String {
    let xtask = match dir {
        Some(dir) => format!("{dir}/xtask"),
        None => "xtask".to_owned(),
    };
    // In an expression's string literal a quote is written twice.
    let glob = |pattern: &str| format!("'{}'", format!("{xtask}/{pattern}").replace('\'', "''"));
    let key = ["**/Cargo.lock", "**/Cargo.toml", "**/*.rs", "tool/rust-toolchain.toml", "!target/**"]
        .map(|pattern| {
            if let Some(excluded) = pattern.strip_prefix('!') {
                glob(excluded).replacen('\'', "'!", 1)
            } else {
                glob(pattern)
            }
        })
        .join(", ");
    let paths = format!(
        "          path: |\n            ~/.cargo/registry/index/\n            ~/.cargo/registry/cache/\n            {xtask}/target\n"
    );
    let working_directory = match dir {
        Some(dir) => format!("        working-directory: {}\n", serde_json::Value::String(dir.to_owned())),
        None => String::new(),
    };
    format!(
        "# Written by `cargo kiln init`: deletes the Actions caches kiln's action saved that no run\n\
         # will restore. When a pull request closes, its caches go at once; daily, those of every\n\
         # closed pull request go, and of the rest all but the newest per branch and key family\n\
         # (`cargo xtask ci prune-caches --help`; pass `--prefix` if the action's `cache-prefix` is\n\
         # not `kiln`). A pull request from a fork gets a read-only token: the daily run removes its\n\
         # caches. The xtask is built with kiln's `github` feature, and its build is cached.\n\
         name: kiln-prune\n\
         on:\n  schedule:\n    - cron: \"23 3 * * *\"\n  pull_request:\n    types: [closed]\n  workflow_dispatch:\n\
         permissions: {{}}\n\
         concurrency:\n  group: kiln-prune-${{{{ github.event.pull_request.number || 'daily' }}}}\n  cancel-in-progress: false\n\
         jobs:\n  prune:\n    name: prune kiln caches\n\
         \x20   if: github.event_name != 'pull_request' || github.event.pull_request.head.repo.full_name == github.repository\n\
         \x20   runs-on: ubuntu-latest\n    timeout-minutes: 30\n\
         \x20   permissions:\n\
         \x20     actions: write # list and delete the repository's Actions caches\n\
         \x20     contents: read # check out the repository's xtask\n\
         \x20     pull-requests: read # ask whether a pull request is closed (needed in a private repository)\n\
         \x20   steps:\n\
         \x20     - uses: {CHECKOUT}\n        with:\n          persist-credentials: false\n\
         \x20     - name: Restore the xtask's build\n        id: tool\n        uses: {CACHE_RESTORE}\n        with:\n\
         {paths}\
         \x20         key: kiln-prune-tool-${{{{ runner.os }}}}-${{{{ hashFiles({key}) }}}}\n\
         \x20     - name: Build the xtask with kiln's github feature (no token in sight)\n\
         {working_directory}\
         \x20       env:\n\
         \x20         KILN_TOOL_FEATURES: github\n\
         \x20       run: cargo xtask --version\n\
         \x20     - name: Delete the kiln caches that no run will restore\n\
         {working_directory}\
         \x20       env:\n\
         \x20         GITHUB_TOKEN: ${{{{ github.token }}}}\n\
         \x20         KILN_TOOL_FEATURES: github\n\
         \x20         PULL_REQUEST: ${{{{ github.event.pull_request.number }}}}\n\
         \x20       run: cargo xtask ci prune-caches ${{PULL_REQUEST:+--pr \"$PULL_REQUEST\"}}\n\
         \x20     - name: Save the xtask's build\n\
         \x20       if: github.event_name != 'pull_request' && steps.tool.outputs.cache-hit != 'true'\n\
         \x20       uses: {CACHE_SAVE}\n        with:\n\
         {paths}\
         \x20         key: ${{{{ steps.tool.outputs.cache-primary-key }}}}\n"
    )
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

    #[test]
    fn the_prune_workflow_runs_on_close_and_daily_with_the_pull_request_from_the_environment() {
        let text = super::prune_text(None);
        for part in [
            "  pull_request:\n    types: [closed]\n",
            "  schedule:\n",
            "permissions: {}\n",
            "      actions: write",
            "persist-credentials: false",
            "KILN_TOOL_FEATURES: github",
            "run: cargo xtask ci prune-caches ${PULL_REQUEST:+--pr \"$PULL_REQUEST\"}\n",
            "hashFiles('xtask/**/Cargo.lock', 'xtask/**/Cargo.toml', 'xtask/**/*.rs', \
             'xtask/tool/rust-toolchain.toml', '!xtask/target/**')",
        ] {
            assert!(text.contains(part), "`{part}` missing from:\n{text}");
        }
        for run in text.lines().filter(|line| line.contains("run:")) {
            assert!(!run.contains("${{"), "no expression inside the script: {run}");
        }
        let build = text.find("run: cargo xtask --version").expect("a build step");
        let token = text.find("GITHUB_TOKEN").expect("the token");
        assert!(build < token, "the xtask is built before the token is given to a step:\n{text}");
        assert_eq!(text.matches("KILN_TOOL_FEATURES: github").count(), 2, "built and run with one feature set");
        assert!(!text.contains("working-directory"));
        let below = super::prune_text(Some("os's kernel"));
        assert_eq!(below.matches("        working-directory: \"os's kernel\"\n").count(), 2, "{below}");
        assert!(below.contains("hashFiles('os''s kernel/xtask/**/Cargo.lock'"), "{below}");
        assert!(below.contains("'!os''s kernel/xtask/target/**'"), "{below}");
        assert!(below.contains("            os's kernel/xtask/target\n"), "{below}");
    }
}
