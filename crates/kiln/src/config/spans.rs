//! Where a key or value is written in Kiln.toml's text, for errors that point at it.

use std::ops::Range;

/// The spans of the key at `path` and of its value, found by walking the parsed document.
fn entry_spans(text: &str, path: &[String]) -> Option<(Range<usize>, Range<usize>)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let (last, parents) = path.split_last()?;
    for segment in parents {
        let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == segment.as_str())?;
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => return None,
        }
    }
    table.iter().find(|(k, _)| k.get_ref().as_ref() == last.as_str()).map(|(k, v)| (k.span(), v.span()))
}

/// The span of the key at `path`.
pub(super) fn key_span(text: &str, path: &[String]) -> Option<Range<usize>> {
    entry_spans(text, path).map(|(key, _)| key)
}

/// The span of the value at `path`.
pub(super) fn value_span(text: &str, path: &[String]) -> Option<Range<usize>> {
    entry_spans(text, path).map(|(_, value)| value)
}

/// The dotted key whose value contains byte `offset`, for errors that only carry a span.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    // Table spans cover only their headers, so every table is searched and leaf values
    // are matched by span.
    fn search(table: &toml::de::DeTable<'_>, offset: usize, prefix: &mut Vec<String>) -> Option<String> {
        for (key, value) in table.iter() {
            prefix.push(key.get_ref().to_string());
            if let toml::de::DeValue::Table(inner) = value.get_ref()
                && let Some(found) = search(inner, offset, prefix)
            {
                return Some(found);
            }
            if value.span().contains(&offset) || key.span().contains(&offset) {
                return Some(prefix.join("."));
            }
            prefix.pop();
        }
        None
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    search(doc.get_ref(), offset, &mut Vec::new())
}
