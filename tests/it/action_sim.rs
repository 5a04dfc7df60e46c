//! A stand-in GitHub Actions runner for `action/action.yml`: it reads the composite action,
//! resolves `${{ }}` expressions and `if:` conditions as the runner does, executes the `run:`
//! steps with bash in a simulated runner environment (`GITHUB_OUTPUT`, `GITHUB_ENV`,
//! `GITHUB_STEP_SUMMARY`, `RUNNER_TEMP`, `RUNNER_OS`, ...), and stands in for
//! `actions/cache/restore`, `actions/cache/save` (a local directory of `tar | zstd` archives
//! keyed by the same rules: an exact key, then the newest entry whose key starts with a
//! restore key, in order) and `actions/upload-artifact` (a directory).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use yaml_rust2::{Yaml, YamlLoader};

use crate::support::{Project, repo_root};

/// A composite action, read from its `action.yml`.
pub struct Action {
    /// The directory holding `action.yml` (`GITHUB_ACTION_PATH`).
    pub dir: PathBuf,
    doc: Yaml,
}

/// The local stand-in for the Actions cache service: `DIR/NNNNNN.KEY.tar.zst`, the number
/// giving the save order (newest wins among prefix matches).
pub struct LocalCache {
    /// Where the archives are.
    pub dir: PathBuf,
}

/// What one simulated job did.
#[derive(Debug, Default)]
pub struct JobRun {
    /// The action's outputs.
    pub outputs: BTreeMap<String, String>,
    /// Every step: its name and how it ended (`success`, `failure`, `skipped`).
    pub steps: Vec<(String, String)>,
    /// Keys saved to the cache in this run.
    pub saved: Vec<String>,
    /// Artifacts uploaded: name → directory.
    pub artifacts: BTreeMap<String, PathBuf>,
    /// Everything the steps printed.
    pub log: String,
    /// The job summary written by the steps.
    pub summary: String,
    /// Whether the job failed.
    pub failed: bool,
    /// Time spent restoring and saving the cache.
    pub cache_time: Duration,
}

impl Action {
    /// Reads `dir/action.yml`.
    pub fn load(dir: &Path) -> Self {
        let text = std::fs::read_to_string(dir.join("action.yml")).expect("read action.yml");
        let mut docs = YamlLoader::load_from_str(&text).expect("action.yml is YAML");
        Self { dir: dir.to_owned(), doc: docs.remove(0) }
    }

    /// The declared inputs with their defaults.
    pub fn input_defaults(&self) -> BTreeMap<String, String> {
        let mut inputs = BTreeMap::new();
        for (name, spec) in self.doc["inputs"].as_hash().expect("inputs") {
            let default = match &spec["default"] {
                Yaml::String(s) => s.clone(),
                Yaml::Boolean(b) => b.to_string(),
                Yaml::Integer(i) => i.to_string(),
                _ => String::new(),
            };
            inputs.insert(name.as_str().expect("input name").to_owned(), default);
        }
        inputs
    }

    /// Runs the action as one job step in `workspace`, with these inputs over the defaults.
    pub fn run(
        &self,
        workspace: &Path,
        inputs: &[(&str, &str)],
        env: &[(&str, &str)],
        cache: &LocalCache,
        artifacts_dir: &Path,
    ) -> JobRun {
        let mut context = Context { inputs: self.input_defaults(), ..Context::default() };
        for (name, value) in inputs {
            assert!(context.inputs.contains_key(*name), "action.yml declares no input `{name}`");
            context.inputs.insert((*name).to_owned(), (*value).to_owned());
        }
        context.github.insert("job".into(), "test".into());
        context.github.insert("action_path".into(), self.dir.display().to_string());
        context.github.insert("workspace".into(), workspace.display().to_string());
        context.runner.insert("os".into(), "Linux".into());
        let temp = tempfile::tempdir().expect("runner temp");
        let summary_file = temp.path().join("step-summary.md");
        let env_file = temp.path().join("github-env");
        std::fs::write(&env_file, "").expect("GITHUB_ENV");
        let mut job = JobRun::default();
        let mut extra_env: BTreeMap<String, String> = BTreeMap::new();
        let steps = self.doc["runs"]["steps"].as_vec().expect("runs.steps");
        assert_eq!(self.doc["runs"]["using"].as_str(), Some("composite"));
        for (index, step) in steps.iter().enumerate() {
            let name = step["name"].as_str().map_or_else(|| format!("step {index}"), str::to_owned);
            let condition = step["if"].as_str().unwrap_or("success()");
            // As on the runner: a condition without a status function means `success() && (...)`.
            let has_status =
                ["success()", "failure()", "always()", "cancelled()"].iter().any(|f| condition.contains(f));
            let condition =
                if has_status { condition.to_owned() } else { format!("success() && ({})", strip_braces(condition)) };
            if !truthy(&context.eval(&condition)) {
                job.steps.push((name, "skipped".into()));
                continue;
            }
            let id = step["id"].as_str().map(str::to_owned);
            let with: BTreeMap<String, String> = step["with"]
                .as_hash()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| (k.as_str().expect("with key").to_owned(), context.interpolate(&scalar(v))))
                        .collect()
                })
                .unwrap_or_default();
            let (ok, outputs) = if let Some(script) = step["run"].as_str() {
                assert_eq!(step["shell"].as_str(), Some("bash"), "composite run steps need `shell: bash`");
                assert!(!script.contains("${{"), "`{name}`: pass inputs through env:, never ${{{{ }}}} in a script");
                let mut step_env: BTreeMap<String, String> = extra_env.clone();
                for (key, value) in step["env"].as_hash().into_iter().flatten() {
                    step_env.insert(key.as_str().expect("env key").to_owned(), context.interpolate(&scalar(value)));
                }
                let cwd = match step["working-directory"].as_str() {
                    Some(dir) => workspace.join(context.interpolate(dir)),
                    None => workspace.to_owned(),
                };
                let output_file = temp.path().join(format!("output-{index}"));
                std::fs::write(&output_file, "").expect("GITHUB_OUTPUT");
                let script_file = temp.path().join(format!("step-{index}.sh"));
                std::fs::write(&script_file, script).expect("script");
                let out = Command::new("bash")
                    .args(["--noprofile", "--norc", "-eo", "pipefail"])
                    .arg(&script_file)
                    .current_dir(&cwd)
                    .envs(env.iter().copied())
                    .envs(&step_env)
                    .env("GITHUB_ACTIONS", "true")
                    .env("CI", "true")
                    .env("GITHUB_OUTPUT", &output_file)
                    .env("GITHUB_ENV", &env_file)
                    .env("GITHUB_STEP_SUMMARY", &summary_file)
                    .env("GITHUB_ACTION_PATH", &self.dir)
                    .env("GITHUB_WORKSPACE", workspace)
                    .env("GITHUB_JOB", "test")
                    .env("RUNNER_OS", "Linux")
                    .env("RUNNER_TEMP", temp.path())
                    .env("GITHUB_RUN_ID", "4242")
                    .env("GITHUB_RUN_ATTEMPT", "1")
                    .output()
                    .expect("bash runs");
                job.log.push_str(&format!("== {name}\n"));
                job.log.push_str(&String::from_utf8_lossy(&out.stdout));
                job.log.push_str(&String::from_utf8_lossy(&out.stderr));
                extra_env.extend(parse_key_values(&std::fs::read_to_string(&env_file).unwrap_or_default()));
                (out.status.success(), parse_key_values(&std::fs::read_to_string(&output_file).unwrap_or_default()))
            } else {
                let uses = step["uses"].as_str().expect("a step runs or uses");
                let started = Instant::now();
                let result = self.uses(uses, &with, workspace, cache, artifacts_dir, &mut job);
                if uses.starts_with("actions/cache/") {
                    job.cache_time += started.elapsed();
                }
                result
            };
            if let Some(id) = id {
                context.steps.insert(id, outputs);
            }
            job.steps.push((name, if ok { "success".into() } else { "failure".into() }));
            if !ok {
                context.failed = true;
            }
        }
        for (name, spec) in self.doc["outputs"].as_hash().into_iter().flatten() {
            let value = context.interpolate(spec["value"].as_str().unwrap_or(""));
            job.outputs.insert(name.as_str().expect("output name").to_owned(), value);
        }
        job.summary = std::fs::read_to_string(&summary_file).unwrap_or_default();
        job.failed = context.failed;
        job
    }

    fn uses(
        &self,
        uses: &str,
        with: &BTreeMap<String, String>,
        workspace: &Path,
        cache: &LocalCache,
        artifacts_dir: &Path,
        job: &mut JobRun,
    ) -> (bool, BTreeMap<String, String>) {
        let (action, reference) = uses.split_once('@').expect("uses: owner/repo@ref");
        assert!(
            reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()),
            "{uses}: pin actions to a commit"
        );
        let mut outputs = BTreeMap::new();
        match action {
            "actions/cache/restore" => {
                if with["key"].is_empty() || with["path"].is_empty() {
                    job.log.push_str("actions/cache/restore: Input required and not supplied: key or path\n");
                    return (false, outputs);
                }
                let path = workspace.join(&with["path"]);
                let key = &with["key"];
                let restore_keys: Vec<&str> = with
                    .get("restore-keys")
                    .map(|k| k.lines().filter(|l| !l.trim().is_empty()).collect())
                    .unwrap_or_default();
                if let Some((matched, archive)) = cache.find(key, &restore_keys) {
                    untar(&archive, &path);
                    outputs.insert("cache-hit".into(), matched.eq_ignore_ascii_case(key).to_string());
                    outputs.insert("cache-primary-key".into(), key.clone());
                    outputs.insert("cache-matched-key".into(), matched);
                } else {
                    outputs.insert("cache-primary-key".into(), key.clone());
                    outputs.insert("cache-hit".into(), "false".into());
                }
                (true, outputs)
            }
            "actions/cache/save" => {
                if with["key"].is_empty() || with["path"].is_empty() {
                    job.log.push_str("actions/cache/save: Input required and not supplied: key or path\n");
                    return (false, outputs);
                }
                let key = &with["key"];
                // The service refuses to overwrite a key; the action warns and goes on.
                if !cache.keys().iter().any(|k| k.eq_ignore_ascii_case(key)) {
                    cache.save(key, &workspace.join(&with["path"]));
                    job.saved.push(key.clone());
                }
                (true, outputs)
            }
            "actions/upload-artifact" => {
                if with["path"].is_empty() || with["name"].is_empty() {
                    job.log.push_str("actions/upload-artifact: Input required and not supplied: path or name\n");
                    return (false, outputs);
                }
                if job.artifacts.contains_key(&with["name"]) || artifacts_dir.join(&with["name"]).exists() {
                    job.log.push_str("actions/upload-artifact: an artifact with this name exists (409 Conflict)\n");
                    return (false, outputs);
                }
                let from = workspace.join(&with["path"]);
                if from.exists() {
                    let to = artifacts_dir.join(&with["name"]);
                    std::fs::create_dir_all(&to).expect("artifact dir");
                    let status = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(&to).status();
                    assert!(status.is_ok_and(|s| s.success()), "copy the artifact");
                    job.artifacts.insert(with["name"].clone(), to);
                } else {
                    assert_eq!(with.get("if-no-files-found").map(String::as_str), Some("ignore"), "{from:?} missing");
                }
                (true, outputs)
            }
            other => panic!("the simulator does not know `{other}`"),
        }
    }
}

impl LocalCache {
    fn entries(&self) -> Vec<(u64, String, PathBuf)> {
        let mut entries: Vec<(u64, String, PathBuf)> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".tar.zst")?;
                let (order, key) = stem.split_once('.')?;
                Some((order.parse().ok()?, key.to_owned(), entry.path()))
            })
            .collect();
        entries.sort();
        entries
    }

    /// As the cache service matches (case-insensitively): the exact key, else the newest
    /// entry with the key as a prefix, else the newest matching the first restore key that
    /// matches any.
    pub fn find(&self, key: &str, restore_keys: &[&str]) -> Option<(String, PathBuf)> {
        let entries = self.entries();
        let lower = |text: &str| text.to_ascii_lowercase();
        if let Some((_, k, path)) = entries.iter().find(|(_, k, _)| lower(k) == lower(key)) {
            return Some((k.clone(), path.clone()));
        }
        std::iter::once(key).chain(restore_keys.iter().copied()).find_map(|prefix| {
            entries
                .iter()
                .rev()
                .find(|(_, k, _)| lower(k).starts_with(&lower(prefix)))
                .map(|(_, k, p)| (k.clone(), p.clone()))
        })
    }

    fn save(&self, key: &str, path: &Path) {
        std::fs::create_dir_all(&self.dir).expect("cache dir");
        let order = self.entries().last().map_or(0, |(n, _, _)| n + 1);
        let archive = self.dir.join(format!("{order:06}.{key}.tar.zst"));
        let status = Command::new("tar")
            .args(["-I", "zstd -T0", "-cf"])
            .arg(&archive)
            .arg("-C")
            .arg(path)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success(), "tar | zstd the store");
    }

    /// The keys saved so far, oldest first.
    pub fn keys(&self) -> Vec<String> {
        self.entries().into_iter().map(|(_, k, _)| k).collect()
    }

    /// The archive saved under `key`.
    pub fn archive(&self, key: &str) -> Option<PathBuf> {
        self.entries().into_iter().find(|(_, k, _)| k == key).map(|(_, _, p)| p)
    }
}

/// Unpacks a cache archive into `dir`.
pub fn untar(archive: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("restore dir");
    let status = Command::new("tar").args(["-I", "zstd -T0", "-xf"]).arg(archive).arg("-C").arg(dir).status();
    assert!(status.is_ok_and(|s| s.success()), "untar {}", archive.display());
}

/// `name=value` lines and `name<<DELIM` blocks, as GITHUB_OUTPUT and GITHUB_ENV hold them.
pub fn parse_key_values(text: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            for inner in lines.by_ref() {
                if inner == delimiter {
                    break;
                }
                value.push(inner);
            }
            values.insert(name.to_owned(), value.join("\n"));
        } else if let Some((name, value)) = line.split_once('=') {
            values.insert(name.to_owned(), value.to_owned());
        }
    }
    values
}

fn strip_braces(expr: &str) -> &str {
    let expr = expr.trim();
    expr.strip_prefix("${{").and_then(|e| e.strip_suffix("}}")).unwrap_or(expr)
}

fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Real(r) => r.clone(),
        _ => String::new(),
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Str(s) => !s.is_empty(),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Bool(bool),
    Str(String),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => s.clone(),
        }
    }
}

/// The expression contexts a composite action sees.
#[derive(Default)]
struct Context {
    inputs: BTreeMap<String, String>,
    steps: BTreeMap<String, BTreeMap<String, String>>,
    github: BTreeMap<String, String>,
    runner: BTreeMap<String, String>,
    failed: bool,
}

impl Context {
    /// Replaces every `${{ expr }}` in `text`.
    fn interpolate(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").expect("closed expression") + start;
            out.push_str(&self.eval(&rest[start + 3..end]).text());
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out
    }

    fn eval(&self, expr: &str) -> Value {
        let expr = expr.trim();
        let expr = expr.strip_prefix("${{").and_then(|e| e.strip_suffix("}}")).unwrap_or(expr);
        let tokens = tokenize(expr);
        let mut parser = Parser { tokens: &tokens, at: 0, cx: self };
        let value = parser.or();
        assert_eq!(parser.at, tokens.len(), "unparsed tokens in `{expr}`");
        value
    }

    fn lookup(&self, path: &str) -> Value {
        let parts: Vec<&str> = path.split('.').collect();
        let found = match parts.as_slice() {
            ["inputs", name] => self.inputs.get(*name).cloned(),
            ["steps", id, "outputs", name] => self.steps.get(*id).and_then(|o| o.get(*name)).cloned(),
            ["github", name] => self.github.get(*name).cloned(),
            ["runner", name] => self.runner.get(*name).cloned(),
            _ => panic!("the simulator does not know the context `{path}`"),
        };
        Value::Str(found.unwrap_or_default())
    }
}

fn tokenize(expr: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut text = String::from("'");
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' && chars.get(i + 1) == Some(&'\'') {
                    text.push('\'');
                    i += 2;
                } else if chars[i] == '\'' {
                    i += 1;
                    break;
                } else {
                    text.push(chars[i]);
                    i += 1;
                }
            }
            tokens.push(text);
        } else if "()!".contains(c) && !(c == '!' && chars.get(i + 1) == Some(&'=')) {
            tokens.push(c.to_string());
            i += 1;
        } else if "=!&|".contains(c) {
            tokens.push(chars[i..i + 2].iter().collect());
            i += 2;
        } else {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || "._-".contains(chars[i])) {
                i += 1;
            }
            assert!(i > start, "unexpected `{c}` in `{expr}`");
            tokens.push(chars[start..i].iter().collect());
        }
    }
    tokens
}

struct Parser<'a> {
    tokens: &'a [String],
    at: usize,
    cx: &'a Context,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self) -> String {
        self.at += 1;
        self.tokens[self.at - 1].clone()
    }

    fn or(&mut self) -> Value {
        let mut left = self.and();
        while self.peek() == Some("||") {
            self.next();
            let right = self.and();
            left = if truthy(&left) { left } else { right };
        }
        left
    }

    fn and(&mut self) -> Value {
        let mut left = self.not();
        while self.peek() == Some("&&") {
            self.next();
            let right = self.not();
            left = if truthy(&left) { right } else { left };
        }
        left
    }

    fn not(&mut self) -> Value {
        if self.peek() == Some("!") {
            self.next();
            return Value::Bool(!truthy(&self.not()));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Value {
        let left = self.primary();
        match self.peek() {
            Some("==") => {
                self.next();
                let right = self.primary();
                Value::Bool(left.text().eq_ignore_ascii_case(&right.text()))
            }
            Some("!=") => {
                self.next();
                let right = self.primary();
                Value::Bool(!left.text().eq_ignore_ascii_case(&right.text()))
            }
            _ => left,
        }
    }

    fn primary(&mut self) -> Value {
        let token = self.next();
        if token == "(" {
            let value = self.or();
            assert_eq!(self.next(), ")", "closing parenthesis");
            return value;
        }
        if let Some(text) = token.strip_prefix('\'') {
            return Value::Str(text.to_owned());
        }
        if self.peek() == Some("(") {
            self.next();
            assert_eq!(self.next(), ")", "functions here take no arguments");
            return Value::Bool(match token.as_str() {
                "always" => true,
                "success" => !self.cx.failed,
                "failure" => self.cx.failed,
                "cancelled" => false,
                other => panic!("the simulator does not know `{other}()`"),
            });
        }
        match token.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            path => self.cx.lookup(path),
        }
    }
}

#[test]
fn expressions_evaluate_as_on_the_runner() {
    let mut cx = Context::default();
    cx.inputs.insert("cache".into(), "true".into());
    cx.inputs.insert("upload-logs".into(), "on-failure".into());
    cx.steps.insert("run".into(), [("exit-code".to_owned(), "1".to_owned())].into());
    assert!(truthy(&cx.eval("inputs.cache == 'true'")));
    assert!(!truthy(&cx.eval("success() && inputs.cache != 'true'")));
    assert!(truthy(&cx.eval(
        "always() && (inputs.upload-logs == 'always' || (inputs.upload-logs == 'on-failure' && steps.run.outputs.exit-code != '0'))"
    )));
    assert!(!truthy(&cx.eval("steps.missing.outputs.x != ''")));
    assert_eq!(cx.interpolate("key-${{ inputs.cache }}-${{ steps.run.outputs.exit-code }}"), "key-true-1");
    assert_eq!(parse_key_values("a=1\nb<<EOF\nx\ny\nEOF\nc=3\n")["b"], "x\ny");
}

/// The repository's action.
pub fn action() -> Action {
    Action::load(&repo_root().join("action"))
}

/// A new runner: no store, no cargo target directories (the checkout stays).
pub fn fresh_runner(project: &Project) {
    for dir in ["target", "examples/target"] {
        let _ = std::fs::remove_dir_all(project.path().join(dir));
    }
}

/// The `xtask` input: kiln (the `kiln-it` binary) with TCG.
fn xtask() -> String {
    format!("{} --accel tcg", env!("CARGO_BIN_EXE_kiln-it"))
}

/// Runs the action on `project` for riscv64, with `extra` inputs.
pub fn run(project: &Project, cache: &LocalCache, artifacts: &Path, extra: &[(&str, &str)]) -> JobRun {
    let xtask = xtask();
    let mut inputs = vec![("arch", "riscv64"), ("xtask", xtask.as_str()), ("install-deps", "false")];
    inputs.extend_from_slice(extra);
    action().run(project.path(), &inputs, &[("KILN_ACCEL", "tcg")], cache, artifacts)
}
