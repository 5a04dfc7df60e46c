//! Bad Kiln.toml files fail with exit code 2 and a message that names line and key.

use crate::support::Project;

#[test]
fn typo_in_a_key_exits_2_naming_the_line_and_the_closest_key() {
    let project = Project::example(
        "[artifact.hello]\npackage = \"hello-kernel\"\npath = \"examples/kernel\"\n\n\
         [case.smoke]\nartifact = \"hello\"\nsucess = \"ok\"\n",
    );
    let output = project.command(&["test"]).output().expect("kiln runs");
    assert_eq!(output.status.code(), Some(i32::from(kiln::exit_code::USAGE)));
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.starts_with("error: "), "{text}");
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

#[test]
fn wrong_package_name_exits_2_pointing_at_the_key() {
    let project = Project::example(
        "[artifact.hello]\npackage = \"hello-kernl\"\npath = \"examples/kernel\"\n\n\
         [case.smoke]\nartifact = \"hello\"\n",
    );
    let output = project.command(&["build"]).output().expect("kiln runs");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(i32::from(kiln::exit_code::USAGE)), "{text}");
    assert!(text.contains("Kiln.toml:2:11, key `artifact.hello.package`"), "{text}");
    assert!(text.contains("help: a package with a similar name exists: `hello-kernel`"), "{text}");
}

#[test]
fn target_of_another_arch_is_rejected() {
    let project = Project::example(
        "[artifact.hello]\npackage = \"hello-kernel\"\npath = \"examples/kernel\"\n\
         target.riscv64 = \"x86_64-unknown-none\"\n",
    );
    let output = project.command(&["config"]).output().expect("kiln runs");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(i32::from(kiln::exit_code::USAGE)), "{text}");
    assert!(text.contains("target `x86_64-unknown-none` is not a target for riscv64"), "{text}");
}
