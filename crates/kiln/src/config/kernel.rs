//! `[kernel.NAME]`: a Linux kernel for one or more architectures, from a Debian package or an
//! image file.

use kiln_types::Arch;
use toml::Spanned;

use super::{
    ConfigError, Fetch, NameTemplate,
    raw::RawKernel,
    resolve::{Resolver, dedup},
};

/// `[kernel.NAME]`: a Linux kernel for one or more architectures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kernel {
    /// The kernel's name in Kiln.toml.
    pub name: String,
    /// Its architectures.
    pub arches: Vec<Arch>,
    /// Where the kernel image comes from.
    pub source: KernelSource,
    /// Kernel command-line arguments added to the machine's.
    pub cmdline: Vec<String>,
    /// Modules (with their dependencies) shipped beside the kernel for the guest to load,
    /// in addition to the ones kiln's init needs.
    pub modules: Vec<String>,
}

/// Where a kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KernelSource {
    /// A Debian `linux-image-*` package (a fetch): `/boot/vmlinuz-*` and its modules.
    Deb(NameTemplate),
    /// A kernel image file (a fetch) booted as it is, without modules.
    Image(NameTemplate),
}

impl Resolver<'_> {
    pub(super) fn arches(
        &self,
        key: String,
        raw: Option<&Spanned<Vec<Arch>>>,
        default: &[Arch],
    ) -> Result<Vec<Arch>, ConfigError> {
        match raw {
            Some(list) if list.get_ref().is_empty() => {
                Err(self.error(Some(list.span()), key, "`arches` is empty").with_help("list at least one architecture"))
            }
            Some(list) => Ok(dedup(list.get_ref().clone())),
            None => Ok(default.to_vec()),
        }
    }

    pub(super) fn kernel(
        &self,
        name: &str,
        raw: RawKernel,
        fetches: &std::collections::BTreeMap<String, Fetch>,
    ) -> Result<Kernel, ConfigError> {
        let key = |k: &str| format!("kernel.{name}.{k}");
        let arches = self.arches(key("arches"), raw.arches.as_ref(), &[Arch::X86_64, Arch::Aarch64])?;
        let source = match (raw.deb, raw.image) {
            (Some(deb), None) => {
                KernelSource::Deb(self.fetch_ref(key("deb"), Some(deb.span()), deb.get_ref(), &arches, fetches)?)
            }
            (None, Some(image)) => KernelSource::Image(self.fetch_ref(
                key("image"),
                Some(image.span()),
                image.get_ref(),
                &arches,
                fetches,
            )?),
            (Some(deb), Some(_)) => {
                return Err(self
                    .error(Some(deb.span()), key("deb"), format!("kernel `{name}` has both `deb` and `image`"))
                    .with_help("keep one of them"));
            }
            (None, None) => {
                return Err(self
                    .error(None, format!("kernel.{name}"), format!("kernel `{name}` says neither `deb` nor `image`"))
                    .with_help(
                        "add `deb = \"linux-{arch}\"` naming a `[fetch.linux-x86_64]` of a Debian linux-image package",
                    ));
            }
        };
        Ok(Kernel { name: name.to_owned(), arches, source, cmdline: raw.cmdline, modules: raw.modules })
    }
}
