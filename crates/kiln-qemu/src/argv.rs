//! An argument list under construction.

use std::ffi::{OsStr, OsString};

/// QEMU's argument list; devices and profiles append to it, nothing edits it afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Argv(Vec<OsString>);

impl Argv {
    /// Appends one argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(arg.as_ref().to_owned());
        self
    }

    /// Appends an option and its value.
    pub fn pair(&mut self, flag: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.arg(flag).arg(value)
    }

    /// The arguments.
    pub fn as_slice(&self) -> &[OsString] {
        &self.0
    }

    /// The arguments as text, for logs and `--verbose` output.
    pub fn display(&self) -> String {
        self.0.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }
}
