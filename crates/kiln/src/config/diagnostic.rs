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
    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// A one-line snippet with the span underlined.
    fn snippet(&self, span: &Range<usize>) -> String {
        let (line, col) = self.line_col(span.start);
        let text = self.text.lines().nth(line - 1).unwrap_or_default();
        let width = span.end.saturating_sub(span.start).clamp(1, text.len().saturating_sub(col - 1).max(1));
        let gutter = line.to_string().len();
        format!("{:gutter$} |\n{line} | {text}\n{:gutter$} | {}{}", "", "", " ".repeat(col - 1), "^".repeat(width))
    }
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
        write!(f, "{} ({}", self.message, self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        f.write_str(")")?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        if let Some(note) = &self.note {
            write!(f, "\nnote: {note}")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\nhelp: {help}")?;
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
    fn closest_finds_typos_only() {
        assert_eq!(closest("sucess", ["success", "failure"]), Some("success"));
        assert_eq!(closest("zzz", ["success", "failure"]), None);
    }
}
