//! A run's report: readable text (each check, its figures, and the events before a failure),
//! JSON, and JUnit XML for CI systems. Everything but the wall-clock line repeats exactly for
//! the same scenario and seed in-process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use super::file::seconds;
use super::run::{Entry, Judged, Outcome};
use super::traffic::AppOutcome;

/// Events shown before a failed check.
const CONTEXT_EVENTS: usize = 8;

pub struct Report {
    pub scenario: String,
    pub seed: u64,
    /// "in-process" or "kernel".
    pub mode: &'static str,
    pub judged: Vec<Judged>,
    pub events: Vec<Entry>,
    pub apps: BTreeMap<String, AppOutcome>,
    pub simulated: Duration,
    pub trace: Option<(usize, u64)>,
    pub wall: Duration,
}

impl Report {
    pub fn new(
        scenario: &str,
        seed: u64,
        mode: &'static str,
        outcome: Outcome,
        wall: Duration,
    ) -> Self {
        Self {
            scenario: scenario.to_string(),
            seed,
            mode,
            judged: outcome.judged,
            events: outcome.events,
            apps: outcome.apps,
            simulated: outcome.simulated,
            trace: outcome.trace,
            wall,
        }
    }

    pub fn passed(&self) -> bool {
        self.judged.iter().all(|j| j.passed)
    }

    /// The report without its wall-clock line: what must repeat from a seed.
    pub fn repeatable(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {:?} (seed {}, {})",
            self.scenario, self.seed, self.mode
        );
        for judged in &self.judged {
            let verdict = if judged.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(out, "  {verdict}  {}: {}", judged.check, judged.detail);
            if !judged.passed {
                let before: Vec<&Entry> =
                    self.events.iter().filter(|e| e.at <= judged.at).collect();
                let _ = writeln!(out, "        events up to {}:", seconds(judged.at));
                for entry in &before[before.len().saturating_sub(CONTEXT_EVENTS)..] {
                    let _ = writeln!(out, "        {:>10}  {}", seconds(entry.at), entry.event);
                }
            }
        }
        let passed = self.judged.iter().filter(|j| j.passed).count();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = write!(
            out,
            "{verdict}: {passed} of {} checks, {} of run time",
            self.judged.len(),
            seconds(self.simulated)
        );
        if let Some((datagrams, digest)) = self.trace {
            let _ = write!(out, ", {datagrams} datagrams (trace {digest:016x})");
        }
        out.push('\n');
        out
    }

    pub fn text(&self) -> String {
        let speed = match self.mode {
            "in-process" => format!(
                " ({:.1} simulated s per wall s)",
                self.simulated.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
            ),
            _ => String::new(),
        };
        format!(
            "{}wall clock: {:.2} s{speed}\n",
            self.repeatable(),
            self.wall.as_secs_f64()
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "mode": self.mode,
            "passed": self.passed(),
            "checks": self.judged,
            "apps": self.apps,
            "events": self.events,
            "run_secs": self.simulated.as_secs_f64(),
            "wall_secs": self.wall.as_secs_f64(),
            "datagrams": self.trace.map(|t| t.0),
        })
    }

    pub fn junit(&self) -> String {
        let failures = self.judged.iter().filter(|j| !j.passed).count();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
            xml(&self.scenario),
            self.judged.len(),
            self.wall.as_secs_f64()
        );
        for judged in &self.judged {
            let _ = write!(
                out,
                "  <testcase classname=\"tern-netsim.{}\" name=\"{}\">",
                xml(&self.scenario),
                xml(&judged.check)
            );
            if !judged.passed {
                let _ = write!(out, "<failure message=\"{}\"/>", xml(&judged.detail));
            }
            out.push_str("</testcase>\n");
        }
        out.push_str("</testsuite>\n");
        out
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
