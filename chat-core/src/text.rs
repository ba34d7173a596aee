//! Rules for user-supplied text: which characters names, "about" texts and
//! messages may hold, and how to print any of them safely on a terminal.
//!
//! Control characters (C0 `U+0000..=U+001F`, `DEL`, C1 `U+0080..=U+009F`)
//! move a terminal's cursor, clear its screen or set its title, and
//! explicit bidirectional formatting characters (embeddings, overrides and
//! isolates) make text display in another order than it is read: "Trojan
//! Source" names that show as someone else's. So:
//!
//! | text | refused |
//! |---|---|
//! | display names, group names | every control character and every bidi formatting character |
//! | "about" | the same, except `\n` and `\t` |
//! | messages | control characters other than `\t`, `\n`, `\r` (bidi characters are allowed: right-to-left scripts need them) |
//!
//! [`printable`] escapes whatever a client must not print raw.

use std::borrow::Cow;
use std::fmt::Write;

use crate::error::Error;

/// Longest display name or group name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// Longest "about" text, in characters.
pub const MAX_ABOUT_CHARS: usize = 1_000;

/// Whether `c` is an explicit bidirectional formatting character: LRE,
/// RLE, PDF, LRO, RLO (`U+202A..=U+202E`) and LRI, RLI, FSI, PDI
/// (`U+2066..=U+2069`). Marks such as LRM are not: they reorder nothing
/// around them.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` is a C0 or C1 control character or `DEL`.
pub fn is_control(c: char) -> bool {
    c.is_control()
}

fn refuse(what: &str, c: char) -> Error {
    Error::invalid(format!(
        "{what} contains the control or bidirectional character U+{:04X}",
        c as u32
    ))
}

fn check_length(value: &str, max: usize, what: &str) -> Result<(), Error> {
    // Byte length bounds the character count from above: count only when needed.
    if value.len() > max && value.chars().count() > max {
        return Err(Error::invalid(format!("{what} is over {max} characters")));
    }
    Ok(())
}

/// Checks a display name or group name: 1 to [`MAX_NAME_CHARS`]
/// characters, not only whitespace, with no control or bidi formatting
/// character.
pub fn validate_name(value: &str, what: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    check_length(value, MAX_NAME_CHARS, what)?;
    match value
        .chars()
        .find(|c| is_control(*c) || is_bidi_control(*c))
    {
        Some(c) => Err(refuse(what, c)),
        None => Ok(()),
    }
}

/// Checks an "about" text: at most [`MAX_ABOUT_CHARS`] characters, with no
/// control or bidi formatting character other than `\n` and `\t`.
pub fn validate_about(value: &str) -> Result<(), Error> {
    check_length(value, MAX_ABOUT_CHARS, "about")?;
    match value
        .chars()
        .find(|c| (is_control(*c) && !matches!(c, '\n' | '\t')) || is_bidi_control(*c))
    {
        Some(c) => Err(refuse("about", c)),
        None => Ok(()),
    }
}

/// Checks a message's characters: no control character other than `\t`,
/// `\n` and `\r`. (Emptiness and length are the send path's own checks,
/// with their own error codes.)
pub fn validate_message_text(content: &str) -> Result<(), Error> {
    match content
        .chars()
        .find(|c| is_control(*c) && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(refuse("message", c)),
        None => Ok(()),
    }
}

/// `text` safe to print on a terminal: every control character but `\n`
/// and `\t`, and every bidi formatting character, is replaced by its
/// escape (`\u{1b}`), and so is a backslash before one, so the output
/// cannot be confused with text that really contained the escape. Text
/// with nothing to escape is returned as is.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| (is_control(c) && !matches!(c, '\n' | '\t')) || is_bidi_control(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_controls_and_bidi_characters() {
        assert!(validate_name("Alice Ünïcode 🦀", "display name").is_ok());
        assert!(
            validate_name("عربي", "display name").is_ok(),
            "RTL script itself is fine"
        );
        for bad in [
            "",
            "   ",
            "a\u{0}b",
            "tab\there",
            "line\nbreak",
            "esc\u{1b}[2J",
            "del\u{7f}",
            "c1\u{85}",
            "c1\u{9b}31m",
            "evil\u{202E}gnp.exe",
            "iso\u{2066}late",
            "pdf\u{202C}",
        ] {
            let e = validate_name(bad, "display name");
            assert!(
                matches!(e, Err(Error::InvalidInput { .. })),
                "{bad:?} must be refused, got {e:?}"
            );
        }
        assert!(validate_name(&"x".repeat(MAX_NAME_CHARS), "name").is_ok());
        assert!(validate_name(&"x".repeat(MAX_NAME_CHARS + 1), "name").is_err());
        assert!(validate_name(&"é".repeat(MAX_NAME_CHARS), "name").is_ok());
    }

    #[test]
    fn about_allows_newlines_and_tabs_only() {
        assert!(validate_about("").is_ok());
        assert!(validate_about("likes\nnewlines\tand tabs").is_ok());
        assert!(validate_about("cr\r\n").is_err());
        assert!(validate_about("bell\u{7}").is_err());
        assert!(validate_about("rlo\u{202E}").is_err());
        assert!(validate_about(&"y".repeat(MAX_ABOUT_CHARS + 1)).is_err());
    }

    #[test]
    fn messages_refuse_controls_but_keep_whitespace_and_bidi() {
        assert!(validate_message_text("hello\tworld\r\nbye").is_ok());
        assert!(validate_message_text("שלום \u{202B}embedded\u{202C}").is_ok());
        for bad in [
            "\u{0}",
            "a\u{1b}[31mred",
            "\u{7f}",
            "\u{80}",
            "\u{9f}",
            "\u{8}",
        ] {
            assert!(
                matches!(validate_message_text(bad), Err(Error::InvalidInput { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        assert!(matches!(printable("plain text\n"), Cow::Borrowed(_)));
        assert!(matches!(printable("back\\slash"), Cow::Borrowed(_)));
        assert_eq!(printable("\u{1b}[2Jgone"), "\\u{1b}[2Jgone");
        assert_eq!(printable("evil\u{202E}txt"), "evil\\u{202e}txt");
        assert_eq!(printable("\u{9b}\r"), "\\u{9b}\\u{d}");
        // A literal backslash next to an escape cannot pass for one.
        assert_eq!(printable("\\u{1b}\u{1b}"), "\\\\u{1b}\\u{1b}");
        for s in ["\u{0}", "a\u{85}b", "\u{2066}x\u{2069}"] {
            let out = printable(s);
            assert!(!out
                .chars()
                .any(|c| (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c)));
        }
    }
}
