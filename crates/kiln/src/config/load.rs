//! Parsing Kiln.toml: syntax errors with their key, TODO values still to fill in, and every
//! unknown key collected with the closest valid name.

use super::{
    ConfigError, Source, diagnostic, fields,
    raw::{self, RawArtifact, RawCase, RawMachine, RawManifest},
    spans::{key_at, key_span},
    todo::todos,
};

/// Parses the text, collecting every unknown key.
pub(super) fn deserialize(source: &Source) -> Result<RawManifest, ConfigError> {
    let syntax_error = |e: toml::de::Error| {
        let key = e.span().and_then(|span| key_at(&source.text, span.start));
        ConfigError::at(source, e.span(), key, e.message().trim().to_owned())
    };
    let table = toml::de::DeTable::parse(&source.text).map_err(syntax_error)?;
    let open = todos(table.get_ref());
    if let Some((todo, rest)) = open.split_first() {
        let mut err = ConfigError::at(
            source,
            Some(todo.span.clone()),
            Some(todo.key.clone()),
            format!("Kiln.toml still has a value to fill in: {}", todo.text),
        )
        .with_help(
            "replace the TODO value (the comment above it says what goes there); `cargo kiln doctor` lists every TODO",
        );
        if !rest.is_empty() {
            let others: Vec<String> =
                rest.iter().map(|t| format!("`{}` (line {})", t.key, source.line_col(t.span.start).0)).collect();
            err = err.with_note(format!("also to fill in: {}", others.join(", ")));
        }
        return Err(err);
    }
    let mut unknown = Vec::new();
    let parsed: Result<RawManifest, _> = serde_ignored::deserialize(toml::de::Deserializer::from(table), |path| {
        unknown.push(path_segments(&path));
    });
    let raw = match parsed {
        Ok(raw) => raw,
        // A misspelled required key shows up as "missing field" after its misspelling was
        // seen as unknown: the unknown key, with its closest valid name, is the better message.
        Err(err) if !unknown.is_empty() && err.message().contains("missing field") => {
            return Err(unknown_key_error(source, &unknown[0]).with_note(err.message().trim().to_owned()));
        }
        Err(err) => return Err(syntax_error(err)),
    };
    if let Some(path) = unknown.first() {
        let mut err = unknown_key_error(source, path);
        if unknown.len() > 1 {
            let others: Vec<String> = unknown[1..]
                .iter()
                .map(|other| match key_span(&source.text, other) {
                    Some(span) => format!("`{}` (line {})", other.join("."), source.line_col(span.start).0),
                    None => format!("`{}`", other.join(".")),
                })
                .collect();
            err = err.with_note(format!("also unknown: {}", others.join(", ")));
        }
        return Err(err);
    }
    Ok(raw)
}

fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut segments = path_segments(parent);
            segments.push(index.to_string());
            segments
        }
        // `Spanned` values (the layers) show up as a private field name: not a Kiln.toml key.
        Path::Map { parent, key } if key.starts_with("$__serde_spanned") => path_segments(parent),
        Path::Map { parent, key } => {
            let mut segments = path_segments(parent);
            segments.push(key.clone());
            segments
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            path_segments(parent)
        }
    }
}

fn unknown_key_error(source: &Source, path: &[String]) -> ConfigError {
    let Some((key, parents)) = path.split_last() else {
        return ConfigError::whole_file(&source.path, "unknown key");
    };
    let valid: &[&str] = match parents.first().map(String::as_str) {
        None => fields::field_names::<RawManifest>(),
        Some("store") => fields::field_names::<raw::RawStore>(),
        Some("artifact") => fields::field_names::<RawArtifact>(),
        Some("machine") => fields::field_names::<RawMachine>(),
        Some("case") if parents.get(2).is_some_and(|t| t == "test") && parents.len() == 4 => {
            fields::field_names::<raw::RawTestSettings>()
        }
        Some("case") => fields::field_names::<RawCase>(),
        Some("fetch") => fields::field_names::<raw::RawFetch>(),
        Some("kernel") => fields::field_names::<raw::RawKernel>(),
        Some("rootfs") if parents.iter().any(|p| p == "layers") => fields::field_names::<raw::RawLayer>(),
        Some("rootfs") => fields::field_names::<raw::RawRootfs>(),
        Some("run") => fields::field_names::<raw::RawRun>(),
        Some("step") => fields::field_names::<raw::RawStep>(),
        Some(_) => &[],
    };
    let table = match parents {
        [] => "the top level".to_owned(),
        [rootfs, name, layers, index] if rootfs == "rootfs" && layers == "layers" => {
            let number = index.parse::<usize>().map_or_else(|_| index.clone(), |i| (i + 1).to_string());
            format!("layer {number} of `[rootfs.{name}]`")
        }
        _ => format!("`[{}]`", parents.join(".")),
    };
    // Keys inside arrays (a rootfs's layers) have no span of their own: point at the array.
    let span = (1..=path.len()).rev().find_map(|len| key_span(&source.text, &path[..len]));
    let err = ConfigError::at(source, span, Some(path.join(".")), format!("unknown key `{key}` in {table}"));
    match diagnostic::closest(key, valid.iter().copied()) {
        Some(near) => err.with_help(format!("a key with a similar name exists: `{near}`")),
        None if !valid.is_empty() => err.with_help(format!("valid keys here: {}", valid.join(", "))),
        None => err,
    }
}
