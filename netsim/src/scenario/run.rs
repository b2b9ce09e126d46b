//! Running a scenario on a [`World`] (simulated in-process, or the kernel lab): wait for every
//! node to register, play the timeline, run the apps, sample paths when the checks ask, then
//! judge every check. The runner only reads tokio's clock, so in-process it runs on virtual
//! time and repeats exactly from a seed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tern_daemon::env::BoxFuture;
use tern_proto::api::Request;
use tokio::time::Instant;

use super::file::{Action, Check, Scenario, seconds};
use super::traffic::{self, AppOutcome};
use crate::local_api::Answered;

/// The nodes of a running scenario and the network between them.
pub trait World: Send + Sync {
    /// Every node's name, rendezvous first.
    fn nodes(&self) -> Vec<String>;
    /// A local API request to `node`, on a new connection; fails when the node is down.
    fn request<'a>(
        &'a self,
        node: &'a str,
        request: Request,
    ) -> BoxFuture<'a, Result<Answered, String>>;
    /// Carries out a timeline event; the answer adds what the log should say about it.
    fn apply<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<String, String>>;
    /// Datagrams sent and a digest of their trace, where the world keeps one.
    fn trace(&self) -> Option<(usize, u64)>;
    /// Waits until `deadline` for the commands `exec` steps started: each one's exit code,
    /// or why it has none (one still running at the deadline is killed).
    fn exit_codes(&self, deadline: Instant)
    -> BoxFuture<'_, BTreeMap<String, Result<i32, String>>>;
}

/// What happened, when: the run's event log.
#[derive(Clone)]
pub struct Log {
    started: Instant,
    entries: Arc<Mutex<Vec<Entry>>>,
    /// Run time of the latest event, in milliseconds, for a progress line outside the run.
    progress: Arc<AtomicU64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    #[serde(serialize_with = "as_seconds")]
    pub at: Duration,
    pub event: String,
}

pub(super) fn as_seconds<S: serde::Serializer>(at: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((at.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl Log {
    pub fn new(progress: Arc<AtomicU64>) -> Self {
        Self {
            started: Instant::now(),
            entries: Arc::default(),
            progress,
        }
    }

    /// Time since the run started.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn note(&self, event: String) {
        let at = self.now();
        tracing::debug!(at = %seconds(at), "{event}");
        self.progress.store(at.as_millis() as u64, Relaxed);
        self.entries
            .lock()
            .expect("log lock")
            .push(Entry { at, event });
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().expect("log lock").clone()
    }
}

/// A check and how it went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Judged {
    pub check: String,
    pub passed: bool,
    pub detail: String,
    /// Where in the run it was decided: the events before it explain a failure.
    #[serde(serialize_with = "as_seconds")]
    pub at: Duration,
}

/// Everything a run produced.
pub struct Outcome {
    pub judged: Vec<Judged>,
    pub events: Vec<Entry>,
    pub apps: BTreeMap<String, AppOutcome>,
    pub simulated: Duration,
    pub trace: Option<(usize, u64)>,
}

const POLL: Duration = Duration::from_millis(100);

/// Runs `scenario` on `world` and judges its checks.
pub async fn run(world: Arc<dyn World>, scenario: &Scenario, log: Log) -> Outcome {
    let deadline = Instant::now() + scenario.duration;
    let nodes = world.nodes();
    log.note(format!("{} nodes started", nodes.len()));
    let registered = tokio::time::timeout_at(deadline, async {
        for node in &nodes {
            while status(&*world, node)
                .await
                .is_none_or(|s| s["registered"] != true)
            {
                tokio::time::sleep(POLL).await;
            }
        }
    });
    match registered.await {
        Ok(()) => log.note("every node registered".into()),
        Err(_) => log.note("not every node registered within the run".into()),
    }
    let mut first_addresses = BTreeMap::new();
    for node in &nodes {
        first_addresses.insert(node.clone(), address(&*world, node).await);
    }

    let started = log.started;
    let mut running = Vec::new();
    let timeline = {
        let (world, log, events) = (world.clone(), log.clone(), scenario.events.clone());
        tokio::spawn(async move {
            for event in events {
                tokio::time::sleep_until(started + event.at).await;
                match world.apply(&event.action).await {
                    Ok(detail) if detail.is_empty() => log.note(event.action.to_string()),
                    Ok(detail) => log.note(format!("{} ({detail})", event.action)),
                    Err(e) => log.note(format!("{} failed: {e}", event.action)),
                }
            }
        })
    };
    running.push(timeline);
    let samples: Arc<Mutex<BTreeMap<usize, Result<String, String>>>> = Arc::default();
    for (index, check) in scenario.checks.iter().enumerate() {
        if let Check::Path { from, to, at, .. } = check.clone() {
            let (world, samples) = (world.clone(), samples.clone());
            running.push(tokio::spawn(async move {
                tokio::time::sleep_until(started + at).await;
                let path = path(&*world, &from, &to).await;
                samples.lock().expect("samples lock").insert(index, path);
            }));
        }
    }
    let mut outcomes = BTreeMap::new();
    for app in &scenario.apps {
        let outcome = Arc::new(Mutex::new(AppOutcome::default()));
        outcomes.insert(app.name.clone(), outcome.clone());
        let (world, log, app) = (world.clone(), log.clone(), app.clone());
        running.push(tokio::spawn(async move {
            tokio::time::sleep_until(started + app.start).await;
            traffic::run(world, log, app, outcome).await;
        }));
    }
    let everything = async {
        for task in &mut running {
            let _ = task.await;
        }
    };
    if tokio::time::timeout_at(deadline, everything).await.is_err() {
        log.note("the run's duration is over".into());
    }
    for task in &running {
        task.abort();
    }
    let exits = world.exit_codes(deadline).await;
    let ended = log.now();
    let apps: BTreeMap<String, AppOutcome> = outcomes
        .into_iter()
        .map(|(name, o)| (name, o.lock().expect("outcome lock").clone()))
        .collect();
    let samples = samples.lock().expect("samples lock").clone();
    let mut judged = Vec::new();
    for (index, check) in scenario.checks.iter().enumerate() {
        let (passed, detail, at) = match check {
            Check::Delivered(app) => delivered(&apps[app], ended),
            Check::Path { path, at, .. } => match &samples.get(&index) {
                Some(Ok(found)) => (found == path, format!("the path was {found}"), *at),
                Some(Err(e)) => (false, e.clone(), *at),
                None => (false, "the run ended before it was sampled".into(), ended),
            },
            Check::Reconnected { app, within } => reconnected(&apps[app], *within, ended),
            Check::Latency { app, quantile, max } => latency(&apps[app], *quantile, *max, ended),
            Check::ExitCode { exec, code } => match exits.get(exec) {
                Some(Ok(exited)) => (
                    exited == code,
                    format!("{exec} exited with {exited}"),
                    ended,
                ),
                Some(Err(why)) => (false, format!("{exec}: {why}"), ended),
                None => (false, format!("{exec} never ran"), ended),
            },
            Check::KeptAddress(node) => {
                let now = address(&*world, node).await;
                let before = &first_addresses[node];
                match (before, now) {
                    (Some(before), Some(now)) if *before == now => {
                        (true, format!("{node} is still {now}"), ended)
                    }
                    (Some(before), Some(now)) => {
                        (false, format!("{node} was {before}, is now {now}"), ended)
                    }
                    _ => (
                        false,
                        format!("{node} did not answer at the start and the end"),
                        ended,
                    ),
                }
            }
        };
        judged.push(Judged {
            check: check.title(),
            passed,
            detail,
            at,
        });
    }
    Outcome {
        judged,
        events: log.entries(),
        apps,
        simulated: ended,
        trace: world.trace(),
    }
}

async fn status(world: &dyn World, node: &str) -> Option<Value> {
    let answered = world.request(node, Request::Status).await.ok()?;
    Some(answered.data)
}

async fn address(world: &dyn World, node: &str) -> Option<String> {
    status(world, node).await?["address"]
        .as_str()
        .map(str::to_string)
}

/// The path `from`'s connection to `to` takes now.
async fn path(world: &dyn World, from: &str, to: &str) -> Result<String, String> {
    let target = address(world, to)
        .await
        .ok_or_else(|| format!("{to} does not answer"))?;
    let mut after = None;
    loop {
        let peers = world
            .request(
                from,
                Request::Peers {
                    after: after.clone(),
                },
            )
            .await
            .map_err(|e| format!("{from}: {e}"))?
            .data;
        let list = peers["peers"].as_array().cloned().unwrap_or_default();
        if let Some(peer) = list.iter().find(|p| p["address"] == target.as_str()) {
            return Ok(peer["path"].as_str().unwrap_or("unknown").to_string());
        }
        match peers["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Err(format!("{from} has no connection to {to}")),
        }
    }
}

fn delivered(app: &AppOutcome, ended: Duration) -> (bool, String, Duration) {
    let at = app.finished.unwrap_or(ended);
    if let Some(first) = app.corrupt.first() {
        return (
            false,
            format!("{} things arrived wrong; first: {first}", app.corrupt.len()),
            at,
        );
    }
    match app.finished {
        Some(done) if app.delivered == app.expected => (
            true,
            format!(
                "{} of {} delivered intact, once, by {}",
                app.delivered,
                app.expected,
                seconds(done)
            ),
            at,
        ),
        _ => (
            false,
            format!("{} of {} delivered by the end", app.delivered, app.expected),
            at,
        ),
    }
}

fn reconnected(app: &AppOutcome, within: Duration, ended: Duration) -> (bool, String, Duration) {
    let outages: Vec<String> = app
        .outages
        .iter()
        .map(|(began, ended)| match ended {
            Some(ended) => format!("{} at {}", seconds(*ended - *began), seconds(*began)),
            None => format!("from {} on", seconds(*began)),
        })
        .collect();
    let worst = app
        .outages
        .iter()
        .find(|(began, back)| back.is_none_or(|b| b - *began > within));
    match (worst, app.finished) {
        (None, Some(_)) if outages.is_empty() => (true, "never lost its peer".into(), ended),
        (None, Some(_)) => (true, format!("outages: {}", outages.join(", ")), ended),
        (Some((began, _)), _) => (
            false,
            format!("outages: {}", outages.join(", ")),
            *began + within,
        ),
        (None, None) => (false, "the app did not finish".into(), ended),
    }
}

fn latency(
    app: &AppOutcome,
    quantile: f64,
    max: Duration,
    ended: Duration,
) -> (bool, String, Duration) {
    let mut sorted = app.latencies.clone();
    if sorted.is_empty() {
        return (false, "no request was answered".into(), ended);
    }
    sorted.sort();
    let index = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    let found = sorted[index];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    (
        found <= max,
        format!(
            "p{} of {} requests: {}",
            quantile * 100.0,
            sorted.len(),
            ms(found)
        ),
        ended,
    )
}
