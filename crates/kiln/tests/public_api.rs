//! kiln's library surface, as rustdoc sees it, against the listing in `public-api.txt`: a
//! change to what a user's xtask can name fails here until the listing is updated on purpose
//! (`KILN_BLESS=1 cargo test -p kiln-xtask --test public_api`).
//!
//! rustdoc's JSON output is unstable, so it is asked for with `RUSTC_BOOTSTRAP` scoped to the
//! documented crate, in a target
//! directory of its own (the flag would otherwise rebuild the workspace's build scripts). The
//! listing is made with default features: what a user's xtask gets. Items kiln re-exports from
//! its own workspace crates (`Arch`, `Verdict`, ...) are walked in those crates' JSON, so a
//! change there shows here too.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The rustdoc JSON format this walker reads.
const FORMAT_VERSIONS: std::ops::RangeInclusive<u64> = 50..=70;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace crates whose items kiln's facade re-exports: their items are part of kiln's
/// surface, so the listing walks them too.
const REEXPORTED_CRATES: [&str; 3] = ["kiln-qemu", "kiln-store", "kiln-types"];

/// Builds a package's rustdoc JSON and returns it.
fn rustdoc_json(package: &str, crate_name: &str) -> Value {
    let target = manifest_dir().join("../../target/api");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["rustdoc", "--quiet", "-p", package, "--lib", "--", "-Z", "unstable-options", "--output-format", "json"])
        .current_dir(manifest_dir())
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTC_BOOTSTRAP", crate_name)
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo rustdoc -p {package} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let file = target.join(format!("doc/{crate_name}.json"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|err| panic!("read {}: {err}", file.display()));
    serde_json::from_str(&text).expect("rustdoc's JSON parses")
}

/// kiln's rustdoc JSON and that of the workspace crates it re-exports from, by crate name.
struct Docs {
    kiln: Value,
    reexported: BTreeMap<String, Value>,
}

impl Docs {
    fn build() -> Docs {
        let kiln = rustdoc_json("kiln-xtask", "kiln");
        let reexported = REEXPORTED_CRATES
            .iter()
            .map(|package| {
                let crate_name = package.replace('-', "_");
                let doc = rustdoc_json(package, &crate_name);
                (crate_name, doc)
            })
            .collect();
        Docs { kiln, reexported }
    }

    /// Where an item another crate defines lives in that crate's own JSON: `doc` imports it
    /// by `id`; the answer is the defining crate's document and the item's id there.
    fn external(&self, doc: &Value, id: &Value) -> Option<(&Value, String)> {
        let summary = &doc["paths"][key(id)];
        let path = summary["path"].as_array()?;
        let defining = self.reexported.get(path.first()?.as_str()?)?;
        let (found, _) = defining["paths"]
            .as_object()?
            .iter()
            .find(|(_, other)| other["crate_id"] == 0 && other["path"].as_array() == Some(path))?;
        Some((defining, found.clone()))
    }
}

/// An id as the index's keys spell it.
fn key(id: &Value) -> String {
    id.to_string().trim_matches('"').to_owned()
}

/// Writes a type as Rust spells it (enough for a listing: paths, references, generics).
fn ty(value: &Value) -> String {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return value.to_string();
    };
    match kind.as_str() {
        "primitive" | "generic" => inner.as_str().unwrap_or_default().to_owned(),
        "resolved_path" => {
            let path = inner["path"].as_str().unwrap_or_default().to_owned();
            path + &generic_args(&inner["args"])
        }
        "borrowed_ref" => {
            let lifetime = inner["lifetime"].as_str().map(|l| format!("{l} ")).unwrap_or_default();
            let mutable = if inner["is_mutable"].as_bool() == Some(true) { "mut " } else { "" };
            format!("&{lifetime}{mutable}{}", ty(&inner["type"]))
        }
        "tuple" => {
            let items: Vec<String> = inner.as_array().into_iter().flatten().map(ty).collect();
            format!("({})", items.join(", "))
        }
        "slice" => format!("[{}]", ty(inner)),
        "array" => format!("[{}; {}]", ty(&inner["type"]), inner["len"].as_str().unwrap_or("_")),
        "impl_trait" => format!("impl {}", bounds(inner)),
        "dyn_trait" => {
            let traits: Vec<String> =
                inner["traits"].as_array().into_iter().flatten().map(|t| trait_path(&t["trait"])).collect();
            format!("dyn {}", traits.join(" + "))
        }
        "qualified_path" => format!("<{}>::{}", ty(&inner["self_type"]), inner["name"].as_str().unwrap_or_default()),
        _ => value.to_string(),
    }
}

fn trait_path(value: &Value) -> String {
    value["path"].as_str().unwrap_or_default().to_owned() + &generic_args(&value["args"])
}

fn bounds(value: &Value) -> String {
    let parts: Vec<String> = value
        .as_array()
        .into_iter()
        .flatten()
        .map(|bound| match bound.get("trait_bound") {
            Some(bound) => trait_path(&bound["trait"]),
            None => bound.get("outlives").and_then(Value::as_str).unwrap_or_default().to_owned(),
        })
        .collect();
    parts.join(" + ")
}

fn generic_args(args: &Value) -> String {
    if let Some(angle) = args.get("angle_bracketed") {
        let items: Vec<String> = angle["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|arg| match arg.as_object().and_then(|o| o.iter().next()) {
                Some((kind, inner)) if kind == "type" => ty(inner),
                Some((kind, inner)) if kind == "lifetime" => inner.as_str().unwrap_or_default().to_owned(),
                _ => arg.to_string(),
            })
            .collect();
        let constraints: Vec<String> = angle["constraints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} = {}", c["name"].as_str().unwrap_or_default(), ty(&c["binding"]["equality"]["type"])))
            .collect();
        let all: Vec<String> = items.into_iter().chain(constraints).collect();
        if all.is_empty() { String::new() } else { format!("<{}>", all.join(", ")) }
    } else if let Some(paren) = args.get("parenthesized") {
        let inputs: Vec<String> = paren["inputs"].as_array().into_iter().flatten().map(ty).collect();
        let output = paren.get("output").filter(|o| !o.is_null()).map(|o| format!(" -> {}", ty(o))).unwrap_or_default();
        format!("({}){output}", inputs.join(", "))
    } else {
        String::new()
    }
}

fn signature(function: &Value) -> String {
    let sig = &function["sig"];
    let inputs: Vec<String> = sig["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|input| format!("{}: {}", input[0].as_str().unwrap_or("_"), ty(&input[1])))
        .collect();
    let output = sig.get("output").filter(|o| !o.is_null()).map(|o| format!(" -> {}", ty(o))).unwrap_or_default();
    let generics: Vec<String> = function["generics"]["params"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|param| param["kind"].get("type").is_some_and(|t| t["is_synthetic"] != Value::Bool(true)))
        .map(|param| {
            let bounds = bounds(&param["kind"]["type"]["bounds"]);
            let name = param["name"].as_str().unwrap_or_default();
            if bounds.is_empty() { name.to_owned() } else { format!("{name}: {bounds}") }
        })
        .collect();
    let generics = if generics.is_empty() { String::new() } else { format!("<{}>", generics.join(", ")) };
    format!("{generics}({}){output}", inputs.join(", "))
}

/// One line per public item reachable from the crate root.
fn listing(docs: &Docs) -> Vec<String> {
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let root = key(&docs.kiln["root"]);
    Walker { docs, out: &mut out, seen: &mut seen }.walk(&docs.kiln, &root, "kiln");
    out.into_iter().collect()
}

/// Walks items from a module down, writing one line per public item.
struct Walker<'a> {
    docs: &'a Docs,
    out: &'a mut BTreeSet<String>,
    seen: &'a mut BTreeSet<(String, String)>,
}

impl Walker<'_> {
    fn walk(&mut self, doc: &Value, id: &str, path: &str) {
        if !self.seen.insert((id.to_owned(), path.to_owned())) {
            return;
        }
        let index = &doc["index"];
        let Some(item) = index.get(id) else { return };
        let Some((kind, inner)) = item["inner"].as_object().and_then(|o| o.iter().next()) else { return };
        let child = |name: &str| format!("{path}::{name}");
        let out = &mut *self.out;
        if is_non_exhaustive(item) {
            out.insert(format!("#[non_exhaustive] {path}"));
        }
        match kind.as_str() {
            "module" => {
                out.insert(format!("mod {path}"));
                for member in inner["items"].as_array().into_iter().flatten() {
                    let member_id = key(member);
                    let Some(member_item) = index.get(&member_id) else { continue };
                    if member_item["visibility"] != "public" {
                        continue;
                    }
                    let name = member_item["name"].as_str().unwrap_or_default();
                    match member_item["inner"].get("use") {
                        Some(import) => {
                            let name = import["name"].as_str().unwrap_or(name);
                            self.walk_import(doc, import, &child(name));
                        }
                        None => self.walk(doc, &member_id, &child(name)),
                    }
                }
            }
            "struct" => {
                out.insert(format!("struct {path}"));
                if let Some(fields) = inner["kind"].get("plain").map(|plain| &plain["fields"]) {
                    for field in fields.as_array().into_iter().flatten() {
                        let Some(field) = index.get(key(field)) else { continue };
                        if field["visibility"] == "public" {
                            let name = field["name"].as_str().unwrap_or_default();
                            out.insert(format!("field {path}::{name}: {}", ty(&field["inner"]["struct_field"])));
                        }
                    }
                }
                impls(index, inner, path, out);
            }
            "enum" => {
                out.insert(format!("enum {path}"));
                for variant in inner["variants"].as_array().into_iter().flatten() {
                    if let Some(variant) = index.get(key(variant)) {
                        let name = variant["name"].as_str().unwrap_or_default();
                        out.insert(format!("variant {path}::{name}{}", variant_fields(index, &variant["inner"])));
                    }
                }
                impls(index, inner, path, out);
            }
            "function" => {
                out.insert(format!("fn {path}{}", signature(inner)));
            }
            "constant" => {
                out.insert(format!(
                    "const {path}: {} = {}",
                    ty(&inner["type"]),
                    inner["const"]["expr"].as_str().unwrap_or("?")
                ));
            }
            "trait" => {
                out.insert(format!("trait {path}"));
                for member in inner["items"].as_array().into_iter().flatten() {
                    if let Some(member) = index.get(key(member))
                        && let Some(function) = member["inner"].get("function")
                    {
                        out.insert(format!(
                            "trait fn {path}::{}{}",
                            member["name"].as_str().unwrap_or_default(),
                            signature(function)
                        ));
                    }
                }
            }
            other => {
                out.insert(format!("{other} {path}"));
            }
        }
    }

    /// A `pub use`: walked like the item itself when kiln or a re-exported workspace crate
    /// defines it, listed by source otherwise (a whole external crate such as `clap`).
    fn walk_import(&mut self, doc: &Value, import: &Value, path: &str) {
        let target = import.get("id").filter(|id| !id.is_null());
        if let Some(target) = target {
            if doc["index"].get(key(target)).is_some() {
                return self.walk(doc, &key(target), path);
            }
            if let Some((defining, id)) = self.docs.external(doc, target) {
                return self.walk(defining, &id, path);
            }
        }
        self.out.insert(format!("pub use {path} = {}", import["source"].as_str().unwrap_or("?")));
    }
}

/// Whether an item carries `#[non_exhaustive]` (rustdoc writes it as a string or as text).
fn is_non_exhaustive(item: &Value) -> bool {
    item["attrs"].as_array().into_iter().flatten().any(|attr| match attr {
        Value::String(text) => text.contains("non_exhaustive"),
        other => other.to_string().contains("non_exhaustive"),
    })
}

/// A variant's fields as `(A, B)` or ` { a: A }`, empty for a unit variant.
fn variant_fields(index: &Value, variant: &Value) -> String {
    let kind = &variant["variant"]["kind"];
    let field =
        |id: &Value| index.get(key(id)).map(|field| (field["name"].clone(), ty(&field["inner"]["struct_field"])));
    if let Some(tuple) = kind.get("tuple") {
        let types: Vec<String> = tuple
            .as_array()
            .into_iter()
            .flatten()
            .map(|id| field(id).map_or_else(|| "_".to_owned(), |(_, ty)| ty))
            .collect();
        format!("({})", types.join(", "))
    } else if let Some(plain) = kind.get("struct") {
        let fields: Vec<String> = plain["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(field)
            .map(|(name, ty)| format!("{}: {ty}", name.as_str().unwrap_or_default()))
            .collect();
        format!(" {{ {} }}", fields.join(", "))
    } else {
        String::new()
    }
}

/// The inherent methods and the trait impls (derived ones included) of a type.
fn impls(index: &Value, inner: &Value, path: &str, out: &mut BTreeSet<String>) {
    for id in inner["impls"].as_array().into_iter().flatten() {
        let Some(imp) = index.get(key(id)).map(|item| &item["inner"]["impl"]) else {
            continue;
        };
        if imp["is_synthetic"] == Value::Bool(true) || !imp["blanket_impl"].is_null() {
            continue;
        }
        match imp.get("trait").filter(|t| !t.is_null()) {
            Some(implemented) => {
                out.insert(format!("impl {} for {path}", trait_path(implemented)));
            }
            None => {
                for member in imp["items"].as_array().into_iter().flatten() {
                    let Some(member) = index.get(key(member)) else { continue };
                    if member["visibility"] == "public"
                        && let Some(function) = member["inner"].get("function")
                    {
                        let name = member["name"].as_str().unwrap_or_default();
                        out.insert(format!("fn {path}::{name}{}", signature(function)));
                    }
                }
            }
        }
    }
}

#[test]
fn the_public_api_is_what_public_api_txt_says() {
    let docs = Docs::build();
    let version = docs.kiln["format_version"].as_u64().unwrap_or(0);
    assert!(
        FORMAT_VERSIONS.contains(&version),
        "rustdoc JSON format {version} is new to this test: check its walker against the format and widen FORMAT_VERSIONS"
    );
    let listing = listing(&docs);
    assert!(listing.iter().any(|line| line.starts_with("fn kiln::xtask::main(")), "the walker finds the facade");
    let text = listing.join("\n") + "\n";
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/public-api.txt");
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&file, &text).expect("write public-api.txt");
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_default();
    if expected != text {
        let old: BTreeSet<&str> = expected.lines().collect();
        let new: BTreeSet<&str> = text.lines().collect();
        let removed: Vec<&&str> = old.difference(&new).collect();
        let added: Vec<&&str> = new.difference(&old).collect();
        panic!(
            "kiln's public API changed.\nremoved:\n  {}\nadded:\n  {}\nIf this is intended, run \
             `KILN_BLESS=1 cargo test -p kiln-xtask --test public_api` and commit crates/kiln/tests/public-api.txt.",
            removed.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n  "),
            added.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n  ")
        );
    }
}
