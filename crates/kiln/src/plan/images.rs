//! Kernels and rootfs recipes, lowered for one architecture: `{arch}` in fetch names
//! replaced, artifact layers named by build, the kernel's command line carried to its boots.

use kiln_types::Arch;

use super::{
    BuildKey, ImageKey, ImageKind, ImageRecipe, ImageStep, KernelFrom, KernelRecipe, LayerInput, LayerStep, LinuxGuest,
    RootfsRecipe,
};
use crate::config::{Config, KernelSource, LayerSource, RootfsFormat};

/// The step of `key`, when Kiln.toml declares it.
pub(super) fn image_step(config: &Config, key: ImageKey) -> Option<ImageStep> {
    let recipe = match key.kind {
        ImageKind::Kernel => {
            let kernel = config.kernels.get(&key.name)?;
            let (from, template) = match &kernel.source {
                KernelSource::Deb(template) => (KernelFrom::Deb, template),
                KernelSource::Image(template) => (KernelFrom::Image, template),
            };
            ImageRecipe::Kernel(KernelRecipe {
                from,
                fetch: template.for_arch(key.arch),
                modules: kernel.modules.clone(),
            })
        }
        ImageKind::Rootfs => {
            let rootfs = config.rootfses.get(&key.name)?;
            let layers = rootfs
                .layers
                .iter()
                .map(|layer| LayerStep {
                    source: layer_input(&layer.source, key.arch),
                    dest: layer.dest.clone(),
                    mode: layer.mode,
                })
                .collect();
            ImageRecipe::Rootfs(RootfsRecipe {
                format: rootfs.format,
                init: rootfs.init,
                size_mib: rootfs.size_mib,
                layers,
            })
        }
    };
    Some(ImageStep { key, recipe })
}

fn layer_input(source: &LayerSource, arch: Arch) -> LayerInput {
    match source {
        LayerSource::Busybox(template) => LayerInput::Busybox(template.for_arch(arch)),
        LayerSource::Deb(template) => LayerInput::Deb(template.for_arch(arch)),
        LayerSource::Tarball(template) => LayerInput::Tarball(template.for_arch(arch)),
        LayerSource::Dir(dir) => LayerInput::Dir(dir.clone()),
        LayerSource::File(file) => LayerInput::File(file.clone()),
        LayerSource::Artifact(name) => LayerInput::Artifact(BuildKey { artifact: name.clone(), arch }),
        LayerSource::Text(text) => LayerInput::Text(text.clone()),
    }
}

/// The kernel `kernel` and rootfs `rootfs` of Kiln.toml booted together on `arch`.
pub(super) fn linux_guest(config: &Config, kernel: &str, rootfs: &str, arch: Arch) -> LinuxGuest {
    LinuxGuest {
        kernel: ImageKey::kernel(kernel, arch),
        rootfs: ImageKey::rootfs(rootfs, arch),
        format: config
            .rootfses
            .get(rootfs)
            .map_or(RootfsFormat::Initramfs(crate::config::Compression::Gzip), |r| r.format),
        cmdline: config.kernels.get(kernel).map(|k| k.cmdline.clone()).unwrap_or_default(),
    }
}
