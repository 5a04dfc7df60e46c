//! Records the git commit kiln is built from as `KILN_SOURCE_COMMIT` (or takes the one the
//! environment gives, for a build from a source archive), so the workflow `init` writes pins
//! kiln's action to the commit of the kiln that wrote it, as workflow linters ask.

use std::{path::Path, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=KILN_SOURCE_COMMIT");
    if let Ok(commit) = std::env::var("KILN_SOURCE_COMMIT") {
        if is_commit(&commit) {
            println!("cargo:rustc-env=KILN_SOURCE_COMMIT={commit}");
        }
        return;
    }
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else { return };
    let dir = Path::new(&dir);
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).current_dir(dir).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--verify", "--quiet", "HEAD"]).filter(|c| is_commit(c)) else { return };
    println!("cargo:rustc-env=KILN_SOURCE_COMMIT={commit}");
    // Built again when HEAD moves: a checkout (HEAD), a commit (the branch's ref), a gc
    // (packed-refs).
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "--quiet", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            println!("cargo:rerun-if-changed={}", dir.join(path).display());
        }
    }
}

fn is_commit(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}
