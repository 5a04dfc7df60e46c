//! The on-disk store: one immutable entry per closure hash.
//!
//! ```text
//! <root>/entries/<closure>/out/       the output tree
//! <root>/entries/<closure>/meta.toml  derivation, output hash, build time, host, kiln version
//! <root>/tmp/<closure>.<pid>.<n>/      entries being built (never visible as entries)
//! <root>/locks/<closure>.lock         one builder per closure at a time
//! <root>/temproots/<pid>.<n>          closures a live process uses (locked while it runs)
//! ```
//! An entry becomes visible with one `rename` after its files, its metadata and their
//! directories were synced, so a crash at any instant leaves either no entry or a whole one.

use std::{
    fs::{self, File},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{ClosureHash, Derivation, OutputHash, StoreError, hash_tree};

/// Metadata recorded beside each entry's output.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EntryMeta {
    /// Human name of what was built (an artifact name).
    pub name: String,
    /// Hash of the output tree.
    pub output_hash: String,
    /// How long the build took, in seconds.
    pub build_seconds: f64,
    /// Host name of the machine that built it.
    pub host: String,
    /// Version of kiln that built it.
    pub kiln_version: String,
    /// When it was built, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// The derivation, with every input hash.
    pub derivation: Derivation,
}

/// A published store entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The closure hash naming it.
    pub closure: ClosureHash,
    /// Its directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub meta: EntryMeta,
}

impl Entry {
    /// The directory holding the output tree.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// What [`Store::gc`] removed.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Removed entries: closure, name, bytes.
    pub removed: Vec<(ClosureHash, String, u64)>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Entries kept.
    pub kept: usize,
    /// Entries kept because a running kiln process uses them.
    pub in_use: usize,
}

/// A name as a file name: characters other than ASCII letters, digits, `-`, `_` and `.` become `_`.
fn name_file(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// Whether [`Store::build`] ran the builder, found the entry, or fetched it from a remote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildOutcome {
    /// The entry was already in the store.
    Cached,
    /// A remote had the entry; it was verified and added to the store.
    Substituted {
        /// The remote's URL.
        from: String,
        /// How long fetching and verifying took.
        duration: Duration,
        /// Bytes downloaded.
        bytes: u64,
    },
    /// The builder ran and its output was published.
    Built {
        /// How long the builder took.
        duration: Duration,
        /// What was wrong with an entry of the same name that was removed first.
        replaced: Option<Damage>,
    },
}

/// Why a published entry cannot be used as it is; the store removes it and builds again.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// The recorded derivation hashes to another closure: the entry holds another build's
    /// output and metadata (a swapped or forged cache).
    WrongName {
        /// The closure the recorded derivation hashes to.
        recorded: ClosureHash,
    },
    /// The output directory is gone.
    MissingOutput,
    /// The output no longer has the hash recorded when it was built.
    ChangedOutput,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WrongName { recorded } => write!(
                f,
                "its recorded derivation hashes to {}, not to the entry's name (another build's entry under this name)",
                recorded.short()
            ),
            Self::MissingOutput => f.write_str("its output directory is missing"),
            Self::ChangedOutput => f.write_str("its output no longer has the hash recorded when it was built"),
        }
    }
}

/// An entry a [`Substituter`] fetched: its output is in the directory it was given.
#[derive(Clone, Debug)]
pub struct Substitution {
    /// The entry's `meta.toml`, byte for byte as it was signed.
    pub meta_text: String,
    /// The parsed metadata.
    pub meta: EntryMeta,
    /// Where it came from.
    pub from: String,
    /// Bytes downloaded.
    pub bytes: u64,
    /// How long it took.
    pub duration: Duration,
}

/// Where the store looks for an entry before building it, and hears of every entry a run
/// settles (built or found), e.g. to push it.
pub trait Substituter: Send + Sync + std::fmt::Debug {
    /// Writes the output of `closure` into `out` (an empty directory) when a verified copy
    /// exists somewhere; `None` leaves `out` empty.
    fn substitute(&self, closure: &ClosureHash, out: &Path) -> Option<Substitution>;
    /// [`Substituter::substitute`] for a caller that builds the entry itself when nothing is
    /// found: a substituter shared by machines that run at the same time may wait for another
    /// machine building it, or tell the others that this one builds it (until
    /// [`Substituter::settled`] or [`Substituter::abandoned`]).
    fn substitute_or_claim(&self, closure: &ClosureHash, out: &Path) -> Option<Substitution> {
        self.substitute(closure, out)
    }
    /// Called when building `closure` failed after [`Substituter::substitute_or_claim`] found
    /// nothing: no entry will be settled for it.
    fn abandoned(&self, _closure: &ClosureHash) {}
    /// Called with every entry [`Store::build`] returns.
    fn settled(&self, entry: &Entry);
}

/// The file beside an entry's `out/` recording the stamps of its files when they last
/// matched the recorded output hash: a hit whose stamps are unchanged is not rehashed.
const VERIFIED_FILE: &str = "verified";

/// The directory of the temporary roots of live processes.
const TEMP_ROOTS_DIR: &str = "temproots";

/// The version of the store's on-disk layout (entries, metadata, locks); CI cache keys carry
/// it, so a cache written by an incompatible kiln is never restored.
pub const STORE_FORMAT: u32 = 1;

/// A content-addressed store rooted at a directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    substituter: Option<std::sync::Arc<dyn Substituter>>,
    temp_roots: std::sync::Arc<TempRoots>,
}

/// The closures this process has looked up or made, written to a file of its own under
/// `temproots/` that it holds locked while it lives: garbage collection keeps every closure
/// named in a locked file, and removes the files of processes that are gone (Nix's
/// temporary roots). A closure is added before it is looked up, under the shared store
/// lock, so a collection either sees it or finishes before the lookup.
#[derive(Debug, Default)]
struct TempRoots {
    state: std::sync::Mutex<TempRootsFile>,
}

/// The locked file of [`TempRoots`] and its path, made at the first root, and the closures
/// it names.
#[derive(Debug, Default)]
struct TempRootsFile {
    file: Option<(File, PathBuf)>,
    added: std::collections::HashSet<ClosureHash>,
}

impl Drop for TempRoots {
    /// The process's roots go with its last store handle, still locked while removed; what a
    /// killed process leaves is removed by the next collection.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_locked, path)) = state.file.take() {
            let _ = fs::remove_file(&path);
        }
    }
}

impl Store {
    /// Opens (creating when missing) the store at `root`, and removes what dead builders
    /// left in its temp directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in ["entries", "tmp", "locks", "uses", "pins", "names", TEMP_ROOTS_DIR] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
        }
        let store = Self { root, substituter: None, temp_roots: Default::default() };
        store.remove_dead_temp_dirs()?;
        Ok(store)
    }

    /// Removes temp dirs whose builder is gone: for a closure's build, its lock is free; for
    /// other work (imports), the process that made it has exited.
    fn remove_dead_temp_dirs(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(|e| StoreError::io("read directory", &tmp, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.split('.');
            let first = parts.next().unwrap_or_default();
            // The closure's lock is held while its dead builder's directory is removed.
            let (dead, _held) = match first.parse::<ClosureHash>() {
                Ok(closure) => {
                    let lock = self.root.join("locks").join(format!("{closure}.lock"));
                    match File::create(&lock) {
                        Ok(file) if file.try_lock().is_ok() => (true, Some(file)),
                        _ => (false, None),
                    }
                }
                Err(_) => {
                    let pid = parts.next().and_then(|pid| pid.parse::<u32>().ok());
                    (pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()), None)
                }
            };
            if dead {
                remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Looks entries up in `substituter` before building them, and tells it of every entry
    /// [`Store::build`] returns.
    pub fn with_substituter(mut self, substituter: std::sync::Arc<dyn Substituter>) -> Self {
        self.substituter = Some(substituter);
        self
    }

    /// The substituter, when there is one.
    pub fn substituter(&self) -> Option<&std::sync::Arc<dyn Substituter>> {
        self.substituter.as_ref()
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory an entry lives in (whether or not it exists).
    pub fn entry_dir(&self, closure: &ClosureHash) -> PathBuf {
        self.root.join("entries").join(closure.to_string())
    }

    /// The published entry for `closure`, if there is one.
    pub fn lookup(&self, closure: &ClosureHash) -> Result<Option<Entry>, StoreError> {
        let dir = self.entry_dir(closure);
        let meta_path = dir.join("meta.toml");
        let text = match fs::read_to_string(&meta_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", &meta_path, e)),
        };
        let meta = toml::from_str(&text).map_err(|e| StoreError::CorruptMeta {
            closure: *closure,
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(Entry { closure: *closure, dir, meta }))
    }

    /// Returns the entry for `derivation`, running `builder` to make it when it is missing.
    ///
    /// `builder` writes the output tree into the directory it is given. Only one process
    /// builds a closure at a time: a second one calls `on_wait` and waits for the first, then
    /// reuses its entry.
    pub fn build<F>(
        &self,
        derivation: &Derivation,
        name: &str,
        on_wait: impl FnOnce(),
        builder: F,
    ) -> Result<(Entry, BuildOutcome), StoreError>
    where
        F: FnOnce(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    {
        let (entry, outcome) = self.build_unsettled(derivation, name, on_wait, builder)?;
        if let Some(substituter) = &self.substituter {
            substituter.settled(&entry);
        }
        Ok((entry, outcome))
    }

    fn build_unsettled<F>(
        &self,
        derivation: &Derivation,
        name: &str,
        on_wait: impl FnOnce(),
        builder: F,
    ) -> Result<(Entry, BuildOutcome), StoreError>
    where
        F: FnOnce(&Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    {
        let closure = derivation.closure_hash();
        self.add_temp_root(&closure)?;
        if let Ok(Some(entry)) = self.lookup(&closure)
            && self.damage(&entry)?.is_none()
        {
            return Ok((entry, BuildOutcome::Cached));
        }
        let _gc_guard = self.lock_shared_gc()?;
        let _lock = self.lock_closure(&closure, on_wait)?;
        let mut replaced = None;
        match self.lookup(&closure) {
            Ok(Some(entry)) => {
                let Some(damage) = self.damage(&entry)? else {
                    return Ok((entry, BuildOutcome::Cached));
                };
                self.remove_entry(&closure)?;
                replaced = Some(damage);
            }
            Ok(None) => {}
            // Unreadable metadata is corruption like any other: rebuild the entry.
            Err(StoreError::CorruptMeta { .. }) => {
                self.remove_entry(&closure)?;
                replaced = Some(Damage::ChangedOutput);
            }
            Err(err) => return Err(err),
        }
        self.remove_stale_temp_dirs(&closure)?;

        let temp = self.temp_for(&closure)?;
        if let Some(substituted) = self.substitute_into(&temp, &closure, true)? {
            return Ok(substituted);
        }
        let out = temp.join("out");
        let started = Instant::now();
        let built = builder(&out).map_err(|source| StoreError::Build { name: name.to_owned(), source });
        let duration = started.elapsed();
        let published = built.and_then(|()| self.publish(&temp, &closure, derivation, name, duration));
        if published.is_err() {
            let _ = remove_tree(&temp);
            if let Some(substituter) = &self.substituter {
                substituter.abandoned(&closure);
            }
        }
        Ok((published?, BuildOutcome::Built { duration, replaced }))
    }

    /// Fetches `closure` from the substituter unless the store has it intact; `None` when no
    /// remote has a verified copy.
    pub fn pull(&self, closure: &ClosureHash) -> Result<Option<(Entry, BuildOutcome)>, StoreError> {
        self.add_temp_root(closure)?;
        if let Some(entry) = self.lookup(closure)?
            && self.damage(&entry)?.is_none()
        {
            return Ok(Some((entry, BuildOutcome::Cached)));
        }
        if self.substituter.is_none() {
            return Ok(None);
        }
        let _gc_guard = self.lock_shared_gc()?;
        let _lock = self.lock_closure(closure, || {})?;
        if let Some(entry) = self.lookup(closure)? {
            if self.damage(&entry)?.is_none() {
                return Ok(Some((entry, BuildOutcome::Cached)));
            }
            self.remove_entry(closure)?;
        }
        self.remove_stale_temp_dirs(closure)?;
        let temp = self.temp_for(closure)?;
        let substituted = self.substitute_into(&temp, closure, false)?;
        if substituted.is_none() {
            remove_tree(&temp)?;
        }
        Ok(substituted)
    }

    /// A fresh temp directory for making `closure`, holding an empty `out/`.
    fn temp_for(&self, closure: &ClosureHash) -> Result<PathBuf, StoreError> {
        let temp = self.root.join("tmp").join(format!("{closure}.{}.{}", std::process::id(), unique_suffix()));
        let out = temp.join("out");
        fs::create_dir_all(&out).map_err(|e| StoreError::io("create directory", &out, e))?;
        Ok(temp)
    }

    /// Asks the substituter to fill `temp/out` (called under the closure's lock) and
    /// publishes what it fetched; `None` leaves `temp` as it was. `building`: the caller
    /// builds the entry when nothing is found.
    fn substitute_into(
        &self,
        temp: &Path,
        closure: &ClosureHash,
        building: bool,
    ) -> Result<Option<(Entry, BuildOutcome)>, StoreError> {
        let out = temp.join("out");
        let found = self
            .substituter
            .as_ref()
            .and_then(|s| if building { s.substitute_or_claim(closure, &out) } else { s.substitute(closure, &out) });
        let Some(found) = found else {
            return Ok(None);
        };
        let published = self.publish_meta(temp, closure, &found.meta_text, found.meta);
        if published.is_err() {
            let _ = remove_tree(temp);
        }
        let outcome = BuildOutcome::Substituted { from: found.from, duration: found.duration, bytes: found.bytes };
        Ok(Some((published?, outcome)))
    }

    /// What is wrong with an entry found under its name, checked on every hit: its recorded
    /// derivation must hash to the name (a microsecond: the derivation is a few hundred
    /// bytes), and its output must have the recorded hash. The output is rehashed unless the
    /// stamps of its files (inode, size, times) are those recorded, with the name, when it
    /// last matched, so a changed file is always caught and an unchanged entry of any size
    /// costs a walk of its directory. An entry restored by a CI cache has new inodes and is
    /// rehashed once.
    fn damage(&self, entry: &Entry) -> Result<Option<Damage>, StoreError> {
        if let Some(damage) = Self::cheap_damage(entry) {
            return Ok(Some(damage));
        }
        let out = entry.out_dir();
        let record = entry.dir.join(VERIFIED_FILE);
        let stamps = crate::tree::stamp_tree(&out)?;
        let expected =
            stamps.map(|stamps| format!("{} {} {}\n", entry.closure, entry.meta.output_hash, stamps.to_hex()));
        if let Some(expected) = &expected
            && fs::read_to_string(&record).is_ok_and(|recorded| &recorded == expected)
        {
            return Ok(None);
        }
        if Self::output_changed(entry)? {
            return Ok(Some(Damage::ChangedOutput));
        }
        if let Some(expected) = expected {
            // Best effort: without the record the next hit rehashes again.
            let temp = entry.dir.join(format!("{VERIFIED_FILE}.{}.{}", std::process::id(), unique_suffix()));
            if fs::write(&temp, expected).is_ok() && fs::rename(&temp, &record).is_err() {
                let _ = fs::remove_file(&temp);
            }
        }
        Ok(None)
    }

    /// What is wrong with an entry without reading its files: a recorded derivation that
    /// names another closure, or no output directory.
    fn cheap_damage(entry: &Entry) -> Option<Damage> {
        let recorded = entry.meta.derivation.closure_hash();
        if recorded != entry.closure {
            return Some(Damage::WrongName { recorded });
        }
        (!entry.out_dir().is_dir()).then_some(Damage::MissingOutput)
    }

    /// Whether the output, rehashed now, differs from the recorded output hash.
    fn output_changed(entry: &Entry) -> Result<bool, StoreError> {
        Ok(hash_tree(&entry.out_dir())?.to_string() != entry.meta.output_hash)
    }

    /// Checks an entry in full, whatever was recorded before: its recorded derivation hashes
    /// to its name and its output, rehashed now, has the recorded hash.
    pub fn check(&self, entry: &Entry) -> Result<Option<Damage>, StoreError> {
        if let Some(damage) = Self::cheap_damage(entry) {
            return Ok(Some(damage));
        }
        Ok(Self::output_changed(entry)?.then_some(Damage::ChangedOutput))
    }

    /// Removes an entry: it disappears with one rename, then its files are deleted.
    pub fn remove_entry(&self, closure: &ClosureHash) -> Result<(), StoreError> {
        let dir = self.entry_dir(closure);
        let doomed =
            self.root.join("tmp").join(format!("{closure}.removed.{}.{}", std::process::id(), unique_suffix()));
        match fs::rename(&dir, &doomed) {
            Ok(()) => remove_tree(&doomed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove entry", &dir, e)),
        }
    }

    /// Every published entry, sorted by name. Entries whose metadata cannot be read are
    /// returned as errors beside the others, so one bad entry does not hide the rest.
    pub fn entries(&self) -> Result<Vec<Result<Entry, StoreError>>, StoreError> {
        let dir = self.root.join("entries");
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("read directory", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("read directory", &dir, e))?;
            let Ok(closure) = entry.file_name().to_string_lossy().parse::<ClosureHash>() else { continue };
            match self.lookup(&closure) {
                Ok(Some(found_entry)) => found.push(Ok(found_entry)),
                Ok(None) => found.push(Err(StoreError::CorruptMeta {
                    closure,
                    path: entry.path().join("meta.toml"),
                    message: "the metadata file is missing".to_owned(),
                })),
                Err(err) => found.push(Err(err)),
            }
        }
        found.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => (&a.meta.name, a.meta.created_unix).cmp(&(&b.meta.name, b.meta.created_unix)),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        });
        Ok(found)
    }

    /// Total size in bytes of an entry's files.
    pub fn entry_size(&self, entry: &Entry) -> u64 {
        tree_size(&entry.dir).unwrap_or(0)
    }

    /// Records that an entry was used now; `gc --keep-days` keeps recently used entries.
    pub fn mark_used(&self, closure: &ClosureHash) -> Result<(), StoreError> {
        let path = self.root.join("uses").join(closure.to_string());
        let file = File::create(&path).map_err(|e| StoreError::io("record use in", &path, e))?;
        file.set_modified(SystemTime::now()).map_err(|e| StoreError::io("record use in", &path, e))
    }

    /// When an entry was last used (or built).
    pub fn last_used(&self, entry: &Entry) -> SystemTime {
        fs::metadata(self.root.join("uses").join(entry.closure.to_string()))
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| UNIX_EPOCH + Duration::from_secs(entry.meta.created_unix))
    }

    /// Remembers `closure` as the latest build of `name`, so `why` can compare with it.
    pub fn record_name(&self, name: &str, closure: &ClosureHash) -> Result<(), StoreError> {
        // Most commands find what the last one recorded: nothing to write then.
        if self.recorded(name).as_ref() == Some(closure) {
            return Ok(());
        }
        let path = self.root.join("names").join(name_file(name));
        let temp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&temp, closure.to_string()).map_err(|e| StoreError::io("write", &temp, e))?;
        fs::rename(&temp, &path).map_err(|e| StoreError::io("write", &path, e))
    }

    /// The latest closure recorded for `name`.
    pub fn recorded(&self, name: &str) -> Option<ClosureHash> {
        fs::read_to_string(self.root.join("names").join(name_file(name))).ok()?.trim().parse().ok()
    }

    /// Pins an entry: garbage collection keeps it whatever Kiln.toml says.
    pub fn pin(&self, closure: &ClosureHash, label: &str) -> Result<(), StoreError> {
        let path = self.root.join("pins").join(closure.to_string());
        fs::write(&path, label).map_err(|e| StoreError::io("write", &path, e))
    }

    /// Removes a pin; returns whether there was one.
    pub fn unpin(&self, closure: &ClosureHash) -> Result<bool, StoreError> {
        let path = self.root.join("pins").join(closure.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("remove", &path, e)),
        }
    }

    /// The pinned closures with their labels.
    pub fn pins(&self) -> Result<Vec<(ClosureHash, String)>, StoreError> {
        let dir = self.root.join("pins");
        let mut pins = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("read directory", &dir, e))?.flatten() {
            if let Ok(closure) = entry.file_name().to_string_lossy().parse::<ClosureHash>() {
                pins.push((closure, fs::read_to_string(entry.path()).unwrap_or_default()));
            }
        }
        pins.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(pins)
    }

    /// Removes every entry that is neither in `roots` nor pinned nor (with `keep_since`)
    /// used since then. Runs under the store-wide lock, so no build is publishing meanwhile.
    pub fn gc(
        &self,
        roots: &std::collections::HashSet<ClosureHash>,
        keep_since: Option<SystemTime>,
        dry_run: bool,
    ) -> Result<GcReport, StoreError> {
        let path = self.root.join("locks").join("gc.lock");
        let lock = File::create(&path).map_err(|e| StoreError::io("create lock", &path, e))?;
        lock.lock().map_err(|e| StoreError::io("lock", &path, e))?;
        let pinned: std::collections::HashSet<ClosureHash> = self.pins()?.into_iter().map(|(c, _)| c).collect();
        let in_use = self.live_temp_roots(dry_run)?;
        let mut report = GcReport::default();
        for entry in self.entries()?.into_iter().flatten() {
            let recent = keep_since.is_some_and(|since| self.last_used(&entry) >= since);
            if in_use.contains(&entry.closure) {
                report.in_use += 1;
            }
            if roots.contains(&entry.closure)
                || pinned.contains(&entry.closure)
                || in_use.contains(&entry.closure)
                || recent
            {
                report.kept += 1;
                continue;
            }
            let bytes = self.entry_size(&entry);
            if !dry_run {
                self.remove_entry(&entry.closure)?;
                let _ = fs::remove_file(self.root.join("uses").join(entry.closure.to_string()));
                let _ = fs::remove_file(self.root.join("locks").join(format!("{}.lock", entry.closure)));
            }
            report.freed_bytes += bytes;
            report.removed.push((entry.closure, entry.meta.name.clone(), bytes));
        }
        if !dry_run {
            self.remove_idle_lock_files()?;
        }
        Ok(report)
    }

    /// Removes the lock files of closures that have no entry and no builder (failed or
    /// killed builds); runs under the exclusive store lock.
    fn remove_idle_lock_files(&self) -> Result<(), StoreError> {
        let dir = self.root.join("locks");
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("read directory", &dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(closure) = name.strip_suffix(".lock").and_then(|c| c.parse::<ClosureHash>().ok()) else {
                continue;
            };
            if self.entry_dir(&closure).exists() {
                continue;
            }
            if let Ok(file) = File::open(entry.path())
                && file.try_lock().is_ok()
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Adds `closure` to this process's temporary roots (once per closure).
    fn add_temp_root(&self, closure: &ClosureHash) -> Result<(), StoreError> {
        let mut state = self.temp_roots.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.added.contains(closure) {
            return Ok(());
        }
        let (file, _) = match &mut state.file {
            Some(file) => file,
            none => {
                let path = self.root.join(TEMP_ROOTS_DIR).join(format!("{}.{}", std::process::id(), unique_suffix()));
                let created = File::create_new(&path).map_err(|e| StoreError::io("create", &path, e))?;
                created.lock().map_err(|e| StoreError::io("lock", &path, e))?;
                none.insert((created, path))
            }
        };
        // Under the shared store lock: a collection running now finishes first.
        let _gc_guard = self.lock_shared_gc()?;
        use std::io::Write as _;
        file.write_all(format!("{closure}\n").as_bytes())
            .map_err(|e| StoreError::io("record a temporary root in", &self.root.join(TEMP_ROOTS_DIR), e))?;
        state.added.insert(*closure);
        Ok(())
    }

    /// The closures live processes use; the files of dead ones are removed (unless
    /// `dry_run`). Called under the exclusive store lock.
    fn live_temp_roots(&self, dry_run: bool) -> Result<std::collections::HashSet<ClosureHash>, StoreError> {
        let dir = self.root.join(TEMP_ROOTS_DIR);
        let mut live = std::collections::HashSet::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("read directory", &dir, e))?.flatten() {
            let path = entry.path();
            let Ok(file) = File::open(&path) else { continue };
            match file.try_lock_shared() {
                // Nobody holds it: its process is gone.
                Ok(()) => {
                    if !dry_run {
                        let _ = fs::remove_file(&path);
                    }
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let text = fs::read_to_string(&path).map_err(|e| StoreError::io("read", &path, e))?;
                    live.extend(text.lines().filter_map(|line| line.parse::<ClosureHash>().ok()));
                }
                Err(fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &path, e)),
            }
        }
        Ok(live)
    }

    /// Removes every pin labelled `label`; returns how many there were.
    pub fn unpin_label(&self, label: &str) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (closure, pinned) in self.pins()? {
            if pinned == label && self.unpin(&closure)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Takes the store-wide lock in shared mode: builders share it, garbage collection
    /// takes it exclusively.
    pub(crate) fn lock_shared_gc(&self) -> Result<File, StoreError> {
        let path = self.root.join("locks").join("gc.lock");
        let file = File::create(&path).map_err(|e| StoreError::io("create lock", &path, e))?;
        file.lock_shared().map_err(|e| StoreError::io("lock", &path, e))?;
        Ok(file)
    }

    /// Publishes the output a builder wrote into `temp/out`, with new metadata.
    fn publish(
        &self,
        temp: &Path,
        closure: &ClosureHash,
        derivation: &Derivation,
        name: &str,
        duration: Duration,
    ) -> Result<Entry, StoreError> {
        let output_hash: OutputHash = hash_tree(&temp.join("out"))?;
        let meta = EntryMeta {
            name: name.to_owned(),
            output_hash: output_hash.to_string(),
            build_seconds: duration.as_secs_f64(),
            host: host_name(),
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            derivation: derivation.clone(),
        };
        let text = toml::to_string(&meta).map_err(|e| StoreError::CorruptMeta {
            closure: *closure,
            path: temp.join("meta.toml"),
            message: e.to_string(),
        })?;
        self.publish_meta(temp, closure, &text, meta)
    }

    /// Publishes `temp` (holding `out/`) as the entry `closure` with the metadata `text`.
    fn publish_meta(
        &self,
        temp: &Path,
        closure: &ClosureHash,
        text: &str,
        meta: EntryMeta,
    ) -> Result<Entry, StoreError> {
        let meta_path = temp.join("meta.toml");
        fs::write(&meta_path, text).map_err(|e| StoreError::io("write", &meta_path, e))?;
        make_read_only(&temp.join("out"))?;
        make_read_only(&meta_path)?;
        sync_tree(temp)?;
        let dir = self.entry_dir(closure);
        fs::rename(temp, &dir).map_err(|e| StoreError::io("publish entry", &dir, e))?;
        sync_dir(&self.root.join("entries"))?;
        Ok(Entry { closure: *closure, dir, meta })
    }

    /// Takes the lock of one closure, calling `on_wait` first when another process holds it.
    pub(crate) fn lock_closure(&self, closure: &ClosureHash, on_wait: impl FnOnce()) -> Result<File, StoreError> {
        let path = self.root.join("locks").join(format!("{closure}.lock"));
        let file = File::create(&path).map_err(|e| StoreError::io("create lock", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(|e| StoreError::io("lock", &path, e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &path, e)),
        }
        Ok(file)
    }

    /// Removes temp dirs of earlier builders of `closure`; only called under its lock, so
    /// every such dir belongs to a builder that died.
    fn remove_stale_temp_dirs(&self, closure: &ClosureHash) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        let prefix = format!("{closure}.");
        let entries = fs::read_dir(&tmp).map_err(|e| StoreError::io("read directory", &tmp, e))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let path = entry.path();
                remove_tree(&path)?;
            }
        }
        Ok(())
    }
}

fn unique_suffix() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

/// Total size of the files under `root`.
pub fn tree_size(root: &Path) -> Result<u64, StoreError> {
    let meta = fs::symlink_metadata(root).map_err(|e| StoreError::io("inspect", root, e))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(root).map_err(|e| StoreError::io("read directory", root, e))? {
        let entry = entry.map_err(|e| StoreError::io("read directory", root, e))?;
        total += tree_size(&entry.path())?;
    }
    Ok(total)
}

/// Drops write permission from every file under `root` (executable bits stay), so a
/// published entry is not changed by accident. Directories stay writable, so that
/// `rm -rf target` and `cargo clean` still work for people who are not root.
fn make_read_only(root: &Path) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(root).map_err(|e| StoreError::io("inspect", root, e))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        for entry in fs::read_dir(root).map_err(|e| StoreError::io("read directory", root, e))? {
            let entry = entry.map_err(|e| StoreError::io("read directory", root, e))?;
            make_read_only(&entry.path())?;
        }
        return Ok(());
    }
    let mode = meta.permissions().mode() & !0o222;
    fs::set_permissions(root, fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::io("set permissions of", root, e))
}

/// Removes a tree that may hold read-only directories.
pub(crate) fn remove_tree(root: &Path) -> Result<(), StoreError> {
    fn make_writable(path: &Path) {
        if let Ok(meta) = fs::symlink_metadata(path)
            && meta.is_dir()
        {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(meta.permissions().mode() | 0o700));
            if let Ok(entries) = fs::read_dir(path) {
                for entry in entries.flatten() {
                    make_writable(&entry.path());
                }
            }
        }
    }
    make_writable(root);
    match fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", root, e)),
    }
}

/// Syncs every file and directory under `root`, children before parents.
fn sync_tree(root: &Path) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(root).map_err(|e| StoreError::io("inspect", root, e))?;
    if meta.is_dir() {
        for entry in fs::read_dir(root).map_err(|e| StoreError::io("read directory", root, e))? {
            let entry = entry.map_err(|e| StoreError::io("read directory", root, e))?;
            sync_tree(&entry.path())?;
        }
        sync_dir(root)
    } else if meta.is_file() {
        File::open(root).and_then(|f| f.sync_all()).map_err(|e| StoreError::io("sync", root, e))
    } else {
        Ok(())
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(|e| StoreError::io("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derivation(tag: &str) -> Derivation {
        let mut drv = Derivation::new("test");
        drv.setting("tag", tag);
        drv
    }

    #[test]
    fn builds_once_then_hits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let drv = derivation("a");
        let (entry, outcome) =
            store.build(&drv, "a", || {}, |out| Ok(fs::write(out.join("file"), "data")?)).expect("build");
        assert!(matches!(outcome, BuildOutcome::Built { replaced: None, .. }));
        assert_eq!(fs::read_to_string(entry.out_dir().join("file")).expect("read"), "data");
        let (_, again) = store.build(&drv, "a", || {}, |_| Err("must not run".into())).expect("hit");
        assert_eq!(again, BuildOutcome::Cached);
    }

    #[test]
    fn published_entries_are_read_only_and_corruption_is_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let drv = derivation("d");
        let (entry, _) =
            store.build(&drv, "d", || {}, |out| Ok(fs::write(out.join("kernel"), "good")?)).expect("build");
        let kernel = entry.out_dir().join("kernel");
        assert_eq!(fs::metadata(&kernel).expect("stat").permissions().mode() & 0o222, 0);
        assert_eq!(store.check(&entry).expect("check"), None);

        fs::set_permissions(&kernel, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(&kernel, "evil").expect("corrupt");
        assert_eq!(store.check(&entry).expect("check"), Some(Damage::ChangedOutput));
        let (entry, outcome) =
            store.build(&drv, "d", || {}, |out| Ok(fs::write(out.join("kernel"), "good")?)).expect("rebuild");
        assert!(matches!(outcome, BuildOutcome::Built { replaced: Some(Damage::ChangedOutput), .. }), "{outcome:?}");
        assert_eq!(fs::read_to_string(entry.out_dir().join("kernel")).expect("read"), "good");
        store.remove_entry(&entry.closure).expect("remove");
        assert!(store.lookup(&entry.closure).expect("lookup").is_none());
    }

    /// A CI cache restore that put one kernel's entry (output, metadata and verified record)
    /// under another's closure: both hits are refused, named, and rebuilt.
    #[test]
    fn an_entry_swapped_under_another_name_is_refused_and_rebuilt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let (good, bad) = (derivation("good"), derivation("bad"));
        let build = |drv: &Derivation, content: &'static str| {
            store.build(drv, content, || {}, move |out| Ok(fs::write(out.join("kernel"), content)?)).expect("build")
        };
        let (good_entry, _) = build(&good, "good");
        let (bad_entry, _) = build(&bad, "bad");
        // Hit both once so each has its verified record, then swap the whole directories.
        build(&good, "good");
        build(&bad, "bad");
        let parked = dir.path().join("parked");
        fs::rename(&good_entry.dir, &parked).expect("park");
        fs::rename(&bad_entry.dir, &good_entry.dir).expect("swap");
        fs::rename(&parked, &bad_entry.dir).expect("swap");

        let swapped = store.lookup(&good.closure_hash()).expect("lookup").expect("entry");
        assert_eq!(store.check(&swapped).expect("check"), Some(Damage::WrongName { recorded: bad.closure_hash() }));
        let (entry, outcome) = build(&good, "good");
        assert!(
            matches!(&outcome, BuildOutcome::Built { replaced: Some(Damage::WrongName { .. }), .. }),
            "{outcome:?}"
        );
        assert_eq!(fs::read_to_string(entry.out_dir().join("kernel")).expect("read"), "good");
        assert_eq!(store.check(&entry).expect("check"), None);
    }

    #[test]
    fn failed_build_leaves_no_entry_and_no_temp_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let drv = derivation("b");
        let err = store.build(
            &drv,
            "b",
            || {},
            |out| {
                fs::write(out.join("half"), "x")?;
                Err("compiler exploded".into())
            },
        );
        assert!(matches!(err, Err(StoreError::Build { .. })));
        assert!(store.lookup(&drv.closure_hash()).expect("lookup").is_none());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0);
    }

    #[test]
    fn gc_keeps_roots_pins_and_recent_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let builder = Store::open(dir.path()).expect("open");
        let mut closures = Vec::new();
        for tag in ["root", "pinned", "garbage"] {
            let (entry, _) =
                builder.build(&derivation(tag), tag, || {}, |out| Ok(fs::write(out.join("f"), tag)?)).expect("build");
            closures.push(entry.closure);
        }
        // The builder is done: its temporary roots no longer keep anything.
        drop(builder);
        let store = Store::open(dir.path()).expect("open");
        store.pin(&closures[1], "pinned").expect("pin");
        let roots = std::collections::HashSet::from([closures[0]]);
        let dry = store.gc(&roots, None, true).expect("dry run");
        assert_eq!(dry.removed.len(), 1);
        assert!(store.lookup(&closures[2]).expect("lookup").is_some(), "a dry run removes nothing");
        let report = store.gc(&roots, None, false).expect("gc");
        assert_eq!(report.removed.iter().map(|r| r.0).collect::<Vec<_>>(), [closures[2]]);
        assert_eq!(report.kept, 2);
        assert!(store.lookup(&closures[2]).expect("lookup").is_none());
        assert!(store.unpin(&closures[1]).expect("unpin"));
        store.mark_used(&closures[1]).expect("use");
        let keep_since = SystemTime::now() - Duration::from_secs(60);
        assert!(store.gc(&roots, Some(keep_since), false).expect("gc").removed.is_empty(), "recently used");
    }

    /// A running command's entries survive a collection made meanwhile by another process
    /// (another handle here: each holds its own locked root file), and go once it is done.
    #[test]
    fn gc_keeps_what_a_live_store_handle_uses_and_forgets_it_when_it_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = Store::open(dir.path()).expect("open");
        let (entry, _) = running
            .build(&derivation("in-use"), "in-use", || {}, |out| Ok(fs::write(out.join("f"), "x")?))
            .expect("build");
        let collector = Store::open(dir.path()).expect("open");
        let report = collector.gc(&Default::default(), None, false).expect("gc");
        assert!(report.removed.is_empty(), "{:?}", report.removed);
        assert_eq!((report.kept, report.in_use), (1, 1));
        assert!(collector.lookup(&entry.closure).expect("lookup").is_some());

        drop(running);
        let report = collector.gc(&Default::default(), None, false).expect("gc");
        assert_eq!(report.removed.iter().map(|r| r.0).collect::<Vec<_>>(), [entry.closure]);
        assert_eq!(fs::read_dir(dir.path().join(TEMP_ROOTS_DIR)).expect("temproots").count(), 0, "dead roots swept");
    }

    #[test]
    fn a_store_handle_s_temp_roots_go_when_it_ends_not_at_the_next_collection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.build(&derivation("a"), "a", || {}, |out| Ok(fs::write(out.join("f"), "x")?)).expect("build");
        let roots = || fs::read_dir(dir.path().join(TEMP_ROOTS_DIR)).expect("temproots").count();
        assert_eq!(roots(), 1, "a live handle's roots are on disk");
        let clone = store.clone();
        drop(store);
        assert_eq!(roots(), 1, "another handle of the process still uses them");
        drop(clone);
        assert_eq!(roots(), 0, "the last handle takes them away");
    }

    #[test]
    fn stale_temp_dirs_of_dead_builders_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let drv = derivation("c");
        let stale = dir.path().join("tmp").join(format!("{}.999999.1", drv.closure_hash()));
        fs::create_dir_all(stale.join("out")).expect("mkdir");
        store.build(&drv, "c", || {}, |_| Ok(())).expect("build");
        assert!(!stale.exists());
        fs::create_dir_all(stale.join("out")).expect("mkdir");
        let import = dir.path().join("tmp/import.4000000000.1");
        fs::create_dir_all(&import).expect("mkdir");
        Store::open(dir.path()).expect("reopen");
        assert!(!stale.exists() && !import.exists(), "opening the store sweeps dead builders' dirs");
    }
}
