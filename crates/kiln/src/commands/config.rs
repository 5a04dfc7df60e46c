//! `config`: print the resolved configuration as a Kiln.toml that kiln reads back unchanged.

use std::{fmt::Write as _, io::Write as _, path::Path};

use kiln_qemu::{BootMethod, Console, Device, Firmware, accel::Accel};

use crate::{
    config::{
        CaseGuest, Config, FetchSource, KernelSource, LayerSource, RootfsFormat, StepCommand, TestSettings, toml_key,
    },
    cx::Cx,
    exit_code,
};

/// Prints every artifact, machine (with its rendered QEMU command) and case, defaults applied.
pub(super) fn run(cx: &Cx) -> anyhow::Result<u8> {
    let text = render(cx.config(), cx.store().root())?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(exit_code::SUCCESS)
}

fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.into_iter().map(quote).collect();
    format!("[{}]", quoted.join(", "))
}

fn path(path: &Path) -> String {
    quote(&path.display().to_string())
}

/// The resolved configuration as Kiln.toml text, every default written out.
pub fn render(config: &Config, store: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "# {} with every default written out (`cargo xtask config`)", config.file.display())?;
    writeln!(out, "\n[store]\npath = {}", path(store))?;
    if !config.remotes.is_empty() {
        writeln!(out, "remotes = [")?;
        for remote in &config.remotes {
            let mut table = format!("url = {}, push = {}", quote(&remote.url), remote.push);
            if let Some(endpoint) = &remote.endpoint {
                table.push_str(&format!(", endpoint = {}", quote(endpoint)));
            }
            if let Some(region) = &remote.region {
                table.push_str(&format!(", region = {}", quote(region)));
            }
            table.push_str(&format!(", timeout = {}", quote(&humantime::format_duration(remote.timeout).to_string())));
            writeln!(out, "  {{ {table} }},")?;
        }
        writeln!(out, "]")?;
    }
    if !config.trusted_keys.is_empty() {
        let keys: Vec<String> = config.trusted_keys.iter().map(ToString::to_string).collect();
        writeln!(out, "trusted-keys = {}", list(keys.iter().map(String::as_str)))?;
    }
    for artifact in config.artifacts.values() {
        writeln!(out, "\n[artifact.{}]", toml_key(&artifact.name))?;
        writeln!(out, "package = {}", quote(&artifact.package))?;
        writeln!(out, "path = {}", path(&artifact.dir))?;
        writeln!(out, "arches = {}", list(artifact.arches.iter().map(|a| a.as_str())))?;
        for (arch, triple) in &artifact.targets {
            writeln!(out, "target.{arch} = {}", quote(triple))?;
        }
        writeln!(out, "profile = {}", quote(&artifact.profile))?;
        writeln!(out, "features = {}", list(artifact.features.iter().map(String::as_str)))?;
        writeln!(out, "no-default-features = {}", artifact.no_default_features)?;
        if let Some(bin) = &artifact.bin {
            writeln!(out, "bin = {}", quote(bin))?;
        }
        writeln!(out, "kind = {}", quote(&format!("{:?}", artifact.kind).to_lowercase()))?;
        if let Some(crates) = &artifact.build_std {
            writeln!(out, "build-std = {}", list(crates.iter().map(String::as_str)))?;
        }
        writeln!(out, "build-std-features = {}", list(artifact.build_std_features.iter().map(String::as_str)))?;
        for (name, value) in &artifact.env {
            writeln!(out, "env.{} = {}", toml_key(name), quote(value))?;
        }
        writeln!(out, "rustflags = {}", list(artifact.rustflags.iter().map(String::as_str)))?;
        writeln!(out, "image = {}", quote(&format!("{:?}", artifact.image).to_lowercase()))?;
        writeln!(out, "steps = {}", list(artifact.steps.iter().map(|step| step.name.as_str())))?;
    }
    for step in config.steps.values() {
        writeln!(out, "\n[step.{}]", toml_key(&step.name))?;
        match &step.command {
            StepCommand::Argv(argv) => writeln!(out, "command = {}", list(argv.iter().map(String::as_str)))?,
            StepCommand::Script(script) => writeln!(out, "script = {}", quote(script))?,
        }
        writeln!(out, "inputs = {}", list(step.inputs.iter().map(String::as_str)))?;
        let outputs: Vec<String> = step.outputs.iter().map(|o| o.display().to_string()).collect();
        writeln!(out, "outputs = {}", list(outputs.iter().map(String::as_str)))?;
        for (name, value) in &step.env {
            writeln!(out, "env.{} = {}", toml_key(name), quote(value))?;
        }
        if !step.cwd.as_os_str().is_empty() {
            writeln!(out, "cwd = {}", path(&step.cwd))?;
        }
        writeln!(out, "steps = {}", list(step.needs.iter().map(String::as_str)))?;
    }
    for machine in config.machines.values() {
        writeln!(out, "\n[machine.{}]", toml_key(&machine.name))?;
        writeln!(out, "arch = {}", quote(machine.arch.as_str()))?;
        writeln!(out, "machine = {}", quote(&machine.machine_type))?;
        if let Some(cpu) = &machine.cpu {
            writeln!(out, "cpu = {}", quote(cpu))?;
        }
        if let Some(memory) = machine.memory_mib {
            writeln!(out, "memory = \"{memory}M\"")?;
        }
        if let Some(smp) = machine.smp {
            writeln!(out, "smp = {smp}")?;
        }
        let firmware = match &machine.firmware {
            Firmware::MachineDefault => quote("machine"),
            Firmware::Bundled => quote("default"),
            Firmware::None => quote("none"),
            Firmware::File(file) => path(file),
            Firmware::Named(name) => quote(&format!("qemu:{name}")),
            // Only the boots of `image = "uefi"` artifacts get OVMF, never a profile.
            Firmware::Uefi(ovmf) => path(&ovmf.code),
        };
        writeln!(out, "firmware = {firmware}")?;
        writeln!(out, "args = {}", list(machine.extra_args.iter().map(String::as_str)))?;
        writeln!(out, "semihosting = {}", machine.devices.contains(&Device::Semihosting))?;
        let others = machine.devices.iter().filter_map(|d| match d {
            Device::Other(device) => Some(device.as_str()),
            _ => None,
        });
        writeln!(out, "devices = {}", list(others))?;
        let boot = match machine.boot {
            BootMethod::Kernel => "kernel",
            BootMethod::Disk => "disk",
        };
        writeln!(out, "boot = {}", quote(boot))?;
        let argv = machine.argv(Path::new("KERNEL"), Accel::Tcg, Console::Captured);
        writeln!(out, "# runs: {} {}", machine.arch.qemu_binary(), argv.display())?;
    }
    render_images(config, &mut out)?;
    for case in config.cases.values() {
        writeln!(out, "\n[case.{}]", toml_key(&case.name))?;
        match &case.guest {
            CaseGuest::Artifact(artifact) => writeln!(out, "artifact = {}", quote(artifact))?,
            CaseGuest::Linux { kernel, rootfs, command, snapshot } => {
                writeln!(out, "kernel = {}", quote(kernel))?;
                writeln!(out, "rootfs = {}", quote(rootfs))?;
                writeln!(out, "command = {}", quote(command))?;
                writeln!(out, "snapshot = {snapshot}")?;
            }
        }
        writeln!(out, "machines = {}", list(case.machines.iter().map(String::as_str)))?;
        if let Some(success) = &case.success {
            writeln!(out, "success = {}", quote(success.as_str()))?;
        }
        if let Some(failure) = &case.failure {
            writeln!(out, "failure = {}", quote(failure.as_str()))?;
        }
        if let Some(codes) = &case.success_exit_codes {
            let codes: Vec<String> = codes.iter().map(i32::to_string).collect();
            writeln!(out, "success-exit-codes = [{}]", codes.join(", "))?;
        }
        writeln!(out, "expect = {}", quote(&format!("{:?}", case.expect).to_lowercase()))?;
        writeln!(out, "timeout = {}", quote(&humantime::format_duration(case.timeout).to_string()))?;
        if let Some(silent) = case.no_output_timeout {
            writeln!(out, "no-output-timeout = {}", quote(&humantime::format_duration(silent).to_string()))?;
        }
        writeln!(out, "stop-on-success = {}", case.stop_on_success)?;
        if let Some(text) = &case.input.text {
            writeln!(out, "input = {}", quote(text))?;
        }
        if let Some(after) = &case.input.after {
            writeln!(out, "input-after = {}", quote(after.as_str()))?;
        }
        for test in &case.tests {
            writeln!(out, "\n[case.{}.test.{}]", toml_key(&case.name), toml_key(&test.name))?;
            render_test(test, &mut out)?;
        }
    }
    Ok(out)
}

/// The keys a `[case.NAME.test.TEST]` table sets (`""` for a pattern or input it clears).
fn render_test(test: &TestSettings, out: &mut String) -> anyhow::Result<()> {
    let cleared = |value: &Option<regex::Regex>| value.as_ref().map_or_else(|| quote(""), |re| quote(re.as_str()));
    if let Some(success) = &test.success {
        writeln!(out, "success = {}", cleared(success))?;
    }
    if let Some(failure) = &test.failure {
        writeln!(out, "failure = {}", cleared(failure))?;
    }
    if let Some(codes) = &test.success_exit_codes {
        let codes: Vec<String> = codes.iter().map(i32::to_string).collect();
        writeln!(out, "success-exit-codes = [{}]", codes.join(", "))?;
    }
    if let Some(expect) = test.expect {
        writeln!(out, "expect = {}", quote(&format!("{expect:?}").to_lowercase()))?;
    }
    if let Some(timeout) = test.timeout {
        writeln!(out, "timeout = {}", quote(&humantime::format_duration(timeout).to_string()))?;
    }
    if let Some(silent) = test.no_output_timeout {
        writeln!(out, "no-output-timeout = {}", quote(&humantime::format_duration(silent).to_string()))?;
    }
    if let Some(stop) = test.stop_on_success {
        writeln!(out, "stop-on-success = {stop}")?;
    }
    if let Some(input) = &test.input {
        writeln!(out, "input = {}", quote(input.as_deref().unwrap_or_default()))?;
    }
    if let Some(after) = &test.input_after {
        writeln!(out, "input-after = {}", quote(after.as_str()))?;
    }
    Ok(())
}

/// `[fetch]`, `[kernel]`, `[rootfs]` and `[run]`.
fn render_images(config: &Config, out: &mut String) -> anyhow::Result<()> {
    for fetch in config.fetches.values() {
        writeln!(out, "\n[fetch.{}]", toml_key(&fetch.name))?;
        match &fetch.source {
            FetchSource::Url(url) => writeln!(out, "url = {}", quote(url))?,
            FetchSource::Path(file) => writeln!(out, "path = {}", path(file))?,
            FetchSource::GithubRelease { repository, tag, asset } => {
                writeln!(out, "github-release = {}\ntag = {}\nasset = {}", quote(repository), quote(tag), quote(asset))?
            }
        }
        writeln!(out, "{} = {}", fetch.hash.algorithm.as_str(), quote(&fetch.hash.hex))?;
    }
    for kernel in config.kernels.values() {
        writeln!(out, "\n[kernel.{}]", toml_key(&kernel.name))?;
        writeln!(out, "arches = {}", list(kernel.arches.iter().map(|a| a.as_str())))?;
        match &kernel.source {
            KernelSource::Deb(name) => writeln!(out, "deb = {}", quote(&name.0))?,
            KernelSource::Image(name) => writeln!(out, "image = {}", quote(&name.0))?,
        }
        writeln!(out, "cmdline = {}", list(kernel.cmdline.iter().map(String::as_str)))?;
        writeln!(out, "modules = {}", list(kernel.modules.iter().map(String::as_str)))?;
    }
    for rootfs in config.rootfses.values() {
        writeln!(out, "\n[rootfs.{}]", toml_key(&rootfs.name))?;
        writeln!(out, "arches = {}", list(rootfs.arches.iter().map(|a| a.as_str())))?;
        match rootfs.format {
            RootfsFormat::Initramfs(compression) => {
                writeln!(out, "format = \"initramfs\"\ncompression = {}", quote(compression.as_str()))?
            }
            RootfsFormat::Ext4 => writeln!(out, "format = \"ext4\"")?,
            RootfsFormat::Qcow2 => writeln!(out, "format = \"qcow2\"")?,
        }
        writeln!(out, "init = {}", rootfs.init)?;
        if let Some(size) = rootfs.size_mib {
            writeln!(out, "size = {size}")?;
        }
        writeln!(out, "layers = [")?;
        for layer in &rootfs.layers {
            let source = match &layer.source {
                LayerSource::Busybox(name) => format!("busybox = {}", quote(&name.0)),
                LayerSource::Deb(name) => format!("deb = {}", quote(&name.0)),
                LayerSource::Tarball(name) => format!("tarball = {}", quote(&name.0)),
                LayerSource::Dir(dir) => format!("dir = {}", path(dir)),
                LayerSource::File(file) => format!("file = {}", path(file)),
                LayerSource::Artifact(name) => format!("artifact = {}", quote(name)),
                LayerSource::Text(text) => format!("text = {}", quote(text)),
            };
            let mode = layer.mode.map(|m| format!(", mode = \"{m:04o}\"")).unwrap_or_default();
            writeln!(out, "  {{ {source}, dest = {}{mode} }},", quote(&layer.dest))?;
        }
        writeln!(out, "]")?;
    }
    let run = &config.run;
    writeln!(out, "\n[run]")?;
    if let Some(kernel) = &run.kernel {
        writeln!(out, "kernel = {}", quote(kernel))?;
    }
    if let Some(rootfs) = &run.rootfs {
        writeln!(out, "rootfs = {}", quote(rootfs))?;
    }
    writeln!(out, "timeout = {}", quote(&humantime::format_duration(run.timeout).to_string()))?;
    writeln!(out, "env = {}", list(run.env.iter().map(String::as_str)))?;
    writeln!(out, "files = {}", list(run.files.iter().map(String::as_str)))?;
    writeln!(out, "snapshot = {}", run.snapshot)?;
    match run.pool {
        kiln_types::PoolSize::Guests(count) => writeln!(out, "pool = {count}")?,
        kiln_types::PoolSize::Auto => writeln!(out, "pool = \"auto\"")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    #[test]
    fn rendered_config_reads_back_to_the_same_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("k")).expect("mkdir");
        std::fs::write(dir.path().join("k/Cargo.toml"), "[package]\nname = \"k\"\n").expect("write");
        let text = "[artifact.a]\npackage = \"k\"\npath = \"k\"\nfeatures = [\"x\"]\nbuild-std = [\"core\"]\nenv.A = \"1\"\nimage = \"raw\"\nsteps = [\"ld\"]\n\
                    [machine.big]\narch = \"aarch64\"\ncpu = \"max\"\nmemory = \"1G\"\nargs = [\"-d\", \"int\"]\n\
                    [machine.pi]\narch = \"aarch64\"\nmachine = \"raspi3b\"\ndevices = [\"usb-kbd\"]\nboot = \"disk\"\n\
                    [case.c]\nartifact = \"a\"\nmachines = [\"big\", \"riscv64\"]\nsuccess = \"^ok \\\\d+$\"\n\
                    no-output-timeout = \"1m 30s\"\nsuccess-exit-codes = [0, 33]\ninput = \"go\\r\"\n\
                    [artifact.t]\npackage = \"k\"\npath = \"k\"\nkind = \"tests\"\n\
                    [case.t]\nartifact = \"t\"\nsuccess = \"ok\"\n\
                    [case.t.test.\"k::bin/k\"]\nsuccess = \"\"\nexpect = \"fail\"\n\
                    [case.t.test.idle]\nstop-on-success = true\ntimeout = \"5s\"\ninput = \"ping\\r\"\ninput-after = \"^> $\"\n\
                    [step.ld]\ncommand = [\"cp\", \"k/a.ld\", \"k/b.ld\"]\ninputs = [\"k/*.ld\"]\noutputs = [\"k/b.ld\"]\nsteps = [\"pre\"]\n\
                    [step.pre]\nscript = \"touch k/pre\"\noutputs = [\"k/pre\"]\nenv.BOARD = \"qemu\"\ncwd = \".\"\n";
        std::fs::write(dir.path().join("k/a.ld"), "SECTIONS {}").expect("write");
        let file = dir.path().join("Kiln.toml");
        let read = |text: &str| {
            Config::parse(Source { path: "Kiln.toml".into(), text: text.to_owned() }, &file).expect("valid")
        };
        let first = render(&read(text), &dir.path().join("store")).expect("render");
        let second = render(&read(&first), &dir.path().join("store")).expect("render");
        assert_eq!(first, second);
        assert!(first.contains("cpu = \"max\""), "{first}");
        assert!(first.contains("[case.t.test.\"k::bin/k\"]\nsuccess = \"\"\nexpect = \"fail\"\n"), "{first}");
        assert!(first.contains("input = \"ping\\r\"\ninput-after = \"^> $\"\n"), "{first}");
        assert!(first.contains("image = \"raw\"\nsteps = [\"pre\", \"ld\"]\n"), "steps in run order: {first}");
        assert!(
            first.contains("[step.pre]\nscript = \"touch k/pre\"\ninputs = []\noutputs = [\"k/pre\"]\nenv.BOARD"),
            "{first}"
        );
    }
}
