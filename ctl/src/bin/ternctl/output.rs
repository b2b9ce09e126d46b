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
        println!("{}", report.text.trim_end());
    }
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
        eprintln!("ternctl: {}", failure.message);
        if let Some(hint) = &failure.hint {
            eprintln!("hint: {hint}");
        }
    }
}
