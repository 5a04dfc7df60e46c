//! Warm guests. A booted snapshot (made once, kept in the store) is restored for every use;
//! a keeper process holds restored guests ready: a pool of idle ones that `run --pool`
//! leases and throws away, or one long-lived session guest that `vm exec|shell|sync` lease
//! in turn. A lease hands over the agent's connection itself (SCM_RIGHTS on a Unix socket),
//! so a leased guest answers at once; the keeper kills a pool guest when its lease's
//! connection closes, whether the leaseholder finished or was killed.
//!
//! Everything about keepers lives in [`keeper`]: the spec a keeper is started with (every
//! setting that enters the snapshot's closure), its spawning, socket names, discovery, idle
//! timeout and stop; [`lease`] is the socket protocol.

pub(crate) mod agent_client;
pub(crate) mod keeper;
pub(crate) mod lease;
pub(crate) mod program;
pub(crate) mod slots;
pub(crate) mod snapshot;
pub(crate) mod sync;
pub(crate) mod target;

pub(crate) use target::{LinuxTarget, SnapshotTarget};
