//! Root filesystem images for kiln: assemble a [`Tree`] from busybox, Debian packages,
//! tarballs, host files and generated files, and write it as a cpio initramfs
//! ([`Tree::write_cpio`]), a host directory ([`Tree::write_dir`]), an ext4 image
//! ([`write_ext4`]) or qcow2 ([`convert_qcow2`]).
//!
//! Architecture invariant: this crate knows nothing about Kiln.toml, QEMU machines or the
//! store. It never follows a symlink inside a tree, never writes to the host while a tree is
//! assembled, and writes the same bytes for the same tree.

mod archive;
mod busybox;
mod bzimage;
mod deb;
mod decompress;
mod errors;
mod ext4;
mod host;
mod initramfs;
mod listing;
mod materialise;
mod path;
mod qcow2;
mod tool;
mod tree;
mod unpack;

pub use busybox::busybox_applets;
pub use bzimage::vmlinux_from_bzimage;
pub use deb::{DebInfo, deb_files};
pub use errors::{Error, MemberProblem, PathProblem, Result};
pub use ext4::{Ext4Options, write_ext4};
pub use initramfs::Compression;
pub use listing::{EntryKind, ListingEntry};
pub use qcow2::convert_qcow2;
pub use tree::{Data, Node, SpilledFile, Tree};
pub use unpack::{LayerReport, UnpackBudget, UnpackLimits};
