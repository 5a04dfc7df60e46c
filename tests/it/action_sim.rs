//! A stand-in GitHub Actions runner for `action/action.yml`: it reads the composite action,
//! resolves `${{ }}` expressions (input defaults too) and `if:` conditions as the runner does,
//! executes the `run:` steps with bash in a simulated runner environment (`GITHUB_OUTPUT`,
//! `GITHUB_ENV`, `GITHUB_STEP_SUMMARY`, `RUNNER_TEMP`, `GITHUB_REF`, ...), and stands in for
//! `actions/cache/restore`, `actions/cache/save` and `actions/upload-artifact`.
//!
//! The cache follows the service's rules: entries belong to a repository and a scope (the ref
//! that saved them); a job restores from its own ref, then a pull request's base branch, then
//! the default branch; within a scope the exact key wins, then the newest entry whose key
//! starts with the key or with each restore key in order; an entry has a version (its paths
//! and compression), and another version never matches; keys are immutable (a second save of
//! a key, or one while another job reserves it, is "Unable to reserve cache", a warning); a
//! size limit evicts the least recently used entries. A job can be cancelled after a step.

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

/// Why and where a simulated job runs: what the cache service scopes entries by.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// `owner/name` of the repository the workflow runs in (a fork is another repository).
    pub repository: String,
    /// `push` or `pull_request`.
    pub event_name: String,
    /// `refs/heads/BRANCH` or `refs/pull/N/merge`.
    pub git_ref: String,
    /// A pull request's base branch.
    pub base_ref: Option<String>,
    /// A pull request's head branch.
    pub head_ref: Option<String>,
    /// The repository's default branch.
    pub default_branch: String,
}

impl Default for Trigger {
    fn default() -> Self {
        Self::push("main")
    }
}

impl Trigger {
    /// A push to `branch` of `kiln-rs/kiln` (default branch `main`).
    pub fn push(branch: &str) -> Self {
        Self {
            repository: "kiln-rs/kiln".into(),
            event_name: "push".into(),
            git_ref: format!("refs/heads/{branch}"),
            base_ref: None,
            head_ref: None,
            default_branch: "main".into(),
        }
    }

    /// Pull request `number` from `head` into `base`.
    pub fn pull_request(number: u32, head: &str, base: &str) -> Self {
        Self {
            event_name: "pull_request".into(),
            git_ref: format!("refs/pull/{number}/merge"),
            base_ref: Some(base.into()),
            head_ref: Some(head.into()),
            ..Self::push("main")
        }
    }

    /// The same trigger in another repository (a fork's own workflow runs).
    pub fn in_repository(self, repository: &str) -> Self {
        Self { repository: repository.into(), ..self }
    }

    /// `GITHUB_REF_NAME`.
    fn ref_name(&self) -> String {
        let name = self.git_ref.strip_prefix("refs/heads/").or_else(|| self.git_ref.strip_prefix("refs/pull/"));
        name.unwrap_or(&self.git_ref).to_owned()
    }

    /// The scopes a restore searches, in order: this ref, the base branch, the default branch.
    fn restore_scopes(&self) -> Vec<String> {
        let mut scopes = vec![self.git_ref.clone()];
        for branch in self.base_ref.iter().chain(std::iter::once(&self.default_branch)) {
            let scope = format!("refs/heads/{branch}");
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        scopes
    }
}

/// One simulated job: inputs over the action's defaults, extra environment, the trigger, and
/// where (if anywhere) it is cancelled.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// Inputs given with `with:`.
    pub inputs: Vec<(String, String)>,
    /// Variables in the job's environment.
    pub env: Vec<(String, String)>,
    /// The event and ref.
    pub trigger: Trigger,
    /// The name of the step after which the run is cancelled (`cancelled()` is true from then).
    pub cancel_after: Option<String>,
}

impl Job {
    /// A job with these inputs.
    pub fn with_inputs(inputs: &[(&str, &str)]) -> Self {
        Self { inputs: inputs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(), ..Self::default() }
    }

    /// Adds an input.
    pub fn input(mut self, name: &str, value: &str) -> Self {
        self.inputs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the trigger.
    pub fn on(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }
}

/// The local stand-in for the Actions cache service: `DIR/index` (one line per entry or
/// reservation) and `DIR/ID/N.tar.zst` (one archive per path of an entry).
pub struct LocalCache {
    /// Where the entries are.
    pub dir: PathBuf,
    /// The repository's cache budget in bytes (GitHub: 10 GB); least recently used entries
    /// are evicted past it.
    pub limit: u64,
}

/// One entry (or an in-flight reservation) of the local cache.
#[derive(Clone, Debug)]
pub struct CacheEntry {
    id: u64,
    created: u64,
    accessed: u64,
    /// Archive bytes.
    pub size: u64,
    pending: bool,
    /// The repository that saved it.
    pub repository: String,
    /// The ref that saved it.
    pub scope: String,
    /// Its version (paths and compression).
    pub version: String,
    /// Its key.
    pub key: String,
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
    /// Time spent restoring and saving caches.
    pub cache_time: Duration,
    /// How long each step that ran took.
    pub step_times: Vec<(String, Duration)>,
}

impl JobRun {
    /// How the step named `name` ended, if the action has it.
    pub fn step(&self, name: &str) -> Option<&str> {
        self.steps.iter().find(|(n, _)| n == name).map(|(_, how)| how.as_str())
    }
}

impl Action {
    /// Reads `dir/action.yml`.
    pub fn load(dir: &Path) -> Self {
        let text = std::fs::read_to_string(dir.join("action.yml")).expect("read action.yml");
        let mut docs = YamlLoader::load_from_str(&text).expect("action.yml is YAML");
        Self { dir: dir.to_owned(), doc: docs.remove(0) }
    }

    /// The declared inputs with their defaults, as written (expressions unevaluated).
    pub fn input_defaults(&self) -> BTreeMap<String, String> {
        let mut inputs = BTreeMap::new();
        for (name, spec) in self.doc["inputs"].as_hash().expect("inputs") {
            inputs.insert(name.as_str().expect("input name").to_owned(), scalar(&spec["default"]));
        }
        inputs
    }

    /// Runs the action as one job step in `workspace`.
    pub fn run(&self, workspace: &Path, job: &Job, cache: &LocalCache, artifacts_dir: &Path) -> JobRun {
        let trigger = &job.trigger;
        let mut context = Context::default();
        let github = [
            ("job", "test".to_owned()),
            ("action_path", self.dir.display().to_string()),
            ("workspace", workspace.display().to_string()),
            ("repository", trigger.repository.clone()),
            ("event_name", trigger.event_name.clone()),
            ("ref", trigger.git_ref.clone()),
            ("ref_name", trigger.ref_name()),
            ("head_ref", trigger.head_ref.clone().unwrap_or_default()),
            ("base_ref", trigger.base_ref.clone().unwrap_or_default()),
            ("event.repository.default_branch", trigger.default_branch.clone()),
            ("run_id", "4242".to_owned()),
            ("run_attempt", "1".to_owned()),
        ];
        for (name, value) in github {
            context.github.insert(name.into(), value);
        }
        context.runner.insert("os".into(), "Linux".into());
        // Defaults may hold expressions (`${{ github.ref == ... }}`); the runner evaluates them.
        for (name, default) in self.input_defaults() {
            let value = context.interpolate(&default);
            context.inputs.insert(name, value);
        }
        for (name, value) in &job.inputs {
            assert!(context.inputs.contains_key(name), "action.yml declares no input `{name}`");
            context.inputs.insert(name.clone(), value.clone());
        }
        let home = job
            .env
            .iter()
            .find(|(k, _)| k == "HOME")
            .map_or_else(|| std::env::var("HOME").unwrap_or_default(), |(_, v)| v.clone());
        let temp = tempfile::tempdir().expect("runner temp");
        let summary_file = temp.path().join("step-summary.md");
        let env_file = temp.path().join("github-env");
        std::fs::write(&env_file, "").expect("GITHUB_ENV");
        let mut run = JobRun::default();
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
            let id = step["id"].as_str().map(str::to_owned);
            if !truthy(&context.eval(&condition)) {
                if let Some(id) = id {
                    context.outcomes.insert(id, "skipped".into());
                }
                run.steps.push((name, "skipped".into()));
                continue;
            }
            let with: BTreeMap<String, String> = step["with"]
                .as_hash()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| (k.as_str().expect("with key").to_owned(), context.interpolate(&scalar(v))))
                        .collect()
                })
                .unwrap_or_default();
            let step_started = Instant::now();
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
                for (name, value) in &job.env {
                    step_env.entry(name.clone()).or_insert_with(|| value.clone());
                }
                // The simulated runner's /etc/udev: steps never change the host's.
                step_env
                    .entry("KILN_UDEV_RULES_DIR".into())
                    .or_insert_with(|| temp.path().join("udev-rules.d").display().to_string());
                let out = Command::new("bash")
                    .args(["--noprofile", "--norc", "-eo", "pipefail"])
                    .arg(&script_file)
                    .current_dir(&cwd)
                    .envs(&step_env)
                    .env("GITHUB_ACTIONS", "true")
                    .env("CI", "true")
                    .env("GITHUB_OUTPUT", &output_file)
                    .env("GITHUB_ENV", &env_file)
                    .env("GITHUB_STEP_SUMMARY", &summary_file)
                    .env("GITHUB_ACTION_PATH", &self.dir)
                    .env("GITHUB_WORKSPACE", workspace)
                    .env("GITHUB_JOB", "test")
                    .env("GITHUB_REPOSITORY", &trigger.repository)
                    .env("GITHUB_EVENT_NAME", &trigger.event_name)
                    .env("GITHUB_REF", &trigger.git_ref)
                    .env("GITHUB_REF_NAME", trigger.ref_name())
                    .env("GITHUB_HEAD_REF", trigger.head_ref.clone().unwrap_or_default())
                    .env("GITHUB_BASE_REF", trigger.base_ref.clone().unwrap_or_default())
                    .env("RUNNER_OS", "Linux")
                    .env("RUNNER_ARCH", "X64")
                    .env("RUNNER_TEMP", temp.path())
                    .env("GITHUB_RUN_ID", "4242")
                    .env("GITHUB_RUN_ATTEMPT", "1")
                    .output()
                    .expect("bash runs");
                run.log.push_str(&format!("== {name}\n"));
                run.log.push_str(&String::from_utf8_lossy(&out.stdout));
                run.log.push_str(&String::from_utf8_lossy(&out.stderr));
                extra_env.extend(parse_key_values(&std::fs::read_to_string(&env_file).unwrap_or_default()));
                (out.status.success(), parse_key_values(&std::fs::read_to_string(&output_file).unwrap_or_default()))
            } else {
                let uses = step["uses"].as_str().expect("a step runs or uses");
                run.log.push_str(&format!("== {name}\n"));
                let started = Instant::now();
                let place = Place { workspace, home: Path::new(&home), trigger };
                let result = self.uses(uses, &with, &place, cache, artifacts_dir, &mut run);
                if uses.starts_with("actions/cache/") {
                    run.cache_time += started.elapsed();
                }
                result
            };
            if let Some(id) = id {
                context.steps.insert(id.clone(), outputs);
                context.outcomes.insert(id, if ok { "success".into() } else { "failure".into() });
            }
            run.step_times.push((name.clone(), step_started.elapsed()));
            run.steps.push((name.clone(), if ok { "success".into() } else { "failure".into() }));
            if !ok {
                context.failed = true;
            }
            if job.cancel_after.as_deref() == Some(name.as_str()) {
                run.log.push_str("== The run was cancelled\n");
                context.cancelled = true;
            }
        }
        for (name, spec) in self.doc["outputs"].as_hash().into_iter().flatten() {
            let value = context.interpolate(spec["value"].as_str().unwrap_or(""));
            run.outputs.insert(name.as_str().expect("output name").to_owned(), value);
        }
        run.summary = std::fs::read_to_string(&summary_file).unwrap_or_default();
        run.failed = context.failed || context.cancelled;
        run
    }

    fn uses(
        &self,
        uses: &str,
        with: &BTreeMap<String, String>,
        place: &Place<'_>,
        cache: &LocalCache,
        artifacts_dir: &Path,
        run: &mut JobRun,
    ) -> (bool, BTreeMap<String, String>) {
        let (action, reference) = uses.split_once('@').expect("uses: owner/repo@ref");
        assert!(
            reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()),
            "{uses}: pin actions to a commit"
        );
        let flag = |name: &str| with.get(name).is_some_and(|v| v == "true");
        let mut outputs = BTreeMap::new();
        match action {
            "actions/cache/restore" => {
                if with["key"].is_empty() || with["path"].is_empty() {
                    run.log.push_str("actions/cache/restore: Input required and not supplied: key or path\n");
                    return (false, outputs);
                }
                let paths = place.paths(&with["path"]);
                let key = &with["key"];
                let restore_keys: Vec<&str> = with
                    .get("restore-keys")
                    .map(|k| k.lines().map(str::trim).filter(|l| !l.is_empty()).collect())
                    .unwrap_or_default();
                outputs.insert("cache-primary-key".into(), key.clone());
                match cache.find(place.trigger, &version(&with["path"]), key, &restore_keys) {
                    Some(entry) => {
                        if flag("lookup-only") {
                            run.log.push_str(&format!("Cache found and can be restored from key: {}\n", entry.key));
                        } else {
                            cache.restore(&entry, &paths);
                            run.log.push_str(&format!("Cache restored from key: {}\n", entry.key));
                        }
                        outputs.insert("cache-hit".into(), entry.key.eq_ignore_ascii_case(key).to_string());
                        outputs.insert("cache-matched-key".into(), entry.key);
                    }
                    None if flag("fail-on-cache-miss") => {
                        run.log.push_str(&format!(
                            "Error: Failed to restore cache entry. Exiting as fail-on-cache-miss is set. Input key: {key}\n"
                        ));
                        return (false, outputs);
                    }
                    None => {
                        run.log.push_str(&format!("Cache not found for input keys: {key}\n"));
                        outputs.insert("cache-hit".into(), "false".into());
                    }
                }
                (true, outputs)
            }
            "actions/cache/save" => {
                if with["key"].is_empty() || with["path"].is_empty() {
                    run.log.push_str("actions/cache/save: Input required and not supplied: key or path\n");
                    return (false, outputs);
                }
                let key = &with["key"];
                let paths = place.paths(&with["path"]);
                if !paths.iter().any(|p| p.exists()) {
                    run.log.push_str(
                        "Error: Path Validation Error: Path(s) specified in the action for caching do(es) not exist, \
                         hence no cache is being saved.\n",
                    );
                    return (false, outputs);
                }
                match cache.save(place.trigger, &version(&with["path"]), key, &paths) {
                    Ok(()) => {
                        run.log.push_str(&format!("Cache saved with key: {key}\n"));
                        run.saved.push(key.clone());
                    }
                    // The service refuses a key that exists or is being saved; the action warns
                    // and the step still succeeds.
                    Err(message) => run.log.push_str(&format!("Warning: Failed to save: {message}\n")),
                }
                (true, outputs)
            }
            "actions/upload-artifact" => {
                if with["path"].is_empty() || with["name"].is_empty() {
                    run.log.push_str("actions/upload-artifact: Input required and not supplied: path or name\n");
                    return (false, outputs);
                }
                if run.artifacts.contains_key(&with["name"]) || artifacts_dir.join(&with["name"]).exists() {
                    run.log.push_str("actions/upload-artifact: an artifact with this name exists (409 Conflict)\n");
                    return (false, outputs);
                }
                let from = place.workspace.join(&with["path"]);
                if from.exists() {
                    let to = artifacts_dir.join(&with["name"]);
                    std::fs::create_dir_all(&to).expect("artifact dir");
                    let status = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(&to).status();
                    assert!(status.is_ok_and(|s| s.success()), "copy the artifact");
                    run.artifacts.insert(with["name"].clone(), to);
                } else {
                    assert_eq!(with.get("if-no-files-found").map(String::as_str), Some("ignore"), "{from:?} missing");
                }
                (true, outputs)
            }
            other => panic!("the simulator does not know `{other}`"),
        }
    }
}

/// Where a `uses:` step runs: paths resolve against the workspace, `~` against HOME.
struct Place<'a> {
    workspace: &'a Path,
    home: &'a Path,
    trigger: &'a Trigger,
}

impl Place<'_> {
    /// The `path` input's lines, resolved.
    fn paths(&self, input: &str) -> Vec<PathBuf> {
        input
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|line| match line.strip_prefix("~/") {
                Some(rest) => self.home.join(rest),
                None => self.workspace.join(line),
            })
            .collect()
    }
}

/// The cache version: the `path` input as written and the compression, as actions/cache
/// computes it (so an entry saved for other paths never matches).
fn version(paths: &str) -> String {
    let lines: Vec<&str> = paths.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    blake3::hash(format!("{}|zstd-without-long|1.0", lines.join("\n")).as_bytes()).to_hex()[..16].to_owned()
}

impl LocalCache {
    /// An empty cache in `dir` with GitHub's 10 GB budget.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), limit: 10 << 30 }
    }

    /// Every entry and reservation, oldest first.
    pub fn entries(&self) -> Vec<CacheEntry> {
        let text = std::fs::read_to_string(self.dir.join("index")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.splitn(9, '\t').collect();
                let number = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
                Some(CacheEntry {
                    id: number(0)?,
                    created: number(1)?,
                    accessed: number(2)?,
                    size: number(3)?,
                    pending: *f.get(4)? == "pending",
                    repository: (*f.get(5)?).to_owned(),
                    scope: (*f.get(6)?).to_owned(),
                    version: (*f.get(7)?).to_owned(),
                    key: (*f.get(8)?).to_owned(),
                })
            })
            .collect()
    }

    fn write_index(&self, entries: &[CacheEntry]) {
        std::fs::create_dir_all(&self.dir).expect("cache dir");
        let text: String = entries
            .iter()
            .map(|e| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    e.id,
                    e.created,
                    e.accessed,
                    e.size,
                    if e.pending { "pending" } else { "ready" },
                    e.repository,
                    e.scope,
                    e.version,
                    e.key
                )
            })
            .collect();
        std::fs::write(self.dir.join("index"), text).expect("write the cache index");
    }

    fn clock(entries: &[CacheEntry]) -> u64 {
        entries.iter().map(|e| e.created.max(e.accessed)).max().map_or(1, |c| c + 1)
    }

    /// As the service matches (case-insensitively), scope by scope (this ref, the base
    /// branch, the default branch): the exact key, else the newest entry whose key starts
    /// with the key, else with each restore key in order. Only entries of this repository
    /// and version match.
    pub fn find(&self, trigger: &Trigger, version: &str, key: &str, restore_keys: &[&str]) -> Option<CacheEntry> {
        let entries: Vec<CacheEntry> = self
            .entries()
            .into_iter()
            .filter(|e| !e.pending && e.repository == trigger.repository && e.version == version)
            .collect();
        let lower = |text: &str| text.to_ascii_lowercase();
        trigger.restore_scopes().iter().find_map(|scope| {
            let in_scope: Vec<&CacheEntry> = entries.iter().filter(|e| &e.scope == scope).collect();
            if let Some(entry) = in_scope.iter().find(|e| lower(&e.key) == lower(key)) {
                return Some((*entry).clone());
            }
            std::iter::once(key).chain(restore_keys.iter().copied()).find_map(|prefix| {
                in_scope
                    .iter()
                    .filter(|e| lower(&e.key).starts_with(&lower(prefix)))
                    .max_by_key(|e| e.created)
                    .map(|e| (*e).clone())
            })
        })
    }

    /// Unpacks an entry into its paths and marks it used (for eviction).
    fn restore(&self, entry: &CacheEntry, paths: &[PathBuf]) {
        for (index, path) in paths.iter().enumerate() {
            let archive = self.dir.join(entry.id.to_string()).join(format!("{index}.tar.zst"));
            if archive.exists() {
                untar(&archive, path);
            }
        }
        let mut entries = self.entries();
        let now = Self::clock(&entries);
        if let Some(e) = entries.iter_mut().find(|e| e.id == entry.id) {
            e.accessed = now;
        }
        self.write_index(&entries);
    }

    /// Reserves `key` for a save in flight elsewhere (another job of the same run), as the
    /// service does between a job's reserve and commit calls.
    pub fn reserve_elsewhere(&self, trigger: &Trigger, version_of_paths: &str, key: &str) {
        let mut entries = self.entries();
        let now = Self::clock(&entries);
        let id = entries.iter().map(|e| e.id + 1).max().unwrap_or(0);
        entries.push(CacheEntry {
            id,
            created: now,
            accessed: now,
            size: 0,
            pending: true,
            repository: trigger.repository.clone(),
            scope: trigger.git_ref.clone(),
            version: version(version_of_paths),
            key: key.to_owned(),
        });
        self.write_index(&entries);
    }

    /// Saves `paths` under `key` in the trigger's scope, then evicts past the limit.
    fn save(&self, trigger: &Trigger, version: &str, key: &str, paths: &[PathBuf]) -> Result<(), String> {
        let mut entries = self.entries();
        let taken = entries.iter().any(|e| {
            e.repository == trigger.repository
                && e.scope == trigger.git_ref
                && e.version == version
                && e.key.eq_ignore_ascii_case(key)
        });
        if taken {
            return Err(format!(
                "Unable to reserve cache with key {key}, another job may be creating this cache. \
                 More details: Cache already exists."
            ));
        }
        let id = entries.iter().map(|e| e.id + 1).max().unwrap_or(0);
        let dir = self.dir.join(id.to_string());
        std::fs::create_dir_all(&dir).expect("cache entry dir");
        let mut size = 0;
        for (index, path) in paths.iter().enumerate() {
            if !path.exists() {
                continue;
            }
            let archive = dir.join(format!("{index}.tar.zst"));
            let status = Command::new("tar")
                .args(["-I", "zstd -T0", "-cf"])
                .arg(&archive)
                .arg("-C")
                .arg(path)
                .arg(".")
                .status()
                .expect("tar");
            assert!(status.success(), "tar | zstd {}", path.display());
            size += std::fs::metadata(&archive).map_or(0, |m| m.len());
        }
        let now = Self::clock(&entries);
        entries.push(CacheEntry {
            id,
            created: now,
            accessed: now,
            size,
            pending: false,
            repository: trigger.repository.clone(),
            scope: trigger.git_ref.clone(),
            version: version.to_owned(),
            key: key.to_owned(),
        });
        // Over budget: the least recently used entries go first.
        while entries.iter().map(|e| e.size).sum::<u64>() > self.limit {
            let Some(oldest) = entries.iter().filter(|e| !e.pending).min_by_key(|e| e.accessed).map(|e| e.id) else {
                break;
            };
            let _ = std::fs::remove_dir_all(self.dir.join(oldest.to_string()));
            entries.retain(|e| e.id != oldest);
        }
        self.write_index(&entries);
        Ok(())
    }

    /// The keys saved so far, oldest first.
    pub fn keys(&self) -> Vec<String> {
        self.entries().into_iter().filter(|e| !e.pending).map(|e| e.key).collect()
    }

    /// The (first path's) archive saved under `key`.
    pub fn archive(&self, key: &str) -> Option<PathBuf> {
        let entry = self.entries().into_iter().find(|e| !e.pending && e.key == key)?;
        Some(self.dir.join(entry.id.to_string()).join("0.tar.zst"))
    }

    /// The entry saved under `key`.
    pub fn entry(&self, key: &str) -> Option<CacheEntry> {
        self.entries().into_iter().find(|e| !e.pending && e.key == key)
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
    outcomes: BTreeMap<String, String>,
    github: BTreeMap<String, String>,
    runner: BTreeMap<String, String>,
    failed: bool,
    cancelled: bool,
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
            ["steps", id, "outcome" | "conclusion"] => self.outcomes.get(*id).cloned(),
            ["github", rest @ ..] => self.github.get(&rest.join(".")).cloned(),
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
        } else if "(),!".contains(c) && !(c == '!' && chars.get(i + 1) == Some(&'=')) {
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
            let mut args = Vec::new();
            while self.peek() != Some(")") {
                args.push(self.or().text());
                if self.peek() == Some(",") {
                    self.next();
                }
            }
            assert_eq!(self.next(), ")", "closing parenthesis of `{token}()`");
            return call(&token, &args, self.cx);
        }
        match token.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            path => self.cx.lookup(path),
        }
    }
}

/// The expression functions the action uses.
fn call(name: &str, args: &[String], cx: &Context) -> Value {
    let lower = |i: usize| args.get(i).map(|a| a.to_ascii_lowercase()).unwrap_or_default();
    match name {
        "always" => Value::Bool(true),
        "success" => Value::Bool(!cx.failed && !cx.cancelled),
        "failure" => Value::Bool(cx.failed),
        "cancelled" => Value::Bool(cx.cancelled),
        "startsWith" => Value::Bool(lower(0).starts_with(&lower(1))),
        "endsWith" => Value::Bool(lower(0).ends_with(&lower(1))),
        "contains" => Value::Bool(lower(0).contains(&lower(1))),
        "format" => {
            let mut text = args.first().cloned().unwrap_or_default();
            for (index, arg) in args.iter().skip(1).enumerate() {
                text = text.replace(&format!("{{{index}}}"), arg);
            }
            Value::Str(text)
        }
        other => panic!("the simulator does not know `{other}()`"),
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
    cx.github.insert("ref".into(), "refs/heads/main".into());
    cx.github.insert("event.repository.default_branch".into(), "main".into());
    assert!(truthy(&cx.eval("github.ref == format('refs/heads/{0}', github.event.repository.default_branch)")));
    assert!(!truthy(&cx.eval("cancelled()")));
    cx.cancelled = true;
    assert!(truthy(&cx.eval("cancelled()")) && !truthy(&cx.eval("success()")) && truthy(&cx.eval("always()")));
}

#[test]
fn the_cache_scopes_versions_and_evicts_as_the_service_does() {
    let dir = tempfile::tempdir().expect("cache dir");
    let mut cache = LocalCache::new(dir.path());
    let workspace = tempfile::tempdir().expect("workspace");
    let data = workspace.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("f"), "x".repeat(1000)).expect("write");
    let v = version("data");
    let main = Trigger::push("main");
    let feature = Trigger::push("feature");
    let pr = Trigger::pull_request(7, "feature", "release");
    cache.save(&feature, &v, "k-feature", std::slice::from_ref(&data)).expect("save");
    cache.save(&main, &v, "k-main", std::slice::from_ref(&data)).expect("save");
    // A branch sees its own entries, then the default branch's.
    assert_eq!(cache.find(&feature, &v, "k-", &[]).map(|e| e.key), Some("k-feature".into()));
    assert_eq!(cache.find(&Trigger::push("other"), &v, "k-", &[]).map(|e| e.key), Some("k-main".into()));
    // A pull request sees its merge ref, its base branch, the default branch; not its head branch.
    assert_eq!(cache.find(&pr, &v, "k-", &[]).map(|e| e.key), Some("k-main".into()));
    cache.save(&Trigger::push("release"), &v, "k-release", std::slice::from_ref(&data)).expect("save");
    assert_eq!(cache.find(&pr, &v, "k-", &[]).map(|e| e.key), Some("k-release".into()));
    cache.save(&pr, &v, "k-pr", std::slice::from_ref(&data)).expect("save");
    assert_eq!(cache.find(&pr, &v, "k-", &[]).map(|e| e.key), Some("k-pr".into()));
    assert_eq!(
        cache.find(&Trigger::pull_request(8, "x", "main"), &v, "k-pr", &["k-"]).map(|e| e.key),
        Some("k-main".into())
    );
    // A fork is another repository; another version (paths) never matches.
    assert!(cache.find(&main.clone().in_repository("someone/kiln"), &v, "k-", &[]).is_none());
    assert!(cache.find(&main, &version("other"), "k-main", &[]).is_none());
    // Keys are immutable per scope and version.
    assert!(cache.save(&main, &v, "k-main", std::slice::from_ref(&data)).is_err());
    cache.reserve_elsewhere(&main, "data", "k-busy");
    assert!(cache.save(&main, &v, "k-busy", std::slice::from_ref(&data)).is_err());
    // Least recently used first: k-feature restored now, so k-main goes.
    let size = cache.entry("k-main").expect("entry").size;
    let feature_entry = cache.entry("k-feature").expect("entry");
    cache.restore(&feature_entry, &[workspace.path().join("restored")]);
    cache.limit = size * 4;
    cache.save(&main, &v, "k-new", std::slice::from_ref(&data)).expect("save");
    let keys = cache.keys();
    assert!(!keys.contains(&"k-main".to_owned()) && keys.contains(&"k-feature".to_owned()), "{keys:?}");
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
pub fn xtask() -> String {
    format!("{} --accel tcg", env!("CARGO_BIN_EXE_kiln-it"))
}

/// Runs the action on `project` for riscv64 with kiln as `xtask`, with `extra` inputs.
pub fn run(project: &Project, cache: &LocalCache, artifacts: &Path, extra: &[(&str, &str)]) -> JobRun {
    run_job(project, cache, artifacts, Job::with_inputs(extra))
}

/// Runs `job` on `project`, for riscv64 with kiln as `xtask` unless the job says otherwise.
pub fn run_job(project: &Project, cache: &LocalCache, artifacts: &Path, mut job: Job) -> JobRun {
    let xtask = xtask();
    let mut inputs: Vec<(String, String)> = [("arch", "riscv64"), ("xtask", xtask.as_str()), ("install-deps", "false")]
        .iter()
        .filter(|(name, _)| !job.inputs.iter().any(|(given, _)| given == name))
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    inputs.append(&mut job.inputs);
    job.inputs = inputs;
    if !job.env.iter().any(|(k, _)| k == "KILN_ACCEL") {
        job.env.push(("KILN_ACCEL".into(), "tcg".into()));
    }
    action().run(project.path(), &job, cache, artifacts)
}
