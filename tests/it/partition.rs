//! A test run spread over jobs (`test --partition hash:K/3`): three "machines" (copies of the
//! bundled example, each with an empty store) run at the same time and share one S3 remote
//! (moto on loopback), so each closure is built once for the whole run, the others wait for it
//! (build claims) and fetch it; `report merge` joins their JUnit files into the file an
//! unpartitioned run writes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Output,
    time::Instant,
};

use crate::{
    linux::stderr_of,
    servers::Moto,
    support::{Project, repo_root},
};

const BUCKET: &str = "kiln-partition";
const JOBS: usize = 3;

/// `cargo kiln ARGS` on `project`, as a CI job runs it: TCG, the moto credentials, and only
/// the remote Kiln.toml names.
fn kiln(project: &Project, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    let mut command = project.command(args);
    for name in ["KILN_REMOTES", "KILN_SIGNING_KEY", "KILN_SIGNING_KEY_FILE", "KILN_TRUSTED_KEYS", "KILN_STORE", "CI"] {
        command.env_remove(name);
    }
    command
        .env("KILN_ACCEL", "tcg")
        .env("AWS_ACCESS_KEY_ID", "kiln-test")
        .env("AWS_SECRET_ACCESS_KEY", "kiln-test")
        .env("AWS_REGION", "us-east-1");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// What a job's stderr says it built (not fetched from the remote): `Built NAME`,
/// `Fetched NAME` (a download), `Saved the ARCH snapshot`, with timings and short closure
/// hashes cut off.
fn built_here(stderr: &str) -> Vec<String> {
    let suffix = regex::Regex::new(r"( [0-9a-f]{12})? in [0-9][0-9.hms ]*$").expect("regex");
    stderr
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("Built ") || line.starts_with("Fetched ") || line.starts_with("Saved the "))
        .map(|line| suffix.replace(line, "").into_owned())
        .collect()
}

/// A JUnit document with what differs between two runs of the same cases taken out: `time`
/// attributes, and the serial tail of the example's two Linux kernel panics (how much of the
/// trace reaches the console before QEMU stops, and the addresses in it, differ from boot to
/// boot; their verdicts are still compared).
fn without_timings(xml: &str) -> String {
    let times = regex::Regex::new(r#" time="[0-9.]+""#).expect("regex");
    let panics =
        regex::Regex::new(r#"(classname="linux-panic(?:-warm)?">\s*<system-out>)[^<]*(</system-out>)"#).expect("regex");
    panics.replace_all(&times.replace_all(xml, ""), "${1}(a kernel panic's trace)${2}").into_owned()
}

/// The `classname/name` of each test case in a JUnit document, in order.
fn cases_in(xml: &str) -> Vec<String> {
    regex::Regex::new(r#"<testcase name="([^"]+)" classname="([^"]+)""#)
        .expect("regex")
        .captures_iter(xml)
        .map(|c| format!("{}/{}", &c[2], &c[1]))
        .collect()
}

fn succeeded(output: &Output, what: &str) -> String {
    let err = stderr_of(output);
    assert!(output.status.success(), "{what} failed ({}):\n{err}", output.status);
    err
}

#[test]
fn three_jobs_sharing_one_s3_store_build_each_closure_once_and_merge_into_the_unpartitioned_junit() {
    let moto = Moto::start(BUCKET);
    let url = format!("s3://{BUCKET}/ci");
    let kiln_toml = std::fs::read_to_string(repo_root().join("Kiln.toml")).expect("Kiln.toml");
    let first = Project::example(&kiln_toml);
    // One key for the workflow (a repository secret), trusted by every job.
    let secret = first.path().join("ci.key");
    let keygen =
        kiln(&first, &["store", "keygen", "--name", "ci", "--out"], &[]).arg(&secret).output().expect("keygen");
    succeeded(&keygen, "keygen");
    let public = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
    assert!(public.starts_with("ci:"), "{public}");
    let kiln_toml = format!(
        "{kiln_toml}\n[store]\nremotes = [{{ url = \"{url}\", endpoint = \"{}\" }}]\ntrusted-keys = [\"{public}\"]\n",
        moto.endpoint
    );
    let jobs: Vec<Project> = (0..JOBS).map(|_| Project::example(&kiln_toml)).collect();
    let secret = secret.display().to_string();
    let out_dir = tempfile::tempdir().expect("tempdir");
    let junit = |name: &str| out_dir.path().join(format!("{name}.xml"));

    // The partition jobs, all at once, as a workflow's matrix starts them.
    moto.start_recording();
    let started = Instant::now();
    let children: Vec<_> = jobs
        .iter()
        .enumerate()
        .map(|(n, project)| {
            let partition = format!("hash:{}/{JOBS}", n + 1);
            let path = junit(&format!("job-{}", n + 1)).display().to_string();
            let args = ["test", "--push", "--arch", "x86_64", "--partition", &partition, "--junit", &path];
            kiln(project, &args, &[("KILN_SIGNING_KEY_FILE", &secret)])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a job")
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|child| child.wait_with_output().expect("job")).collect();
    let jobs_took = started.elapsed();
    let stderrs: Vec<String> =
        outputs.iter().enumerate().map(|(n, output)| succeeded(output, &format!("job {}", n + 1))).collect();
    let all_output = stderrs.join("\n----\n");

    // Each job ran its own share of the cases.
    for (n, err) in stderrs.iter().enumerate() {
        assert!(err.contains(&format!("Partition hash:{}/{JOBS}: ", n + 1)), "job {}:\n{err}", n + 1);
        let cases = cases_in(&std::fs::read_to_string(junit(&format!("job-{}", n + 1))).expect("a job's JUnit"));
        assert!(!cases.is_empty(), "job {} got no case:\n{err}", n + 1);
    }

    // Each closure was built by exactly one job; the others waited for it or found it pushed.
    let mut builders: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (n, err) in stderrs.iter().enumerate() {
        for what in built_here(err) {
            builders.entry(what).or_default().push(n + 1);
        }
    }
    let twice: Vec<_> = builders.iter().filter(|(_, jobs)| jobs.len() > 1).collect();
    assert!(twice.is_empty(), "built by more than one job: {twice:?}\n{all_output}");
    let shared = [
        "Fetched linux-x86_64",
        "Built hello-linux (x86_64)",
        "Built kernel debian (x86_64)",
        "Saved the x86_64 snapshot",
    ];
    for shared in shared {
        assert!(builders.contains_key(shared), "`{shared}` was built by some job: {builders:?}\n{all_output}");
    }
    assert!(all_output.contains("Waiting for entry "), "a job waited for another's build:\n{all_output}");
    assert!(!all_output.contains("warning:"), "{all_output}");
    let manifests: Vec<_> = moto
        .recorded()
        .into_iter()
        .filter(|(method, url)| method == "PUT" && url.contains("/kiln-v1/entries/"))
        .map(|(_, url)| url)
        .collect();
    let mut distinct = manifests.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(manifests.len(), distinct.len(), "each entry pushed once: {manifests:?}");
    let claims_left: Vec<_> = moto.recorded().into_iter().filter(|(_, url)| url.contains("/claims/")).collect();
    assert!(!claims_left.is_empty(), "the jobs claimed their builds");

    // Merged, the jobs' files are the file one unpartitioned run writes.
    let job_files: Vec<PathBuf> = (1..=JOBS).map(|n| junit(&format!("job-{n}"))).collect();
    let merged_path = junit("merged");
    let mut merge = kiln(&jobs[0], &["report", "merge", "--out", &merged_path.display().to_string()], &[]);
    let merged = merge.args(&job_files).output().expect("merge");
    let merge_err = succeeded(&merged, "report merge");
    let unpartitioned = Project::example(&kiln_toml);
    let full_path = junit("unpartitioned");
    let full_started = Instant::now();
    let full = kiln(&unpartitioned, &["test", "--arch", "x86_64", "--junit", &full_path.display().to_string()], &[])
        .output()
        .expect("an unpartitioned run");
    let full_took = full_started.elapsed();
    let full_err = succeeded(&full, "the unpartitioned run");
    assert!(built_here(&full_err).is_empty(), "everything came from the remote:\n{full_err}");
    let merged_xml = std::fs::read_to_string(&merged_path).expect("merged JUnit");
    let full_xml = std::fs::read_to_string(&full_path).expect("unpartitioned JUnit");
    let cases = cases_in(&full_xml);
    assert!(
        merge_err.contains(&format!("Merged {JOBS} JUnit files: {} test cases, 0 failed", cases.len())),
        "{merge_err}"
    );
    assert_eq!(cases.len(), 7, "every x86_64 case of the example: {cases:?}");
    assert_eq!(cases_in(&merged_xml), cases, "every case ran exactly once, in the unpartitioned order");
    assert_eq!(without_timings(&merged_xml), without_timings(&full_xml));
    let testcase = regex::Regex::new(r"(?s)<testcase .*?</testcase>").expect("regex");
    for file in &job_files {
        let text = std::fs::read_to_string(file).expect("a job's JUnit");
        for case in testcase.find_iter(&text) {
            assert!(merged_xml.contains(case.as_str()), "merged as the job wrote it:\n{}", case.as_str());
        }
    }
    eprintln!(
        "{JOBS} partition jobs at once: {jobs_took:.1?}; unpartitioned run from the remote: {full_took:.1?}; builders: \
         {builders:?}"
    );

    // Bad inputs: the same job's file twice, a file that is not there.
    let twice = kiln(&jobs[0], &["report", "merge"], &[]).args([&job_files[0], &job_files[0]]).output().expect("merge");
    assert_eq!(twice.status.code(), Some(2), "{}", stderr_of(&twice));
    assert!(stderr_of(&twice).contains("two jobs ran it"), "{}", stderr_of(&twice));
    let missing = Path::new("/nonexistent/junit.xml");
    let gone = kiln(&jobs[0], &["report", "merge"], &[]).arg(missing).output().expect("merge");
    assert_eq!(gone.status.code(), Some(2), "{}", stderr_of(&gone));
    assert!(stderr_of(&gone).contains("cannot read the JUnit file `/nonexistent/junit.xml`"), "{}", stderr_of(&gone));
}
