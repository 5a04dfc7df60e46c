//! Bad Kiln.toml files fail with exit code 2 and a message that names line and key.

use kiln::{clap::Parser, cli::Cli};

use crate::support::Project;

#[test]
fn typo_in_a_key_exits_2_naming_the_line_and_the_closest_key() {
    let project = Project::example(
        "[artifact.hello]\npackage = \"hello-kernel\"\npath = \"examples/kernel\"\n\n\
         [case.smoke]\nartifact = \"hello\"\nsucess = \"ok\"\n",
    );
    assert_eq!(project.kiln(&["test"]), kiln::exit_code::USAGE);
    let file = project.path().join("Kiln.toml");
    let cli = Cli::try_parse_from(["kiln", "--config", &file.display().to_string(), "test"]).expect("cli");
    let err = kiln::commands::context(&cli.global).expect_err("typo");
    let text = kiln::xtask::render_error(&err);
    assert!(text.contains("unknown key `sucess` in `[case.smoke]`"), "{text}");
    assert!(text.contains("Kiln.toml:7:1, key `case.smoke.sucess`"), "{text}");
    assert!(text.contains("help: a key with a similar name exists: `success`"), "{text}");
}

#[test]
fn unknown_case_on_the_command_line_exits_2() {
    let project = Project::example(
        "[artifact.hello]\npackage = \"hello-kernel\"\npath = \"examples/kernel\"\n\n\
         [case.smoke]\nartifact = \"hello\"\n",
    );
    assert_eq!(project.kiln(&["test", "smok"]), kiln::exit_code::USAGE);
    assert_eq!(project.kiln(&["test", "--arch", "sparc"]), kiln::exit_code::USAGE);
}
