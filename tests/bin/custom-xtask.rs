//! A user's own xtask: kiln's commands flattened beside a verb of its own, `pack`, which is
//! a custom step cached in kiln's store. The tested example of `kiln::xtask::Run`.

use std::process::ExitCode;

use kiln::{
    clap::{self, Parser, Subcommand},
    xtask::{Cx, GlobalArgs, Run},
};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// kiln's commands: test, build, qemu, store, ...
    #[command(flatten)]
    Kiln(kiln::xtask::Command),
    /// Pack every built kernel into one image with a header (a cached custom step).
    Pack,
}

impl Run for Cmd {
    fn run(self, global: &GlobalArgs) -> anyhow::Result<u8> {
        match self {
            Cmd::Kiln(command) => command.run(global),
            Cmd::Pack => pack(&Cx::from_args(global)?),
        }
    }
}

fn pack(cx: &Cx) -> anyhow::Result<u8> {
    // Every artifact on every arch, through kiln's store: only the facade is used.
    let built = cx.build(&[], &[])?;
    let mut step = cx.step("pack").setting("format", "kiln-pack-1");
    for artifact in &built {
        step = step.input_build(artifact);
    }
    let (out, _) = step.build(|out| {
        let mut image = b"KILNPACK".to_vec();
        for artifact in &built {
            for path in &artifact.images {
                image.extend_from_slice(&std::fs::read(path)?);
            }
        }
        std::fs::write(out.join("pack.img"), image)?;
        Ok(())
    })?;
    println!("{}", out.join("pack.img").display());
    Ok(kiln::exit_code::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kiln::xtask::run_with(&cli.global, cli.command)
}
