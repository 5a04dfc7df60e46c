//! Text from outside kiln made safe to print: untrusted names (archive members, link targets,
//! store entry names) shown with their control characters escaped, and long values cut.
//!
//! Every crate that prints text it did not write uses these, so one rule decides what reaches
//! a terminal or a GitHub Actions log: nothing in the text can move the cursor, ring the bell,
//! start a new line, reorder what is shown, or start a workflow command.

use std::{borrow::Cow, fmt::Write as _};

/// `text` with control characters escaped the way Rust's `escape_debug` writes them (`\n`,
/// `\t`, `\r`, `\0`, `\x1b`, `\u{9b}`), bidirectional overrides and zero-width characters as
/// `\u{...}`, and backslashes doubled so an escape cannot be forged. Printable text, quotes
/// and other non-ASCII characters stay as they are.
pub fn escape_untrusted(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    push_escaped(&mut out, text);
    Cow::Owned(out)
}

/// [`escape_untrusted`] for bytes that need not be UTF-8 (a tar member's name): valid UTF-8
/// runs are escaped as text, and every byte that is not part of one is shown as `\xNN`.
pub fn escape_untrusted_bytes(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return escape_untrusted(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        push_escaped(&mut out, chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    Cow::Owned(out)
}

/// `text` cut to about `max` bytes when longer: its start and its end, with the number of
/// bytes left out between them, so a 5 MB value in a config file or a name is quoted in a
/// message as a line, not as five megabytes. Cuts fall on character boundaries.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let head_end = floor_char_boundary(text, max * 2 / 3);
    let tail_start = ceil_char_boundary(text, text.len() - max / 3).max(head_end);
    let left_out = tail_start - head_end;
    Cow::Owned(format!("{}…({left_out} bytes cut)…{}", &text[..head_end], &text[tail_start..]))
}

fn push_escaped(out: &mut String, text: &str) {
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
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
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

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(escape_untrusted_bytes(b"plain"), "plain");
        assert_eq!(escape_untrusted_bytes(b"a\xff\xc3"), "a\\xff\\xc3");
        assert_eq!(escape_untrusted_bytes(b"\xff\n::error::x"), "\\xff\\n::error::x");
        assert_eq!(escape_untrusted_bytes("\u{9b}é".as_bytes()), "\\u{9b}é");
    }

    #[test]
    fn long_text_keeps_its_ends_and_says_how_much_was_cut() {
        assert_eq!(cut("short", 10), "short");
        let long = "a".repeat(50) + &"b".repeat(5_000_000) + "end";
        let shown = cut(&long, 90);
        assert!(shown.len() < 140, "{shown}");
        assert!(shown.starts_with(&"a".repeat(50)), "{shown}");
        assert!(shown.ends_with("bend"), "{shown}");
        assert!(shown.contains("(4999963 bytes cut)"), "{shown}");
        let wide = "é".repeat(100);
        assert!(cut(&wide, 11).contains("bytes cut"), "cuts land on character boundaries");
    }
}
