//! How every ternctl command reports: plain text, or with `--json` one document
//! `{"ok": true, "data": …}` / `{"ok": false, "error": {"code", "message", "hint"}}`.

use serde_json::{Value, json};

/// A failure as the user sees it: a stable code, what went wrong, and what to do about it.
#[derive(Debug)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// What a command produced on success: JSON data, and the text form of the same facts.
pub struct Report {
    pub data: Value,
    pub text: String,
}

pub fn print_success(json_mode: bool, report: &Report) {
    if json_mode {
        println!("{}", json!({ "ok": true, "data": report.data }));
    } else if !report.text.is_empty() {
        println!("{}", escape_controls(report.text.trim_end(), Lines::Keep));
    }
}

/// Whether [`escape_controls`] leaves line breaks (and tabs) as they are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    Keep,
    Escape,
}

/// Text for a terminal: control characters (and Unicode's bidirectional overrides, which
/// reorder what the reader sees) are shown escaped, so text a peer wrote can neither drive
/// the operator's terminal nor pass for ternctl's own lines. Peer text in a line of ours
/// uses `Lines::Escape`; whole reports use `Lines::Keep` for their own layout.
pub fn escape_controls(text: &str, lines: Lines) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let layout = matches!(c, '\n' | '\t') && lines == Lines::Keep;
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if (c.is_control() && !layout) || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn print_failure(json_mode: bool, failure: &Failure) {
    if json_mode {
        let error = json!({
            "code": failure.code,
            "message": failure.message,
            "hint": failure.hint,
        });
        println!("{}", json!({ "ok": false, "error": error }));
    } else {
        eprintln!(
            "ternctl: {}",
            escape_controls(&failure.message, Lines::Escape)
        );
        if let Some(hint) = &failure.hint {
            eprintln!("hint: {}", escape_controls(hint, Lines::Escape));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_escaped() {
        let hostile = "ok\u{1b}[2J\napproved\u{202e}txt";
        assert_eq!(
            escape_controls(hostile, Lines::Escape),
            "ok\\u{1b}[2J\\napproved\\u{202e}txt"
        );
        assert_eq!(escape_controls("a\n\tb", Lines::Keep), "a\n\tb");
        assert_eq!(
            escape_controls("naïve ünïcode", Lines::Escape),
            "naïve ünïcode"
        );
    }
}
