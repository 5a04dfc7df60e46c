//! Why a build runs: the difference between a derivation and the last one recorded under
//! the same name.

use kiln_store::{Derivation, Store};

/// Lines describing what changed since the last build recorded for `name`; empty when
/// nothing was recorded or the recorded entry is gone.
pub fn changes(store: &Store, name: &str, current: &Derivation) -> Vec<String> {
    let Some(previous_closure) = store.recorded(name) else {
        return vec!["no earlier build of it is recorded in this store".to_owned()];
    };
    if previous_closure == current.closure_hash() {
        return vec!["nothing changed since the last build, but its entry is missing".to_owned()];
    }
    let Ok(Some(previous)) = store.lookup(&previous_closure) else {
        return vec![format!("the last build ({}) is no longer in the store", previous_closure.short())];
    };
    diff(&previous.meta.derivation, current)
}

/// The settings and inputs that differ between two derivations, one line each.
pub fn diff(previous: &Derivation, current: &Derivation) -> Vec<String> {
    let mut lines = Vec::new();
    if previous.kind != current.kind {
        lines.push(format!("kind changed: {} -> {}", previous.kind, current.kind));
    }
    let shown = |value: &str| value.replace('\u{1f}', " ");
    for (name, value) in &current.settings {
        let value = &shown(value);
        match previous.settings.get(name).map(|old| shown(old)) {
            None => lines.push(format!("setting {name} added: {value:?}")),
            Some(old) if old != *value => lines.push(format!("setting {name} changed: {old:?} -> {value:?}")),
            Some(_) => {}
        }
    }
    for name in previous.settings.keys().filter(|name| !current.settings.contains_key(*name)) {
        lines.push(format!("setting {name} removed"));
    }
    for (name, hash) in &current.inputs {
        match previous.inputs.get(name) {
            None => lines.push(format!("input {name} added ({})", &hash.to_hex()[..12])),
            Some(old) if old != hash => {
                lines.push(format!("input {name} changed: {} -> {}", &old.to_hex()[..12], &hash.to_hex()[..12]))
            }
            Some(_) => {}
        }
    }
    for name in previous.inputs.keys().filter(|name| !current.inputs.contains_key(*name)) {
        lines.push(format!("input {name} removed"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use kiln_store::InputHash;

    use super::*;

    #[test]
    fn diff_names_changed_added_and_removed_inputs() {
        let mut old = Derivation::new("cargo-build");
        old.setting("profile", "release");
        old.input("source:kernel", InputHash::of_bytes(b"a"));
        old.input("env:RUSTFLAGS", InputHash::of_bytes(b"-g"));
        let mut new = old.clone();
        new.setting("profile", "dev");
        new.input("source:kernel", InputHash::of_bytes(b"b"));
        new.inputs.remove("env:RUSTFLAGS");
        new.input("file:Cargo.lock", InputHash::of_bytes(b"lock"));
        let lines = diff(&old, &new);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].starts_with("setting profile changed: \"release\" -> \"dev\""));
        assert!(lines.iter().any(|l| l.starts_with("input source:kernel changed: ")));
        assert!(lines.iter().any(|l| l.starts_with("input file:Cargo.lock added")));
        assert!(lines.iter().any(|l| l == "input env:RUSTFLAGS removed"));
    }
}
