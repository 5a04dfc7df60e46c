//! `[step.NAME]`: a declared command (a linker-script copy, an image tool) whose inputs,
//! outputs and command are hashed and cached like a build, and which runs before the
//! artifacts that name it in their `steps`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
};

use toml::Spanned;

use super::{
    ConfigError,
    diagnostic::closest,
    raw::RawStep,
    resolve::Resolver,
    spans::key_span,
    step_inputs::{expand, is_glob},
};

/// How an input names an artifact's built binary: `artifact:NAME`.
pub(crate) const ARTIFACT_INPUT: &str = "artifact:";

/// What a step runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StepCommand {
    /// A program and its arguments, run without a shell.
    Argv(Vec<String>),
    /// A script run by `sh -eu -c`.
    Script(String),
}

/// A declared command step, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CommandStep {
    /// Its name in Kiln.toml.
    pub name: String,
    /// What it runs.
    pub command: StepCommand,
    /// Files, directories and globs it reads, relative to the project root, as written.
    pub inputs: Vec<String>,
    /// Files or directories it must produce, relative to the project root.
    pub outputs: Vec<PathBuf>,
    /// Variables set for the command.
    pub env: BTreeMap<String, String>,
    /// Its working directory, relative to the project root (empty: the root).
    pub cwd: PathBuf,
    /// The steps it runs after (their closures are part of its own).
    pub needs: Vec<String>,
    /// The artifacts whose built binary it reads (`artifact:NAME` inputs): it runs after their
    /// build, once per arch, with `{artifact:NAME}` in its command replaced by the binary's path.
    pub artifacts: Vec<String>,
    /// Where it is declared (`Kiln.toml:12`), for errors found while it runs.
    pub declared_at: String,
}

impl CommandStep {
    /// The name the store records its entry under: `step-NAME`.
    pub(crate) fn store_name(&self) -> String {
        format!("step-{}", self.name)
    }

    /// Whether `relative` (a path relative to the project root) is one of its outputs or
    /// inside one.
    pub(crate) fn produces(&self, relative: &Path) -> bool {
        self.outputs.iter().any(|output| relative.starts_with(output))
    }
}

/// A relative path with `.` removed, or `None` when it is absolute or climbs out with `..`.
fn inside_project(text: &str) -> Option<PathBuf> {
    let path = Path::new(text);
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

impl Resolver<'_> {
    /// Resolves every `[step.NAME]` table, checks that the steps they name exist and form no
    /// cycle, and that every input exists (or is made by a step that runs first).
    pub(super) fn steps(&self, raw: BTreeMap<String, RawStep>) -> Result<BTreeMap<String, CommandStep>, ConfigError> {
        let mut steps = BTreeMap::new();
        let mut needs_spans = BTreeMap::new();
        for (name, step) in raw {
            let spans: Vec<Spanned<String>> = step.steps.clone();
            let resolved = self.step(&name, step)?;
            needs_spans.insert(name.clone(), spans);
            steps.insert(name, resolved);
        }
        for (name, needs) in &needs_spans {
            for needed in needs {
                self.known_step(needed, &steps, format!("step.{name}.steps"))?;
            }
        }
        for name in steps.keys() {
            self.check_no_cycle(name, &steps)?;
        }
        for step in steps.values() {
            self.check_inputs_exist(step, &steps)?;
        }
        Ok(steps)
    }

    fn step(&self, name: &str, raw: RawStep) -> Result<CommandStep, ConfigError> {
        let key = |k: &str| format!("step.{name}.{k}");
        let command = match (raw.command, raw.script) {
            (Some(argv), None) if argv.get_ref().is_empty() || argv.get_ref()[0].is_empty() => {
                return Err(self
                    .error(Some(argv.span()), key("command"), "`command` names no program")
                    .with_help("write the program and its arguments, such as [\"cp\", \"src/a.ld\", \"src/b.ld\"]"));
            }
            (Some(argv), None) => StepCommand::Argv(argv.into_inner()),
            (None, Some(script)) if script.get_ref().trim().is_empty() => {
                return Err(self
                    .error(Some(script.span()), key("script"), "`script` is empty")
                    .with_help("write the shell commands the step runs (`sh -eu` runs them)"));
            }
            (None, Some(script)) => StepCommand::Script(script.into_inner()),
            (Some(_), Some(script)) => {
                return Err(self
                    .error(Some(script.span()), key("script"), "a step has either `command` or `script`, not both")
                    .with_help(
                        "keep `command` (a program and its arguments, no shell) or `script` (run by `sh -eu`)",
                    ));
            }
            (None, None) => {
                return Err(self
                    .error(None, format!("step.{name}"), format!("step `{name}` has no `command` or `script`"))
                    .with_help("add `command = [\"PROGRAM\", \"ARG\", ...]` or `script = \"...\"` (run by `sh -eu`)"));
            }
        };
        if raw.outputs.is_empty() {
            return Err(self
                .error(None, format!("step.{name}"), format!("step `{name}` declares no `outputs`"))
                .with_help("list the files or directories the command makes (`outputs = [\"src/linker.ld\"]`): kiln stores them and puts them back on a cache hit"));
        }
        let mut outputs = Vec::new();
        for output in &raw.outputs {
            let Some(path) = inside_project(output.get_ref()) else {
                return Err(self
                    .error(
                        Some(output.span()),
                        key("outputs"),
                        format!("output `{}` is not a path inside the project", output.get_ref()),
                    )
                    .with_help("outputs are relative to Kiln.toml's directory, without `..` and not absolute"));
            };
            if path.starts_with("target/kiln") {
                return Err(self
                    .error(
                        Some(output.span()),
                        key("outputs"),
                        format!("output `{}` is kiln's own directory", output.get_ref()),
                    )
                    .with_help("write the step's outputs elsewhere in the project"));
            }
            outputs.push(path);
        }
        let cwd = match &raw.cwd {
            None => PathBuf::new(),
            Some(cwd) if cwd.get_ref() == "." || cwd.get_ref().is_empty() => PathBuf::new(),
            Some(cwd) => {
                let Some(path) = inside_project(cwd.get_ref()) else {
                    return Err(self
                        .error(
                            Some(cwd.span()),
                            key("cwd"),
                            format!("`{}` is not a directory inside the project", cwd.get_ref()),
                        )
                        .with_help("`cwd` is relative to Kiln.toml's directory, without `..` and not absolute"));
                };
                if !self.root.join(&path).is_dir() {
                    return Err(self
                        .error(
                            Some(cwd.span()),
                            key("cwd"),
                            format!("no directory `{}`", self.root.join(&path).display()),
                        )
                        .with_help("set `cwd` to an existing directory, relative to Kiln.toml"));
                }
                path
            }
        };
        for input in &raw.inputs {
            if input.get_ref().trim().is_empty() {
                return Err(self
                    .error(Some(input.span()), key("inputs"), "an empty input")
                    .with_help("name a file, a directory or a glob, relative to Kiln.toml"));
            }
        }
        let declared_at = match key_span(&self.source.text, &["step".to_owned(), name.to_owned()]) {
            Some(span) => format!("{}:{}", self.source.path.display(), self.source.line_col(span.start).0),
            None => self.source.path.display().to_string(),
        };
        let (artifacts, inputs): (Vec<String>, Vec<String>) =
            raw.inputs.into_iter().map(Spanned::into_inner).partition(|input| input.starts_with(ARTIFACT_INPUT));
        let artifacts = artifacts.into_iter().map(|a| a[ARTIFACT_INPUT.len()..].to_owned()).collect();
        Ok(CommandStep {
            name: name.to_owned(),
            command,
            artifacts,
            inputs,
            outputs,
            env: raw.env,
            cwd,
            needs: raw.steps.into_iter().map(Spanned::into_inner).collect(),
            declared_at,
        })
    }

    /// An error at `key` when `name` is no `[step.NAME]`, with the closest one.
    pub(super) fn known_step(
        &self,
        name: &Spanned<String>,
        steps: &BTreeMap<String, CommandStep>,
        key: String,
    ) -> Result<(), ConfigError> {
        if steps.contains_key(name.get_ref()) {
            return Ok(());
        }
        let err = self.error(Some(name.span()), key, format!("no step named `{}`", name.get_ref()));
        Err(match closest(name.get_ref(), steps.keys().map(String::as_str)) {
            Some(near) => err.with_help(format!("a step with a similar name exists: `{near}`")),
            None if steps.is_empty() => err
                .with_help(format!("declare it as `[step.{}]` with `command`, `inputs` and `outputs`", name.get_ref())),
            None => err.with_help(format!("steps: {}", steps.keys().cloned().collect::<Vec<_>>().join(", "))),
        })
    }

    /// An error naming the circle when `start` reaches itself through `steps`.
    fn check_no_cycle(&self, start: &str, steps: &BTreeMap<String, CommandStep>) -> Result<(), ConfigError> {
        fn walk<'a>(
            at: &'a str,
            start: &str,
            steps: &'a BTreeMap<String, CommandStep>,
            path: &mut Vec<&'a str>,
            seen: &mut BTreeSet<&'a str>,
        ) -> bool {
            let Some(step) = steps.get(at) else { return false };
            for next in &step.needs {
                path.push(next);
                if next == start || (seen.insert(next) && walk(next, start, steps, path, seen)) {
                    return true;
                }
                path.pop();
            }
            false
        }
        let mut path = vec![start];
        if walk(start, start, steps, &mut path, &mut BTreeSet::new()) {
            return Err(self
                .error(None, format!("step.{start}.steps"), format!("the steps form a circle: {}", path.join(" -> ")))
                .with_help("a step cannot run after itself: remove one of these names from `steps`"));
        }
        Ok(())
    }

    /// Every input of `step` exists, or lies in an output of a step it runs after.
    fn check_inputs_exist(&self, step: &CommandStep, steps: &BTreeMap<String, CommandStep>) -> Result<(), ConfigError> {
        let before = run_order(std::slice::from_ref(&step.name), steps);
        let written = self.written_inputs(&step.name);
        for (index, input) in written.iter().enumerate() {
            if input.starts_with(ARTIFACT_INPUT) {
                continue;
            }
            let key = format!("step.{}.inputs", step.name);
            let made_first = inside_project(input)
                .is_some_and(|path| before.iter().any(|b| b.name != step.name && b.produces(&path)));
            if made_first {
                continue;
            }
            let span = || self.input_span(&step.name, index);
            if is_glob(input) {
                let found = expand(self.root, input, &step.outputs)
                    .map_err(|e| self.error(span(), key.clone(), e).with_help("fix the glob (gitignore syntax)"))?;
                if found.is_empty() {
                    return Err(self
                        .error(span(), key, format!("input `{input}` matches no file"))
                        .with_help("inputs are relative to Kiln.toml's directory; fix the glob or remove it"));
                }
            } else if !self.root.join(input).exists() {
                return Err(self
                    .error(span(), key, format!("input `{input}` does not exist (`{}`)", self.root.join(input).display()))
                    .with_help("inputs are relative to Kiln.toml's directory; fix the path, or make it with a step this one names in `steps`"));
            }
        }
        Ok(())
    }

    /// `step.NAME.inputs` as written (`artifact:` references included).
    pub(super) fn written_inputs(&self, name: &str) -> Vec<String> {
        let Ok(doc) = toml::de::DeTable::parse(&self.source.text) else { return Vec::new() };
        let items = doc
            .get_ref()
            .get("step")
            .and_then(|steps| match steps.get_ref() {
                toml::de::DeValue::Table(steps) => steps.get(name),
                _ => None,
            })
            .and_then(|step| match step.get_ref() {
                toml::de::DeValue::Table(step) => step.get("inputs"),
                _ => None,
            });
        let Some(toml::de::DeValue::Array(items)) = items.map(|i| i.get_ref()) else { return Vec::new() };
        items.iter().filter_map(|item| item.get_ref().as_str().map(str::to_owned)).collect()
    }

    /// The span of the `index`th item of `step.NAME.inputs`.
    pub(super) fn input_span(&self, name: &str, index: usize) -> Option<std::ops::Range<usize>> {
        let doc = toml::de::DeTable::parse(&self.source.text).ok()?;
        let steps = doc.get_ref().get("step")?;
        let toml::de::DeValue::Table(steps) = steps.get_ref() else { return None };
        let step = steps.get(name)?;
        let toml::de::DeValue::Table(step) = step.get_ref() else { return None };
        let inputs = step.get("inputs")?;
        let toml::de::DeValue::Array(items) = inputs.get_ref() else { return None };
        items.get(index).map(Spanned::span)
    }
}

/// `wanted` and every step they need, each after the steps it names (depth first, in the
/// order written). The steps form no circle (checked before).
pub(crate) fn run_order(wanted: &[String], steps: &BTreeMap<String, CommandStep>) -> Vec<CommandStep> {
    fn visit(name: &str, steps: &BTreeMap<String, CommandStep>, done: &mut Vec<CommandStep>, depth: usize) {
        let Some(step) = steps.get(name) else { return };
        if done.iter().any(|d| d.name == name) || depth > steps.len() {
            return;
        }
        for needed in &step.needs {
            visit(needed, steps, done, depth + 1);
        }
        done.push(step.clone());
    }
    let mut done = Vec::new();
    for name in wanted {
        visit(name, steps, &mut done, 0);
    }
    done
}
