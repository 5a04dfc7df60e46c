//! Values still to be filled in: strings starting with `TODO`, as `cargo kiln init` writes them.

use std::{ops::Range, path::Path};

use super::{ConfigError, Source};

/// A value still to be filled in: a string starting with `TODO` (as `cargo kiln init` writes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Todo {
    /// The dotted key.
    pub key: String,
    /// The value's text.
    pub text: String,
    /// Where the value is.
    pub span: Range<usize>,
}

pub(super) fn todos(table: &toml::de::DeTable<'_>) -> Vec<Todo> {
    fn walk(value: &toml::Spanned<toml::de::DeValue<'_>>, key: String, found: &mut Vec<Todo>) {
        match value.get_ref() {
            toml::de::DeValue::String(text) if text.trim_start().starts_with("TODO") => {
                found.push(Todo { key, text: text.to_string(), span: value.span() });
            }
            toml::de::DeValue::Table(table) => {
                for (name, inner) in table.iter() {
                    walk(inner, format!("{key}.{}", name.get_ref()), found);
                }
            }
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{key}[{i}]"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (name, value) in table.iter() {
        walk(value, name.get_ref().to_string(), &mut found);
    }
    found.sort_by_key(|todo| todo.span.start);
    found
}

/// Every TODO value in a Kiln.toml, with its line, for `doctor` and `init`.
pub(crate) fn todos_in_file(file: &Path) -> Result<Vec<(Todo, usize)>, ConfigError> {
    let source = Source::read(file, file.to_owned())?;
    let table = toml::de::DeTable::parse(&source.text)
        .map_err(|e| ConfigError::at(&source, e.span(), None, e.message().trim().to_owned()))?;
    Ok(todos(table.get_ref())
        .into_iter()
        .map(|todo| {
            let line = source.line_col(todo.span.start).0;
            (todo, line)
        })
        .collect())
}
