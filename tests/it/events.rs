//! `--message-format json`: the event stream of a real `test` and `build` of the bundled
//! example's kernel on riscv64, read back with serde_json: its order, its closures (against
//! `-v` and the store), a failed verdict with its reason, the summary last, and the GitHub
//! step outputs equal to the summary's values.

use std::{collections::BTreeMap, path::Path, process::Output};

use serde_json::Value;

use crate::{action_sim::parse_key_values, support::Project};

/// Two cases on riscv64: `smoke` passes; `fails` boots the kernel built with its `fail`
/// feature, which exits with a failure status, so the case fails.
const KILN_TOML: &str = r#"
[artifact.hello]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]

[artifact.failing]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]
features = ["fail"]

[case.smoke]
artifact = "hello"
success = "^kiln-example: all checks passed$"

[case.fails]
artifact = "failing"
"#;

/// A case whose kernel cannot build: cargo refuses the feature.
const BROKEN_KILN_TOML: &str = r#"
[artifact.broken]
package = "hello-kernel"
path = "examples/kernel"
arches = ["riscv64"]
features = ["no-such-feature"]

[case.broken]
artifact = "broken"
"#;

/// Every stdout line as JSON; panics (showing the line) on one that is not an object.
fn events(output: &Output) -> Vec<Value> {
    let stdout = String::from_utf8(output.stdout.clone()).expect("the stream is UTF-8");
    stdout
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().expect("every line has a type")).collect()
}

fn positions(events: &[Value], kind: &str) -> Vec<usize> {
    events.iter().enumerate().filter(|(_, e)| e["type"] == kind).map(|(i, _)| i).collect()
}

/// `run-started` first, `summary` last and once, `format-version` 1 everywhere.
fn check_frame(events: &[Value], command: &str, exit_code: i32) -> Value {
    assert!(events.iter().all(|e| e["format-version"] == 1), "{events:#?}");
    let order = kinds(events);
    assert_eq!(order.first(), Some(&"run-started"), "{order:?}");
    assert_eq!(events[0]["command"], command);
    assert_eq!(order.iter().filter(|k| **k == "summary").count(), 1, "{order:?}");
    let summary = events.last().expect("lines").clone();
    assert_eq!(summary["type"], "summary", "{order:?}");
    assert_eq!(summary["command"], command);
    assert_eq!(summary["exit-code"], exit_code, "{summary}");
    summary
}

/// `what` → closure, from `-v`'s `Closure WHAT HASH` lines on stderr.
fn closures_said_by_verbose(stderr: &str) -> BTreeMap<String, String> {
    stderr
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("Closure "))
        .filter_map(|rest| rest.rsplit_once(' '))
        .map(|(what, hash)| (what.to_owned(), hash.to_owned()))
        .collect()
}

#[test]
fn test_and_build_write_an_ordered_versioned_stream_whose_summary_feeds_the_action() {
    let project = Project::example(KILN_TOML);
    let store = project.path().join("target/kiln/store");

    // Cold: both kernels are built, then booted; `fails` fails.
    let cold = project.command(&["-v", "--accel", "tcg", "test", "--message-format", "json"]).output().expect("kiln");
    let stderr = String::from_utf8_lossy(&cold.stderr);
    assert_eq!(cold.status.code(), Some(1), "one case fails:\n{stderr}");
    let stream = events(&cold);
    let summary = check_frame(&stream, "test", 1);
    let order = kinds(&stream);

    // Every build is reported before the first boot; each started build finishes.
    let first_boot = positions(&stream, "boot-started")[0];
    let finished = positions(&stream, "build-finished");
    assert!(finished.iter().all(|i| *i < first_boot), "{order:?}");
    for started in positions(&stream, "build-started") {
        let closure = &stream[started]["closure"];
        assert!(
            finished.iter().any(|i| *i > started && stream[*i]["closure"] == *closure),
            "build-started {} has no later build-finished",
            stream[started]
        );
    }
    // Closures: those `-v` prints, and entries in the store.
    let verbose = closures_said_by_verbose(&stderr);
    let mut built = 0;
    for i in &finished {
        let event = &stream[*i];
        let (what, closure) = (event["what"].as_str().expect("what"), event["closure"].as_str().expect("closure"));
        assert_eq!(verbose.get(what).map(String::as_str), Some(closure), "{event} against -v:\n{stderr}");
        assert!(store.join("entries").join(closure).is_dir(), "no store entry for {event}");
        assert_ne!(event["outcome"], "failed", "{event}");
        built += usize::from(event["outcome"] == "built");
    }
    for name in ["hello-riscv64", "failing-riscv64"] {
        let event = finished.iter().map(|i| &stream[*i]).find(|e| e["name"] == name);
        let event = event.unwrap_or_else(|| panic!("no build-finished for {name}: {order:?}"));
        assert_eq!(event["outcome"], "built", "a cold store builds {name}");
        assert!(event["seconds"].as_f64().is_some_and(|s| s > 0.0), "{event}");
    }

    // Per case: boot-started, its serial lines, then one verdict.
    for case in ["smoke", "fails"] {
        let of_case = |kind: &str| -> Vec<usize> {
            positions(&stream, kind).into_iter().filter(|i| stream[*i]["case"] == case).collect()
        };
        let (boots, lines, verdicts) = (of_case("boot-started"), of_case("serial-line"), of_case("verdict"));
        assert_eq!((boots.len(), verdicts.len()), (1, 1), "{case}: {order:?}");
        assert!(!lines.is_empty(), "{case} printed nothing?");
        assert!(lines.iter().all(|i| boots[0] < *i && *i < verdicts[0]), "{case}: {order:?}");
        let boot = &stream[boots[0]];
        assert_eq!(
            (&boot["arch"], &boot["machine"], &boot["accel"]),
            (&"riscv64".into(), &"riscv64".into(), &"tcg".into())
        );
        assert!(lines.iter().all(|i| stream[*i]["bytes"].is_null()), "the kernel prints UTF-8");
    }
    let verdict = |case: &str| stream.iter().find(|e| e["type"] == "verdict" && e["case"] == case).expect("verdict");
    let smoke = verdict("smoke");
    assert_eq!(
        (&smoke["result"], &smoke["status"], &smoke["attempts"]),
        (&"passed".into(), &"passed".into(), &1.into())
    );
    assert!(
        stream.iter().any(|e| e["type"] == "serial-line"
            && e["case"] == "smoke"
            && e["text"] == "kiln-example: all checks passed"),
        "the success line is in the stream"
    );
    assert!(Path::new(smoke["log"].as_str().expect("log")).is_file());
    let fails = verdict("fails");
    assert_eq!(
        (&fails["result"], &fails["status"], &fails["guest-verdict"]),
        (&"failed".into(), &"failed".into(), &"failed".into())
    );
    let reason = fails["reason"].as_str().expect("reason");
    assert!(reason.contains("exit status 1") && reason.contains("failing on purpose"), "why it failed: {reason}");

    assert_eq!(summary["cases"], serde_json::json!({"total": 2, "passed": 1, "flaky": 0, "failed": 1}));
    assert_eq!(summary["builds"]["built"], built, "{summary}");
    assert_eq!(summary["builds"]["failed"], 0);
    assert!(summary["error"].is_null());

    // Warm, as the action runs it: the step outputs are the summary event's values.
    let outputs = project.path().join("github-output");
    let step_summary = project.path().join("step-summary.md");
    std::fs::write(&outputs, "").expect("GITHUB_OUTPUT");
    let warm = project
        .command(&["-q", "--accel", "tcg", "test", "--message-format", "json"])
        .env("GITHUB_ACTIONS", "true")
        .env("CI", "true")
        .env("GITHUB_OUTPUT", &outputs)
        .env("GITHUB_STEP_SUMMARY", &step_summary)
        .output()
        .expect("kiln");
    assert_eq!(warm.status.code(), Some(1), "{}", String::from_utf8_lossy(&warm.stderr));
    let stream = events(&warm);
    let summary = check_frame(&stream, "test", 1);
    assert_eq!(summary["builds"]["built"], 0, "the second run builds nothing: {summary}");
    let step = parse_key_values(&std::fs::read_to_string(&outputs).expect("outputs"));
    assert_eq!(step["built"], summary["builds"]["built"].to_string());
    assert_eq!(step["cached"], summary["builds"]["cached"].to_string());
    assert_eq!(step["junit"], summary["junit"].as_str().expect("CI writes JUnit"));
    assert_eq!(step["passed"], "false");
    assert!(Path::new(&step["junit"]).is_file());

    // `build`: an `artifact` line per image instead of the plain stdout lines.
    let build = project.command(&["-q", "build", "--message-format", "json"]).output().expect("kiln");
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let stream = events(&build);
    let summary = check_frame(&stream, "build", 0);
    assert!(summary["cases"].is_null());
    let artifacts: Vec<&Value> = stream.iter().filter(|e| e["type"] == "artifact").collect();
    assert_eq!(artifacts.len(), 2, "{stream:#?}");
    for artifact in artifacts {
        assert!(Path::new(artifact["path"].as_str().expect("path")).is_file(), "{artifact}");
        assert!(store.join("entries").join(artifact["closure"].as_str().expect("closure")).is_dir());
    }

    // Stopped before it could run: the stream still ends with a summary saying why.
    let missing = project.path().join("nowhere/Kiln.toml");
    let early = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-it"))
        .arg("--config")
        .arg(&missing)
        .args(["test", "--message-format", "json"])
        .output()
        .expect("kiln");
    assert_eq!(early.status.code(), Some(2));
    let stream = events(&early);
    assert_eq!(kinds(&stream), ["run-started", "summary"]);
    let summary = check_frame(&stream, "test", 2);
    assert!(summary["error"].as_str().is_some_and(|e| e.contains("Kiln.toml")), "{summary}");

    // A build that fails: a failed build-finished with cargo's reason, then the summary.
    let broken_toml = project.path().join("Broken.toml");
    std::fs::write(&broken_toml, BROKEN_KILN_TOML).expect("write Broken.toml");
    let broken = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-it"))
        .arg("--config")
        .arg(&broken_toml)
        .args(["-q", "test", "--message-format", "json"])
        .output()
        .expect("kiln");
    assert_eq!(broken.status.code(), Some(1), "{}", String::from_utf8_lossy(&broken.stderr));
    let stream = events(&broken);
    assert_eq!(kinds(&stream), ["run-started", "build-started", "build-finished", "summary"]);
    let failed = &stream[2];
    assert_eq!((&failed["name"], &failed["outcome"]), (&"broken-riscv64".into(), &"failed".into()));
    assert!(failed["reason"].as_str().is_some_and(|r| r.contains("cargo build")), "{failed}");
    let summary = check_frame(&stream, "test", 1);
    assert_eq!(summary["builds"]["failed"], 1);
    assert_eq!(summary["cases"]["total"], 0);
    assert_eq!(summary["error"], failed["reason"]);

    // Only `test` and `build` stream.
    let refused = project.command(&["config", "--message-format", "json"]).output().expect("kiln");
    assert_eq!(refused.status.code(), Some(2));
    assert!(refused.stdout.is_empty());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("`--message-format json` is for `test` and `build`"));
}
