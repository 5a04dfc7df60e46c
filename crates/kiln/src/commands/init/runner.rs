//! `cargo kiln init --runner`: makes kiln cargo's target runner for a crate that is not a
//! kernel project. It adds `runner = "kiln run --"` for the Linux targets kiln has built-in
//! guests for to the crate's `.cargo/config.toml` (and `linker = "rust-lld"` for a target of
//! another architecture that names no linker, so the test binaries link without a cross
//! toolchain), keeping every line already there. No xtask, no Kiln.toml, no workspace change.

use std::path::Path;

use anyhow::{Context as _, bail};
use kiln_types::Arch;

use super::{Change, apply};
use crate::{config::BUILTIN_ARCHES, exit_code, report::Printer};

/// The runner line: the `kiln` binary `cargo install cargo-kiln` puts on `PATH`.
pub(super) const RUNNER: &str = "kiln run --";

/// The program the runner line names.
const RUNNER_PROGRAM: &str = "kiln";

/// The Linux target kiln runs programs of `arch` for (static: the built-in guests have no C
/// library).
fn target_of(arch: Arch) -> String {
    format!("{}-unknown-linux-musl", arch.as_str())
}

/// What `--runner` did to the config text.
#[derive(Debug, Default, PartialEq, Eq)]
struct RunnerEdit {
    /// The new text, when anything changed.
    text: Option<String>,
    /// Targets that got a runner (and a linker, when said).
    added: Vec<String>,
    /// Targets whose runner is someone else's, left alone: (target, their runner).
    kept: Vec<(String, String)>,
}

/// Adds kiln's runner to `text` (a `.cargo/config.toml`, or none) for each built-in arch.
/// `host` is the arch test binaries would run natively on (no linker is added for it).
fn add_runners(text: Option<&str>, host: Option<Arch>, path: &Path) -> anyhow::Result<RunnerEdit> {
    let text_was_empty = text.is_none_or(|text| text.trim().is_empty());
    let mut doc = match text {
        Some(text) => {
            text.parse::<toml_edit::DocumentMut>().with_context(|| format!("cannot parse `{}`", path.display()))?
        }
        None => toml_edit::DocumentMut::new(),
    };
    let targets = doc.entry("target").or_insert_with(|| {
        let mut table = toml_edit::Table::new();
        table.set_implicit(true);
        toml_edit::Item::Table(table)
    });
    let Some(targets) = targets.as_table_like_mut() else {
        bail!("`target` in `{}` is not a table; add `[target.TRIPLE] runner = \"{RUNNER}\"` by hand", path.display());
    };
    let mut edit = RunnerEdit::default();
    for arch in BUILTIN_ARCHES {
        let triple = target_of(arch);
        let fresh = !targets.contains_key(&triple);
        let table = targets.entry(&triple).or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.decor_mut().set_prefix(format!(
                "\n# kiln runs this target's programs (test binaries, doctests) in an {arch} Linux VM\n"
            ));
            toml_edit::Item::Table(table)
        });
        let Some(table) = table.as_table_like_mut() else {
            bail!(
                "`target.{triple}` in `{}` is not a table; add `runner = \"{RUNNER}\"` to it by hand",
                path.display()
            );
        };
        match table.get("runner") {
            Some(existing) if is_kiln_runner(existing) => continue,
            Some(existing) => {
                let shown = existing.as_value().map_or_else(|| existing.to_string(), |v| v.to_string());
                edit.kept.push((triple, shown.trim().to_owned()));
                continue;
            }
            None => {}
        }
        table.insert("runner", toml_edit::value(RUNNER));
        let mut said = triple.clone();
        if Some(arch) != host && !table.contains_key("linker") {
            // rust-lld ships with rustup's toolchains and links static musl programs alone.
            table.insert("linker", toml_edit::value("rust-lld"));
            said.push_str(" (with linker rust-lld)");
        }
        if fresh {
            said.push_str(", a new table");
        }
        edit.added.push(said);
    }
    if !edit.added.is_empty() {
        let text = doc.to_string();
        // A new file starts with its first comment, not with the blank line between tables.
        edit.text = Some(if text_was_empty { text.trim_start().to_owned() } else { text });
    }
    Ok(edit)
}

/// Whether a `runner` value already runs kiln's `run` (string or array form).
fn is_kiln_runner(item: &toml_edit::Item) -> bool {
    let words: Vec<String> = match item.as_value() {
        Some(toml_edit::Value::String(text)) => text.value().split_whitespace().map(str::to_owned).collect(),
        Some(toml_edit::Value::Array(array)) => array.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => return false,
    };
    let program = words.first().map(|word| Path::new(word).file_name().and_then(|n| n.to_str()).unwrap_or_default());
    (matches!(program, Some("kiln" | "cargo-kiln")) && words.iter().any(|word| word == "run"))
        || words.iter().take(3).map(String::as_str).eq(["cargo", "xtask", "run"])
}

/// The arch kiln itself was built for: its programs need no cross linker.
fn host_arch() -> Option<Arch> {
    std::env::consts::ARCH.parse().ok()
}

/// Runs `init --runner` in `root` (a directory with a Cargo.toml).
pub(super) fn run(root: &Path, dry_run: bool, printer: &Printer) -> anyhow::Result<u8> {
    let path = root.join(".cargo/config.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if root.join(".cargo/config").exists() {
                bail!(
                    "`{}` uses the old name `.cargo/config`: rename it to `.cargo/config.toml` (cargo reads both) \
                     and run init again",
                    root.display()
                );
            }
            None
        }
        Err(err) => return Err(err).with_context(|| format!("cannot read `{}`", path.display())),
    };
    let edit = add_runners(text.as_deref(), host_arch(), &path)?;
    for (target, runner) in &edit.kept {
        printer.warn(&format!(
            "`target.{target}.runner` is already {runner} in {}; init leaves it (kiln's is `runner = \"{RUNNER}\"`)",
            path.display()
        ));
    }
    let Some(new_text) = edit.text else {
        printer.status("Unchanged", &format!("{} already runs kiln for its Linux targets", path.display()));
        return Ok(exit_code::SUCCESS);
    };
    let what = format!("kiln as the runner of {}", edit.added.join("; "));
    let change = match text {
        Some(_) => Change::Edit { path, text: new_text, what },
        None => Change::Create { path, text: new_text },
    };
    apply(&change, root, dry_run, printer)?;
    if crate::host::find_program(RUNNER_PROGRAM).is_none() {
        printer.warn(&format!(
            "`{RUNNER_PROGRAM}` is not on PATH, so cargo will not find the runner: `cargo install cargo-kiln` \
             installs it (beside `cargo-kiln`)"
        ));
    }
    if !dry_run {
        let target = target_of(Arch::Aarch64);
        printer.always(&format!(
            "next: `rustup target add {target}`, then `cargo test --target {target}` runs the tests in an aarch64 VM \
             (kiln's built-in guest is fetched once, into ~/.cache/kiln/runner)"
        ));
    }
    Ok(exit_code::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXISTING: &str = r#"# The team's settings.
[build]
rustflags = ["-D", "warnings"] # keep it clean

[alias]
t = "test --target aarch64-unknown-linux-musl"

[target.aarch64-unknown-linux-musl]
# The CI image has the GNU cross linker.
linker = "aarch64-linux-gnu-gcc"
"#;

    fn edit(text: Option<&str>) -> RunnerEdit {
        add_runners(text, Some(Arch::X86_64), Path::new(".cargo/config.toml")).expect("edit")
    }

    #[test]
    fn runners_merge_into_an_existing_config_and_keep_everything_there() {
        let done = edit(Some(EXISTING));
        let text = done.text.expect("changed");
        assert!(text.starts_with(EXISTING.trim_end()), "every line kept, in order, comments included:\n{text}");
        let parsed: toml::Table = text.parse().expect("valid TOML");
        let target = |triple: &str, key: &str| {
            parsed["target"][triple].get(key).and_then(toml::Value::as_str).map(str::to_owned)
        };
        assert_eq!(target("aarch64-unknown-linux-musl", "runner").as_deref(), Some(RUNNER));
        assert_eq!(target("aarch64-unknown-linux-musl", "linker").as_deref(), Some("aarch64-linux-gnu-gcc"));
        assert_eq!(target("x86_64-unknown-linux-musl", "runner").as_deref(), Some(RUNNER));
        assert_eq!(target("x86_64-unknown-linux-musl", "linker"), None, "the host's own arch links natively");
        assert_eq!(parsed["build"]["rustflags"].as_array().map(Vec::len), Some(2));
        assert_eq!(done.added.len(), 2);

        // Running it again changes nothing.
        assert_eq!(edit(Some(&text)), RunnerEdit::default());
    }

    #[test]
    fn a_new_config_names_the_runner_and_a_cross_linker() {
        let text = edit(None).text.expect("created");
        let parsed: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(parsed["target"]["aarch64-unknown-linux-musl"]["runner"].as_str(), Some(RUNNER));
        assert_eq!(parsed["target"]["aarch64-unknown-linux-musl"]["linker"].as_str(), Some("rust-lld"));
        assert!(text.starts_with("# kiln runs this target's programs"), "{text}");
        assert!(!text.contains("[target]\n"), "`target` stays implicit: {text}");
    }

    #[test]
    fn another_runner_is_left_alone_and_kilns_own_forms_count_as_done() {
        let theirs = "[target.aarch64-unknown-linux-musl]\nrunner = \"qemu-aarch64\"\n";
        let done = edit(Some(theirs));
        assert_eq!(done.kept, [("aarch64-unknown-linux-musl".to_owned(), "\"qemu-aarch64\"".to_owned())]);
        let text = done.text.expect("x86_64 still gets one");
        assert!(text.contains("runner = \"qemu-aarch64\""), "{text}");

        for ours in [
            "runner = [\"cargo\", \"xtask\", \"run\", \"--\"]",
            "runner = \"/home/me/.cargo/bin/kiln --accel tcg run --\"",
        ] {
            let text =
                format!("[target.aarch64-unknown-linux-musl]\n{ours}\n\n[target.x86_64-unknown-linux-musl]\n{ours}\n");
            assert_eq!(edit(Some(&text)), RunnerEdit::default(), "{ours}");
        }
    }

    #[test]
    fn a_target_key_that_is_not_a_table_is_an_error_naming_the_file() {
        let err = edit_err("target = \"aarch64-unknown-linux-musl\"\n");
        assert!(err.contains("`target` in `.cargo/config.toml` is not a table"), "{err}");
        let err = edit_err("[target]\naarch64-unknown-linux-musl = 3\n");
        assert!(err.contains("`target.aarch64-unknown-linux-musl` in `.cargo/config.toml` is not a table"), "{err}");
        assert!(edit_err("[target\n").contains("cannot parse `.cargo/config.toml`"));
    }

    fn edit_err(text: &str) -> String {
        let err = add_runners(Some(text), Some(Arch::X86_64), Path::new(".cargo/config.toml")).expect_err("refused");
        format!("{err:#}")
    }
}
