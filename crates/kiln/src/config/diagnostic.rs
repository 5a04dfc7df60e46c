//! Configuration errors that point at the file, line, column and key, and say what to do.

use std::{fmt, ops::Range, path::PathBuf};

/// A Kiln.toml being read: its path (as the user should see it) and its text.
#[derive(Clone, Debug)]
pub struct Source {
    /// The path shown in messages.
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
}

impl Source {
    /// Reads `file`, shown in messages as `shown`. A file that is not UTF-8 is an error at
    /// the line and column of its first bad byte, with that line shown.
    pub fn read(file: &std::path::Path, shown: PathBuf) -> Result<Self, ConfigError> {
        let bytes = std::fs::read(file)
            .map_err(|e| ConfigError::whole_file(&shown, format!("cannot read {}: {e}", super::FILE_NAME)))?;
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Self { path: shown, text }),
            Err(err) => {
                let bad = err.utf8_error().valid_up_to();
                let bytes = err.into_bytes();
                let lossy = Self { path: shown, text: String::from_utf8_lossy(&bytes).into_owned() };
                let at = String::from_utf8_lossy(&bytes[..bad]).len();
                Err(ConfigError::at(
                    &lossy,
                    Some(at..at + 1),
                    None,
                    format!(
                        "{} is not UTF-8: byte 0x{:02x} here cannot start a character",
                        super::FILE_NAME,
                        bytes[bad]
                    ),
                )
                .with_help(
                    "TOML files are UTF-8; re-save the file as UTF-8 (shown above with U+FFFD for the bad bytes)",
                ))
            }
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// A one-line snippet with the span underlined. A long line is shown as a window around
    /// the span, and a long span's underline is cut with it, so a 5 MB value prints as a line.
    fn snippet(&self, span: &Range<usize>) -> String {
        let (line, col) = self.line_col(span.start);
        let text = self.text.lines().nth(line - 1).unwrap_or_default();
        let start = floor_char_boundary(text, (col - 1).min(text.len()));
        let window_start = floor_char_boundary(text, start.saturating_sub(SNIPPET_CONTEXT));
        let window_end = floor_char_boundary(text, (start + SNIPPET_WIDTH).min(text.len()));
        let before = &text[window_start..start];
        let shown = &text[start..window_end];
        let width = span.end.saturating_sub(span.start).min(shown.len()).max(1);
        let (lead, trail) = (if window_start > 0 { "…" } else { "" }, if window_end < text.len() { "…" } else { "" });
        let gutter = line.to_string().len();
        format!(
            "{:gutter$} |\n{line} | {lead}{before}{shown}{trail}\n{:gutter$} | {}{}",
            "",
            "",
            " ".repeat(lead.chars().count() + before.chars().count()),
            "^".repeat(shown[..floor_char_boundary(shown, width)].chars().count().max(1))
        )
    }
}

/// How much of a line a snippet shows before the span, and from the span on.
const SNIPPET_CONTEXT: usize = 40;
const SNIPPET_WIDTH: usize = 100;
/// The longest quoted value a message repeats whole; longer ones are cut.
const QUOTED_MAX: usize = 100;

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// `message` with every long `quoted` value cut ([`kiln_types::cut`]): messages quote what
/// the user wrote, and what the user wrote may be megabytes long.
fn cut_quoted(message: &str) -> std::borrow::Cow<'_, str> {
    let mut parts = message.split('`');
    if !message.split('`').skip(1).step_by(2).any(|quoted| quoted.len() > QUOTED_MAX) {
        return message.into();
    }
    let mut out = String::with_capacity(message.len().min(4 * QUOTED_MAX));
    out.push_str(parts.next().unwrap_or_default());
    for (index, part) in parts.enumerate() {
        out.push('`');
        if index % 2 == 0 {
            out.push_str(&kiln_types::cut(part, QUOTED_MAX));
        } else {
            out.push_str(&kiln_types::cut(part, 4 * QUOTED_MAX));
        }
    }
    out.into()
}

/// A problem in Kiln.toml. Its `Display` names file, line, column and key, shows the line,
/// and ends with a `help:` line when kiln knows the fix. The details are boxed (and reached
/// through `Deref`) so `Result<_, ConfigError>` stays small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(Box<ConfigErrorDetails>);

/// What a [`ConfigError`] knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrorDetails {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// The dotted key, when known (`case.smoke.success`).
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
    /// More of the same problem elsewhere in the file.
    pub note: Option<String>,
    snippet: Option<String>,
}

impl std::ops::Deref for ConfigError {
    type Target = ConfigErrorDetails;

    fn deref(&self) -> &ConfigErrorDetails {
        &self.0
    }
}

impl ConfigError {
    /// An error about the file as a whole.
    pub fn whole_file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self(Box::new(ConfigErrorDetails {
            file: file.into(),
            position: None,
            key: None,
            message: message.into(),
            help: None,
            note: None,
            snippet: None,
        }))
    }

    /// An error at a span of `source`.
    pub fn at(source: &Source, span: Option<Range<usize>>, key: Option<String>, message: impl Into<String>) -> Self {
        Self(Box::new(ConfigErrorDetails {
            file: source.path.clone(),
            position: span.as_ref().map(|s| source.line_col(s.start)),
            key,
            message: message.into(),
            help: None,
            note: None,
            snippet: span.as_ref().map(|s| source.snippet(s)),
        }))
    }

    /// Adds a `note:` line.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.0.note = Some(note.into());
        self
    }

    /// Adds a `help:` line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", cut_quoted(&self.message), self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{}`", kiln_types::cut(key, QUOTED_MAX))?;
        }
        f.write_str(")")?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        if let Some(note) = &self.note {
            write!(f, "\nnote: {}", cut_quoted(note))?;
        }
        if let Some(help) = &self.help {
            write!(f, "\nhelp: {}", cut_quoted(help))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The candidate closest to `wrong`, if one is close enough to be a likely typo.
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(wrong, c), c))
        .filter(|(distance, c)| *distance <= 2.max(c.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_position_key_snippet_and_help() {
        let source = Source { path: "Kiln.toml".into(), text: "[case.smoke]\nsucess = \"ok\"\n".into() };
        let err = ConfigError::at(&source, Some(13..19), Some("case.smoke.sucess".into()), "unknown key `sucess`")
            .with_help("a key with a similar name exists: `success`");
        assert_eq!(
            err.to_string(),
            "unknown key `sucess` (Kiln.toml:2:1, key `case.smoke.sucess`)\n  |\n2 | sucess = \"ok\"\n  | ^^^^^^\n\
             help: a key with a similar name exists: `success`"
        );
    }

    #[test]
    fn long_values_are_cut_in_the_message_and_the_snippet() {
        let value = "A".repeat(5_000_000);
        let source = Source { path: "Kiln.toml".into(), text: format!("[case.smoke]\ntimeout = \"{value}\"\n") };
        let span = 23..23 + value.len() + 2;
        let err = ConfigError::at(
            &source,
            Some(span),
            Some("case.smoke.timeout".into()),
            format!("invalid duration `{value}`"),
        )
        .with_help(format!("`{value}` is not a duration"));
        let shown = err.to_string();
        assert!(shown.len() < 1_000, "{} bytes: {}", shown.len(), &shown[..1_000]);
        assert!(shown.contains("bytes cut)"), "{shown}");
        assert!(shown.contains("(Kiln.toml:2:11, key `case.smoke.timeout`)"), "{shown}");
        assert!(shown.contains("2 | timeout = \"AAAA"), "{shown}");
    }

    #[test]
    fn a_snippet_far_into_a_long_line_shows_a_window_around_the_span() {
        let text = format!("x = [{}\"bad\"]\n", "\"a\", ".repeat(10_000));
        let at = text.find("\"bad\"").expect("bad");
        let source = Source { path: "Kiln.toml".into(), text };
        let err = ConfigError::at(&source, Some(at..at + 5), None, "bad value");
        let shown = err.to_string();
        assert!(shown.len() < 400, "{shown}");
        let lines: Vec<&str> = shown.lines().collect();
        let caret = lines[3].chars().position(|c| c == '^').expect("caret");
        let under: String = lines[2].chars().skip(caret).take(5).collect();
        assert_eq!(under, "\"bad\"", "{shown}");
    }

    #[test]
    fn a_file_that_is_not_utf8_is_refused_at_its_line_and_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("Kiln.toml");
        std::fs::write(&file, b"kiln-version = \"0.1\"\n[artifact.hello]\npackage = \"h\xff\xfe\"\n").expect("write");
        let err = Source::read(&file, "Kiln.toml".into()).expect_err("not UTF-8");
        let shown = err.to_string();
        assert!(
            shown.starts_with("Kiln.toml is not UTF-8: byte 0xff here cannot start a character (Kiln.toml:3:13)"),
            "{shown}"
        );
        assert!(shown.contains("3 | package = \"h\u{fffd}\u{fffd}\""), "{shown}");
    }

    #[test]
    fn closest_finds_typos_only() {
        assert_eq!(closest("sucess", ["success", "failure"]), Some("success"));
        assert_eq!(closest("zzz", ["success", "failure"]), None);
    }
}
