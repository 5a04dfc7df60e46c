//! Warm guests. A booted snapshot (made once, kept in the store) is restored for every use;
//! a keeper process holds restored guests ready: a pool of idle ones that `run --pool`
//! leases and throws away, or one long-lived session guest that `vm exec|shell|sync` lease
//! in turn. A lease hands over the agent's connection itself (SCM_RIGHTS on a Unix socket),
//! so a leased guest answers at once; the keeper kills a pool guest when its lease's
//! connection closes, whether the leaseholder finished or was killed.

pub mod keeper;
pub mod lease;
pub mod sync;
pub mod target;

pub use target::{Guest, SnapshotTarget};
