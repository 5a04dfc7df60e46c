//! Declared command steps (`[step.NAME]`) as derivations: the closure (command, environment,
//! working directory, outputs, the program's own bytes and every input's content), the run
//! that fills the entry with the outputs, and putting a stored entry's outputs back in the
//! working tree.

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, bail};
use kiln_store::{ClosureHash, Derivation, InputHash, SourceSet, StatCache, hash_file, hash_source_set};

use crate::config::{CommandStep, StepCommand, expand_step_input};

/// Bumped whenever the way kiln runs steps or stores their outputs changes.
const BUILDER_VERSION: &str = "kiln-command-step-1";

/// How many lines of a failed command's output its error quotes.
const QUOTED_LINES: usize = 20;

/// Fields of a setting joined with the unit separator, which no argument contains by accident.
const SEPARATOR: &str = "\u{1f}";

/// The program a step runs: `sh` for a script, else the command's first word, found on `PATH`
/// (a name with a `/` is relative to the step's working directory).
fn program(step: &CommandStep, root: &Path) -> anyhow::Result<PathBuf> {
    let name = match &step.command {
        StepCommand::Script(_) => "sh",
        StepCommand::Argv(argv) => argv.first().map_or("", String::as_str),
    };
    let found = if name.contains('/') {
        let path = root.join(&step.cwd).join(name);
        path.is_file().then_some(path)
    } else {
        kiln_types::find_program(name)
    };
    found.with_context(|| {
        format!(
            "step `{}` ({}) runs `{name}`, which is not on PATH; install it, or fix `step.{}.command`",
            step.name, step.declared_at, step.name
        )
    })
}

/// The derivation of `step`. `needs` holds the closures of the steps it runs after, which
/// stand for their outputs (an input inside one of them is not hashed again).
pub(crate) fn derivation(
    step: &CommandStep,
    root: &Path,
    needs: &BTreeMap<String, (ClosureHash, Vec<PathBuf>)>,
    stat_cache: &StatCache,
) -> anyhow::Result<Derivation> {
    let mut drv = Derivation::new("command-step");
    let command = match &step.command {
        StepCommand::Argv(argv) => format!("argv:{}", argv.join(SEPARATOR)),
        StepCommand::Script(script) => format!("script:{script}"),
    };
    drv.setting("builder", BUILDER_VERSION)
        .setting("command", command)
        .setting("cwd", step.cwd.display().to_string())
        .setting("outputs", step.outputs.iter().map(|o| o.display().to_string()).collect::<Vec<_>>().join(SEPARATOR));
    for (name, value) in &step.env {
        drv.setting(format!("env:{name}"), value);
    }
    let program = program(step, root)?;
    let program_hash = hash_file(&program).with_context(|| format!("cannot read `{}`", program.display()))?;
    // Named as written (`cp`, `sh`), so hosts that keep it in another directory agree.
    let written = match &step.command {
        StepCommand::Script(_) => "sh",
        StepCommand::Argv(argv) => argv.first().map_or("", String::as_str),
    };
    drv.input(format!("tool:{written}"), InputHash(*program_hash.as_bytes()));
    let mut made_first: Vec<PathBuf> = step.outputs.clone();
    for needed in &step.needs {
        let (closure, outputs) = needs
            .get(needed)
            .with_context(|| format!("step `{}` runs after `{needed}`, which has not run", step.name))?;
        drv.input(format!("step:{needed}"), InputHash::of_closure(*closure));
        made_first.extend(outputs.iter().cloned());
    }
    for input in &step.inputs {
        let files = expand_step_input(root, input, &made_first)
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("step `{}` ({}): cannot list input `{input}`", step.name, step.declared_at))?;
        let produced_first = files.is_empty() && made_first.iter().any(|o| Path::new(input).starts_with(o));
        if files.is_empty() && !produced_first {
            bail!(
                "step `{}` ({}): input `{input}` names no file; fix `step.{}.inputs`",
                step.name,
                step.declared_at,
                step.name
            );
        }
        let set = SourceSet { base: root.to_owned(), files };
        drv.input(format!("input:{input}"), hash_source_set(&set, stat_cache)?);
    }
    Ok(drv)
}

/// The derivation of a step that makes an artifact's boot image: the step's own, with the
/// arch and the closure of the artifact's build (which stands for its binary) added.
pub(crate) fn image_derivation(
    step: &CommandStep,
    root: &Path,
    needs: &BTreeMap<String, (ClosureHash, Vec<PathBuf>)>,
    built: (&str, ClosureHash),
    arch: kiln_types::Arch,
    stat_cache: &StatCache,
) -> anyhow::Result<Derivation> {
    let mut drv = derivation(step, root, needs, stat_cache)?;
    drv.setting("arch", arch.as_str());
    drv.input(format!("artifact:{}", built.0), InputHash::of_closure(built.1));
    Ok(drv)
}

/// What `{artifact:NAME}` and `{arch}` in a step's command stand for in one run.
pub(crate) type Substitutions = Vec<(String, String)>;

/// Runs `step` in the working tree and copies its outputs into `out` (the new entry).
pub(crate) fn run(step: &CommandStep, root: &Path, out: &Path) -> anyhow::Result<()> {
    run_with(step, root, out, &Vec::new())
}

/// [`run`], with `{NAME}` placeholders in the command (each argument, or the script) replaced.
pub(crate) fn run_with(
    step: &CommandStep,
    root: &Path,
    out: &Path,
    substitutions: &Substitutions,
) -> anyhow::Result<()> {
    let substitute = |text: &str| {
        substitutions.iter().fold(text.to_owned(), |text, (name, value)| text.replace(&format!("{{{name}}}"), value))
    };
    let program = program(step, root)?;
    // kiln's one constructor of project commands: secrets withheld, and what `cargo xtask`
    // set for kiln itself removed, so a step's `cargo` or `rustc` uses the project's toolchain.
    let mut command = super::tool_command(&program.display().to_string(), &root.join(&step.cwd));
    let shown = match &step.command {
        StepCommand::Argv(argv) => {
            command.args(argv[1..].iter().map(|arg| substitute(arg)));
            argv.join(" ")
        }
        StepCommand::Script(script) => {
            command.args(["-eu", "-c", &substitute(script)]);
            "its script".to_owned()
        }
    };
    command.envs(&step.env).stdin(Stdio::null());
    let (mut reader, writer) = std::io::pipe().context("cannot make a pipe for the step's output")?;
    command.stdout(writer.try_clone().context("cannot share the step's output pipe")?).stderr(writer);
    let mut child =
        command.spawn().with_context(|| format!("cannot run `{}` for step `{}`", program.display(), step.name))?;
    // The command holds the pipe's write ends: drop it so the read ends when the child does.
    drop(command);
    let mut output = Vec::new();
    reader.read_to_end(&mut output).context("cannot read the step's output")?;
    let status = child.wait().context("cannot wait for the step's command")?;
    if !status.success() {
        let text = String::from_utf8_lossy(&output);
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(QUOTED_LINES)..];
        let quoted = if tail.is_empty() {
            "it printed nothing".to_owned()
        } else {
            format!(
                "its last lines of output:\n{}",
                tail.iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
            )
        };
        bail!("step `{}` ({}): `{shown}` failed with {status}; {quoted}", step.name, step.declared_at);
    }
    for output in &step.outputs {
        let made = root.join(output);
        if !made.exists() {
            bail!(
                "step `{}` ({}) did not produce `{}`, which `step.{}.outputs` names; make the command write it, or fix `outputs`",
                step.name,
                step.declared_at,
                output.display(),
                step.name
            );
        }
        copy_into(&made, &out.join(output)).with_context(|| format!("cannot store step `{}`'s output", step.name))?;
    }
    Ok(())
}

/// Copies a file or directory tree (following symlinks) to `to`, making its parents.
fn copy_into(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("cannot create `{}`", to.display()))?;
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .with_context(|| format!("cannot list `{}`", from.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            copy_into(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(());
    }
    std::fs::copy(from, to).with_context(|| format!("cannot copy `{}` to `{}`", from.display(), to.display()))?;
    Ok(())
}

/// Puts the outputs stored in `entry_out` in place in the working tree, rewriting only files
/// whose content differs (so cargo's mtimes stay put), each through a temporary file and a
/// rename (no partial file is ever seen).
pub(crate) fn place_outputs(step: &CommandStep, root: &Path, entry_out: &Path) -> anyhow::Result<()> {
    for output in &step.outputs {
        place(&entry_out.join(output), &root.join(output))
            .with_context(|| format!("cannot put step `{}`'s output `{}` in place", step.name, output.display()))?;
    }
    Ok(())
}

fn place(stored: &Path, dest: &Path) -> anyhow::Result<()> {
    if stored.is_dir() {
        if dest.exists() && !dest.is_dir() {
            bail!("`{}` is a file where the step made a directory; remove it", dest.display());
        }
        std::fs::create_dir_all(dest).with_context(|| format!("cannot create `{}`", dest.display()))?;
        for entry in std::fs::read_dir(stored).with_context(|| format!("cannot list `{}`", stored.display()))? {
            let entry = entry?;
            place(&entry.path(), &dest.join(entry.file_name()))?;
        }
        return Ok(());
    }
    if dest.is_dir() {
        bail!("`{}` is a directory where the step made a file; remove it", dest.display());
    }
    let mode = std::fs::metadata(stored)
        .with_context(|| format!("cannot inspect `{}`", stored.display()))?
        .permissions()
        .mode();
    let wanted_mode = (mode & 0o7777) | 0o200;
    if dest.is_file() && same_content(stored, dest)? {
        let current = std::fs::metadata(dest)?.permissions().mode() & 0o7777;
        if current & 0o111 == wanted_mode & 0o111 {
            return Ok(());
        }
    }
    let parent = dest.parent().context("an output has no parent directory")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(".kiln-step-")
        .tempfile_in(parent)
        .with_context(|| format!("cannot write in `{}`", parent.display()))?;
    std::fs::copy(stored, temp.path()).with_context(|| format!("cannot copy `{}`", stored.display()))?;
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(wanted_mode))?;
    temp.as_file().sync_all()?;
    temp.persist(dest).with_context(|| format!("cannot rename into `{}`", dest.display()))?;
    Ok(())
}

/// Whether two files hold the same bytes (sizes first, then BLAKE3).
fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    if std::fs::metadata(a)?.len() != std::fs::metadata(b)?.len() {
        return Ok(false);
    }
    Ok(hash_file(a)? == hash_file(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(command: StepCommand) -> CommandStep {
        CommandStep {
            name: "linker-script".into(),
            command,
            inputs: vec!["src/linker-qemu.ld".into()],
            outputs: vec![PathBuf::from("src/linker.ld")],
            env: BTreeMap::new(),
            cwd: PathBuf::new(),
            needs: Vec::new(),
            artifacts: Vec::new(),
            declared_at: "Kiln.toml:3".into(),
        }
    }

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("src/linker-qemu.ld"), "BASE_ADDRESS = 0x80200000;\n").expect("write");
        dir
    }

    fn copy_step() -> CommandStep {
        step(StepCommand::Argv(vec!["cp".into(), "src/linker-qemu.ld".into(), "src/linker.ld".into()]))
    }

    #[test]
    fn the_closure_follows_inputs_command_and_env_but_not_the_output() {
        let dir = project();
        let cache = StatCache::load(dir.path().join("stat-cache"));
        let closure = |step: &CommandStep| {
            derivation(step, dir.path(), &BTreeMap::new(), &cache).expect("derivation").closure_hash()
        };
        let first = closure(&copy_step());
        std::fs::write(dir.path().join("src/linker.ld"), "stale").expect("write");
        assert_eq!(closure(&copy_step()), first, "the output is not an input");
        let mut with_env = copy_step();
        with_env.env.insert("BOARD".into(), "k210".into());
        assert_ne!(closure(&with_env), first);
        std::fs::write(dir.path().join("src/linker-qemu.ld"), "BASE_ADDRESS = 0x80400000;\n").expect("write");
        assert_ne!(closure(&copy_step()), first, "an edited input is a new closure");
    }

    #[test]
    fn a_run_stores_the_outputs_and_placing_them_rewrites_only_what_differs() {
        let dir = project();
        let out = dir.path().join("entry-out");
        std::fs::create_dir(&out).expect("mkdir");
        run(&copy_step(), dir.path(), &out).expect("cp runs");
        assert_eq!(std::fs::read(out.join("src/linker.ld")).expect("stored"), b"BASE_ADDRESS = 0x80200000;\n");
        let dest = dir.path().join("src/linker.ld");
        let before = std::fs::metadata(&dest).expect("made").modified().expect("mtime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        place_outputs(&copy_step(), dir.path(), &out).expect("in place");
        assert_eq!(std::fs::metadata(&dest).expect("kept").modified().expect("mtime"), before, "same bytes: untouched");
        std::fs::write(&dest, "edited by hand").expect("write");
        place_outputs(&copy_step(), dir.path(), &out).expect("in place");
        assert_eq!(std::fs::read(&dest).expect("restored"), b"BASE_ADDRESS = 0x80200000;\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("src"))
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".kiln-step-"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left");
    }

    #[test]
    fn a_failing_command_names_the_step_its_status_and_last_lines() {
        let dir = project();
        let failing =
            step(StepCommand::Script("echo making the linker script\necho 'no board k210' >&2\nexit 3".into()));
        let err = run(&failing, dir.path(), dir.path()).expect_err("exit 3");
        let text = format!("{err:#}");
        assert!(
            text.starts_with("step `linker-script` (Kiln.toml:3): `its script` failed with exit status: 3"),
            "{text}"
        );
        assert!(text.contains("    making the linker script\n    no board k210"), "{text}");
    }

    #[test]
    fn an_output_the_command_did_not_make_is_named() {
        let dir = project();
        let lazy = step(StepCommand::Argv(vec!["true".into()]));
        let err = run(&lazy, dir.path(), dir.path()).expect_err("no output");
        assert!(
            format!("{err:#}").contains("step `linker-script` (Kiln.toml:3) did not produce `src/linker.ld`"),
            "{err:#}"
        );
    }
}
