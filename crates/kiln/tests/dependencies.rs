//! What a user's xtask compiles when it depends on kiln: the default features stay free of the
//! heavy optional parts (GitHub's API client, the object-store client), every feature set uses
//! one HTTP stack, and the crate count stays within a budget (compile time is what users wait
//! on first). A change that pulls in more fails here, and the budget moves only on purpose.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

/// The most crates (kiln's own included, build dependencies too) a default-feature kiln may
/// compile on the host: issue 17's bound for a user's xtask.
const DEFAULT_FEATURES_CRATE_BUDGET: usize = 150;

/// Crates only the optional features may bring.
const OPTIONAL_ONLY: &[&str] = &["octocrab", "object_store"];

/// HTTP clients other than the one kiln uses (reqwest on hyper): none may appear.
const OTHER_HTTP_CLIENTS: &[&str] = &["ureq", "isahc", "attohttpc", "curl", "surf", "minreq"];

/// The crate names `cargo tree` lists for kiln's normal and build dependencies on the host.
fn crates(features: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "kiln-xtask",
            "-e",
            "normal,build",
            "--target",
            "host-tuple",
            "--prefix",
            "none",
            "-f",
            "{p}",
        ])
        .args(features)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo tree failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn default_features_leave_out_the_optional_clients_and_stay_in_budget() {
    let crates = crates(&[]);
    let present: Vec<&&str> = OPTIONAL_ONLY.iter().filter(|name| crates.contains(**name)).collect();
    assert!(present.is_empty(), "default features pull in {present:?}: put them behind the feature that needs them");
    assert!(
        crates.len() <= DEFAULT_FEATURES_CRATE_BUDGET,
        "a default-feature kiln compiles {} crates, over the budget of {DEFAULT_FEATURES_CRATE_BUDGET}: find what \
         pulled the new ones in (`cargo tree -p kiln-xtask -e normal -i NAME`) before raising the budget",
        crates.len()
    );
    assert!(crates.contains("reqwest"), "the listing reads cargo tree's output: {crates:?}");
}

#[test]
fn every_feature_set_uses_one_http_stack() {
    for features in [&[][..], &["--features", "remote"], &["--features", "github"], &["--all-features"]] {
        let crates = crates(features);
        let others: Vec<&&str> = OTHER_HTTP_CLIENTS.iter().filter(|name| crates.contains(**name)).collect();
        assert!(others.is_empty(), "kiln {features:?} pulls in a second HTTP client: {others:?}");
        assert!(crates.contains("reqwest"), "kiln {features:?} lists reqwest: {crates:?}");
    }
}

#[test]
fn the_optional_clients_come_with_their_features() {
    let all = crates(&["--all-features"]);
    for name in ["octocrab", "object_store"] {
        assert!(all.contains(name), "--all-features brings {name}; the list of optional crates is stale");
    }
}
