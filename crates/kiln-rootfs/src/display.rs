//! Untrusted text (archive member names, link targets, paths taken from archives) made safe
//! to print: control and bidirectional-formatting characters are shown as escapes, so a
//! member name cannot move the cursor, ring the bell, start a new line or a workflow command.
//!
//! A private helper until a shared one exists in `kiln-types`.

use std::{borrow::Cow, fmt::Write as _};

/// `text` with control characters escaped the way Rust's `escape_debug` writes them (`\n`,
/// `\t`, `\r`, `\0`, `\x1b`, `\u{9b}`), bidirectional overrides and zero-width characters as
/// `\u{...}`, and backslashes doubled so an escape cannot be forged. Printable text, quotes
/// and other non-ASCII characters stay as they are.
pub(crate) fn escape_untrusted(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_visibly() {
        assert_eq!(escape_untrusted("usr/bin/ok"), "usr/bin/ok");
        assert_eq!(escape_untrusted("a\u{1b}[31mred\u{7}\nb"), "a\\x1b[31mred\\x07\\nb");
        assert_eq!(escape_untrusted("\n::error::pwned"), "\\n::error::pwned");
        assert_eq!(escape_untrusted("tab\there\r\0"), "tab\\there\\r\\0");
        assert_eq!(escape_untrusted("c1\u{9b}31m del\u{7f}"), "c1\\u{9b}31m del\\x7f");
        assert_eq!(escape_untrusted("rtl\u{202e}gpj.exe"), "rtl\\u{202e}gpj.exe");
        assert_eq!(escape_untrusted("back\\x1b slash"), "back\\\\x1b slash", "a literal `\\x1b` stays distinct");
        assert_eq!(escape_untrusted("naïve ünïcödé \"q\" 'q'"), "naïve ünïcödé \"q\" 'q'");
    }
}
