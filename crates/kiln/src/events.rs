//! The one way the layers below `report` speak to people: typed [`Event`]s sent to a
//! [`Reporter`]. They say what happened (a build finished, a guest printed a line); `report`
//! decides how it looks (a status line, a progress bar, a JUnit element, nothing under `-q`).

use kiln_qemu::accel::{Accel, AccelChoice};
use kiln_store::{BuildOutcome, ClosureHash};
use kiln_types::Arch;

use crate::outcome::CaseResult;

/// What kind of store entry a build event is about; it picks the verb people read
/// (`Built`, `Fetched`, `Saved`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A cargo build, a kernel, a rootfs, the agent or a custom step.
    Build,
    /// A pinned download.
    Fetch,
    /// A booted snapshot.
    Snapshot,
}

/// Which boot (a case on a machine) an event is about.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BootRef<'a> {
    /// `case/machine`, the name reports use.
    pub label: &'a str,
    /// The case, with `[TEST]` after it for a test binary of a `kind = "tests"` artifact.
    pub case: &'a str,
    /// The machine profile's name.
    pub machine: &'a str,
    /// The architecture.
    pub arch: Arch,
}

/// Something kiln did that people may want to know.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event<'a> {
    /// A cargo-style status line: a verb, then the message.
    Status {
        /// `Waiting`, `Snapshot`, ...
        verb: &'a str,
        /// What it is about.
        message: &'a str,
    },
    /// A status line shown only with `-v` (closure hashes, command lines).
    Detail {
        /// `Closure`, `Running`, ...
        verb: &'a str,
        /// What it is about.
        message: &'a str,
    },
    /// A warning (hidden by `-q`).
    Warning(&'a str),
    /// A warning shown even with `-q` and to cargo's quiet runner: something to fix, said once.
    Alert(&'a str),
    /// Another kiln holds the lock of an entry this one needs.
    BuildWaiting {
        /// What is being built, as people name it.
        what: &'a str,
    },
    /// A build starts (the store lacks its entry).
    BuildStarted {
        /// The name the store records it under (`hello-riscv64`, `fetch-busybox`).
        name: &'a str,
        /// What is built, as people name it.
        what: &'a str,
        /// Its closure.
        closure: ClosureHash,
        /// Which kind of entry.
        kind: EntryKind,
        /// More about how (`for riscv64gc-unknown-none-elf`), when there is more to say.
        how: Option<&'a str>,
    },
    /// An input that changed since the last build of the same name (`build --explain`).
    BuildReason {
        /// One changed setting or input.
        line: &'a str,
    },
    /// An entry is in the store: built now, found, or substituted from a remote.
    BuildFinished {
        /// The name the store records it under.
        name: &'a str,
        /// What it is.
        what: &'a str,
        /// Which kind of entry.
        kind: EntryKind,
        /// Its closure.
        closure: ClosureHash,
        /// How the store served it.
        outcome: &'a BuildOutcome,
    },
    /// A build (or download) failed; the error ends the command.
    BuildFailed {
        /// The name the store records it under.
        name: &'a str,
        /// What it is.
        what: &'a str,
        /// Which kind of entry.
        kind: EntryKind,
        /// Its closure.
        closure: ClosureHash,
        /// The error, rendered with its causes.
        error: &'a str,
    },
    /// A download starts; `total` when the server said its size.
    DownloadStarted {
        /// The fetch's name.
        name: &'a str,
        /// Its size.
        total: Option<u64>,
    },
    /// Bytes of a download arrived.
    DownloadProgress {
        /// The fetch's name.
        name: &'a str,
        /// Bytes so far.
        received: u64,
    },
    /// A download ended (well or not).
    DownloadEnded {
        /// The fetch's name.
        name: &'a str,
    },
    /// A request failed and is tried again (the message says when).
    Retrying {
        /// What failed, which try comes next, and after what wait.
        message: &'a str,
    },
    /// The accelerator for an architecture was chosen.
    AccelChosen {
        /// The architecture.
        arch: Arch,
        /// The choice and its reason.
        choice: &'a AccelChoice,
    },
    /// A boot started (one per attempt when a run is retried).
    CaseStarted {
        /// The case on its machine.
        boot: BootRef<'a>,
        /// The accelerator it runs under.
        accel: Accel,
        /// The rendered QEMU command line (or what a restored snapshot runs).
        command: &'a str,
    },
    /// The guest printed a line.
    SerialLine {
        /// The case on its machine.
        boot: BootRef<'a>,
        /// The line, decoded as UTF-8, ANSI escapes removed.
        line: &'a str,
        /// The bytes as the guest sent them, when they are not valid UTF-8.
        raw: Option<&'a [u8]>,
    },
    /// A boot ended.
    CaseFinished(&'a CaseResult),
}

/// Where events go: the printer on the terminal, or nowhere.
pub(crate) trait Reporter: Send + Sync + std::fmt::Debug {
    /// Takes one event.
    fn report(&self, event: Event<'_>);

    /// A status line.
    fn status(&self, verb: &str, message: &str) {
        self.report(Event::Status { verb, message });
    }

    /// A `-v` status line.
    fn detail(&self, verb: &str, message: &str) {
        self.report(Event::Detail { verb, message });
    }

    /// A warning.
    fn warn(&self, message: &str) {
        self.report(Event::Warning(message));
    }

    /// A warning that shows even with `-q`.
    fn alert(&self, message: &str) {
        self.report(Event::Alert(message));
    }
}
