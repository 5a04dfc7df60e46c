//! Tidy checks, written as tests: the crate's shape as `ARCHITECTURE.md` states it.
//!
//! - **Layers.** Every top-level module sits in one layer of [`LAYERS`] and imports only from
//!   layers below its own: data flows config → plan → exec → vm → boots → runner, `cx` ties
//!   them together, `commands` and the facade sit on top.
//! - **No circles.** Within each directory, the files and subdirectories import each other
//!   without a cycle (a directory's `mod.rs` and its children count as the directory).
//! - **Commands are leaves**: no command module imports another.
//! - **One place reads the environment** (`env.rs`), and nothing calls `process::exit`.
//! - **Every file says what it is for** in a `//!` line.
//!
//! Imports are read from the token stream of every file (so paths inside macros count), `use`
//! trees expanded.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    str::FromStr as _,
};

use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// The crate's layers, lowest first. A module may import from strictly lower layers only.
const LAYERS: &[&[&str]] = &[
    // Foundations: no imports from the crate but each other's lower ones.
    &["env", "error", "exit_code", "units"],
    &["host", "layout"],
    // What the user declared.
    &["config"],
    // What to do, what came of it, how it was asked for.
    &["plan", "outcome", "cli"],
    // What the layers below `report` say, the guest protocol, build explanations.
    &["events", "guest", "explain"],
    // How it looks (and GitHub as the other side).
    &["report", "github"],
    // Realising a plan through the store.
    &["exec"],
    // Warm guests: snapshots, keepers, leases.
    &["vm"],
    // Lowering a realised plan into boots, then booting them.
    &["boots"],
    &["runner"],
    // The context that ties the layers together for the commands.
    &["cx"],
    &["commands"],
    // The library surface, and what kiln's own tests reach through it.
    &["xtask"],
    &["testing"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src`, with its module path (`exec/cargo.rs` → `["exec", "cargo"]`).
fn modules() -> Vec<(PathBuf, Vec<String>)> {
    fn walk(dir: &Path, prefix: &[String], out: &mut Vec<(PathBuf, Vec<String>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src is readable").flatten().collect();
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut module = prefix.to_vec();
                module.push(name);
                walk(&path, &module, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut module = prefix.to_vec();
                if !matches!(stem, "mod" | "lib") {
                    module.push(stem.to_owned());
                }
                out.push((path, module));
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &[], &mut out);
    out
}

/// Expands the path that starts at `tokens[*at]` (`crate::a::{b, c::d}`) into whole paths.
fn read_path(tokens: &[TokenTree], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        match tokens.get(*at) {
            Some(TokenTree::Ident(ident)) => {
                path.push(ident.to_string());
                *at += 1;
            }
            Some(TokenTree::Group(group)) if group.delimiter() == Delimiter::Brace => {
                *at += 1;
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                let mut i = 0;
                while i < inner.len() {
                    read_path(&inner, &mut i, path.clone(), out);
                    // Skip to the next item of the list.
                    while i < inner.len() && !matches!(&inner[i], TokenTree::Punct(p) if p.as_char() == ',') {
                        i += 1;
                    }
                    i += 1;
                }
                return;
            }
            _ => break,
        }
        let is_colon = |i: usize| matches!(tokens.get(i), Some(TokenTree::Punct(p)) if p.as_char() == ':');
        if is_colon(*at) && is_colon(*at + 1) {
            *at += 2;
        } else {
            break;
        }
    }
    out.push(path);
}

/// The `crate::`/`super::` paths a file names, and the relative paths its `use` items name.
fn named_paths(text: &str) -> Vec<Vec<String>> {
    fn scan(stream: TokenStream, out: &mut Vec<Vec<String>>) {
        let tokens: Vec<TokenTree> = stream.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Ident(ident) if ident == "use" => {
                    i += 1;
                    read_path(&tokens, &mut i, Vec::new(), out);
                }
                TokenTree::Ident(ident) if matches!(ident.to_string().as_str(), "crate" | "super") => {
                    let follows_path = i > 0 && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == ':');
                    let mut at = i;
                    read_path(&tokens, &mut at, Vec::new(), out);
                    // `pub(crate)` is no path; `a::crate` is not one of ours either.
                    if follows_path || out.last().is_some_and(|path| path.len() < 2) {
                        out.pop();
                    }
                    i = at.max(i + 1);
                }
                TokenTree::Group(group) => {
                    scan(group.stream(), out);
                    i += 1;
                }
                _ => i += 1,
            }
        }
    }
    let stream = TokenStream::from_str(text).expect("every source file tokenizes");
    let mut out = Vec::new();
    scan(stream, &mut out);
    out
}

/// The module a path in `module` names, as the longest prefix that is a module of the crate.
fn resolve(path: &[String], module: &[String], known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut absolute: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => module[..module.len().saturating_sub(1)].to_vec(),
        Some("self") => module.to_vec(),
        // A child module of this one (`use target::Thing` in a `mod.rs`).
        Some(first) => {
            let mut child = module.to_vec();
            child.push(first.to_owned());
            if !known.contains(&child) {
                return None;
            }
            module.to_vec()
        }
        None => return None,
    };
    let mut rest = &path[1..];
    if path.first().map(String::as_str) == Some("super") {
        while rest.first().map(String::as_str) == Some("super") {
            absolute.pop();
            rest = &rest[1..];
        }
    }
    if !matches!(path.first().map(String::as_str), Some("crate" | "super" | "self")) {
        rest = path;
    }
    let mut best = known.contains(&absolute).then(|| absolute.clone());
    for segment in rest {
        absolute.push(segment.clone());
        if known.contains(&absolute) {
            best = Some(absolute.clone());
        }
    }
    best
}

/// Every import between modules of the crate: (importing module, imported module).
fn imports() -> Vec<(Vec<String>, Vec<String>)> {
    let modules = modules();
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(_, module)| module.clone()).collect();
    let mut edges = Vec::new();
    for (file, module) in &modules {
        let text = std::fs::read_to_string(file).expect("readable source");
        for path in named_paths(&text) {
            if let Some(target) = resolve(&path, module, &known)
                && target != *module
            {
                edges.push((module.clone(), target));
            }
        }
    }
    edges.sort();
    edges.dedup();
    edges
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_imports_only_from_lower_layers() {
    let top_level: BTreeSet<String> = modules().into_iter().filter_map(|(_, module)| module.first().cloned()).collect();
    let unplaced: Vec<&String> = top_level.iter().filter(|m| *m != "tidy" && layer_of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules missing from tidy.rs's LAYERS (give each its layer): {unplaced:?}");
    let mut upward = Vec::new();
    let imports = imports();
    assert!(
        imports.contains(&(vec!["exec".to_owned(), "fetch".to_owned()], vec!["events".to_owned()])),
        "the import reader sees `exec::fetch` using `events`"
    );
    for (from, to) in imports {
        let (Some(a), Some(b)) = (from.first(), to.first()) else { continue };
        if a == b || a == "tidy" {
            continue;
        }
        let (Some(la), Some(lb)) = (layer_of(a), layer_of(b)) else { continue };
        if lb >= la {
            upward.push(format!("{} -> {}", from.join("::"), to.join("::")));
        }
    }
    assert!(upward.is_empty(), "imports that do not point down the layers:\n  {}", upward.join("\n  "));
}

#[test]
fn no_directory_holds_an_import_circle() {
    // Per directory: its files and subdirectories as nodes (a subdirectory with its mod.rs is one).
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let modules = modules();
    let directories: BTreeSet<Vec<String>> = modules
        .iter()
        .filter(|(file, _)| file.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs"))
        .map(|(_, module)| module.clone())
        .collect();
    for (from, to) in imports() {
        // The deepest directory holding both, and the child of it that each lies in.
        for dir in &directories {
            let (Some(a), Some(b)) = (from.strip_prefix(dir.as_slice()), to.strip_prefix(dir.as_slice())) else {
                continue;
            };
            let (Some(a), Some(b)) = (a.first(), b.first()) else { continue };
            if a != b {
                graphs.entry(dir.clone()).or_default().entry(a.clone()).or_default().insert(b.clone());
            }
        }
    }
    for (dir, graph) in &graphs {
        if let Some(circle) = find_circle(graph) {
            panic!("an import circle in src/{}: {}", dir.join("/"), circle.join(" -> "));
        }
    }
}

#[test]
fn commands_never_import_each_other() {
    let crossing: Vec<String> = imports()
        .into_iter()
        .filter(|(from, to)| {
            from.first().is_some_and(|m| m == "commands")
                && to.first().is_some_and(|m| m == "commands")
                && from.len() > 1
                && to.len() > 1
                && from[1] != to[1]
        })
        .map(|(from, to)| format!("{} -> {}", from.join("::"), to.join("::")))
        .collect();
    assert!(
        crossing.is_empty(),
        "a command imports another (move what they share below `commands`, into `cx` or lower):\n  {}",
        crossing.join("\n  ")
    );
}

/// A cycle of `graph`, when it has one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|n| n == node) {
            let mut circle = stack[start..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, stack, done) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// A file's tokens as text, one space between tokens, brackets written out
/// (`std :: env :: var ( "HOME" )`).
fn token_text(text: &str) -> String {
    fn flatten(stream: TokenStream, out: &mut Vec<String>) {
        for token in stream {
            match token {
                TokenTree::Group(group) => {
                    let (open, close) = match group.delimiter() {
                        Delimiter::Parenthesis => ("(", ")"),
                        Delimiter::Brace => ("{", "}"),
                        Delimiter::Bracket => ("[", "]"),
                        Delimiter::None => ("", ""),
                    };
                    out.push(open.to_owned());
                    flatten(group.stream(), out);
                    out.push(close.to_owned());
                }
                other => out.push(other.to_string()),
            }
        }
    }
    let mut words = Vec::new();
    flatten(TokenStream::from_str(text).expect("every source file tokenizes"), &mut words);
    words.join(" ")
}

/// What a file does that only `env.rs` may (read the environment) or nobody may (exit the
/// process), found in its tokens.
fn forbidden_calls(text: &str) -> Vec<&'static str> {
    let tokens = token_text(text);
    let mut found = Vec::new();
    // `std::env::var(..)`, and `env::var(..)` where `use std::env` (or `std::{env, ..}`) put
    // std's module in scope rather than `crate::env`.
    let std_env_in_scope =
        regex::Regex::new(r"use std : : (env ;|\{[^}]*\benv\b)").is_ok_and(|re| re.is_match(&tokens));
    let reads = ["var", "var_os", "vars", "vars_os"].iter().any(|read| {
        tokens.contains(&format!("std : : env : : {read} ("))
            || (std_env_in_scope && tokens.contains(&format!("env : : {read} (")))
    });
    if reads {
        found.push("reads the environment (go through `crate::env`)");
    }
    if tokens.contains("process : : exit") {
        found.push("calls `process::exit` (return an exit code instead)");
    }
    found
}

#[test]
fn only_env_rs_reads_the_environment_and_nothing_exits_the_process() {
    let mut offenders = Vec::new();
    for (file, module) in modules() {
        if module == ["env"] || module == ["tidy"] {
            continue;
        }
        for what in forbidden_calls(&std::fs::read_to_string(&file).expect("readable source")) {
            offenders.push(format!("{} {what}", module.join("::")));
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

#[test]
fn the_call_reader_finds_environment_reads_and_exits_however_written() {
    for text in [
        "fn f() { std::env::var(\"HOME\").ok(); }",
        "fn f() { let _ = std::env::var_os(NAME); }",
        "use std::env;\nfn f() { for (k, v) in env::vars() {} }",
        "use std::{env, fs};\nfn f() { env::var_os(\"X\"); }",
        "fn f() { if std::env::vars_os().count() > 0 {} }",
    ] {
        assert_eq!(forbidden_calls(text), ["reads the environment (go through `crate::env`)"], "{text}");
    }
    assert_eq!(forbidden_calls("fn f() { std::process::exit(1) }").len(), 1);
    assert_eq!(forbidden_calls("use std::process::exit as quit;\nfn f() { quit(1) }").len(), 1);
    assert!(forbidden_calls("fn f() { crate::env::var(crate::env::HOME); }").is_empty(), "kiln's own env module");
    let own = "use crate::{cli, env};\nfn f() { env::var_os(env::HOME); std::env::current_dir(); }";
    assert!(forbidden_calls(own).is_empty(), "kiln's env module, and std::env for something else");
    assert!(forbidden_calls("// std::env::var(\"X\")\nfn f() {}").is_empty(), "comments are not code");
}

#[test]
fn every_file_says_what_it_is_for() {
    let undocumented: Vec<String> = modules()
        .into_iter()
        .filter(|(file, _)| !std::fs::read_to_string(file).is_ok_and(|text| text.starts_with("//!")))
        .map(|(file, _)| file.display().to_string())
        .collect();
    assert!(undocumented.is_empty(), "files without a `//!` line first: {undocumented:?}");
}

#[test]
fn the_import_reader_sees_use_trees_macros_and_relative_children() {
    let paths = named_paths(
        "use crate::{exec::{self, Executor}, plan::Plan};\nuse target::Thing;\nfn f() { format!(\"{}\", crate::units::seconds(d)); let _ = super::super::x::Y; }\npub(crate) fn g() {}",
    );
    let shown: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        shown,
        [
            "crate::exec::self",
            "crate::exec::Executor",
            "crate::plan::Plan",
            "target::Thing",
            "crate::units::seconds",
            "super::super::x::Y"
        ]
    );
    let known: BTreeSet<Vec<String>> = [vec!["vm".to_owned()], vec!["vm".to_owned(), "target".to_owned()]].into();
    let module = vec!["vm".to_owned()];
    assert_eq!(resolve(&["target".into(), "Thing".into()], &module, &known), Some(vec!["vm".into(), "target".into()]));
    let child = vec!["vm".to_owned(), "target".to_owned()];
    assert_eq!(resolve(&["super".into(), "Guest".into()], &child, &known), Some(vec!["vm".into()]));
    let circle = find_circle(&[("a".into(), ["b".into()].into()), ("b".into(), ["a".into()].into())].into());
    assert_eq!(circle, Some(vec!["a".into(), "b".into(), "a".into()]));
}
