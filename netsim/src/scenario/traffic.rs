//! The built-in apps a scenario runs, each driving its nodes through their local API exactly
//! as an agent does: a bulk transfer checked byte for byte, JSON-RPC request and reply at a
//! rate, an MCP-style session (server-to-client requests and notifications in the middle of
//! a call), and pings between every pair of a group. Clients that lose their peer redial and
//! carry on; what happened to them is their [`AppOutcome`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tern_daemon::env::LinkIo;
use tern_proto::api::Request;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use super::file::{App, AppKind, seconds};
use super::run::{Log, World};

/// How long a client waits for an answer before it counts its peer as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Between a failure and the next try.
const RETRY: Duration = Duration::from_secs(1);
const CHUNK: usize = 64 << 10;

/// What an app did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AppOutcome {
    /// When it had done everything it set out to (None: it had not by the end).
    pub finished: Option<Duration>,
    /// Bytes (bulk) or requests (rpc, mcp, ping) it had to deliver.
    pub expected: u64,
    /// Bytes that arrived intact, or requests answered correctly.
    pub delivered: u64,
    /// What arrived that should not have: wrong bytes, unmatched or repeated replies.
    pub corrupt: Vec<String>,
    /// Times it lost its peer: when, and when it was working again (None: never).
    pub outages: Vec<(Duration, Option<Duration>)>,
    /// Request latencies (rpc, mcp: each call; ping: each first answer).
    #[serde(skip)]
    pub latencies: Vec<Duration>,
}

/// Runs `app` until it is done; the outcome is complete even when the run ends first.
pub async fn run(
    world: Arc<dyn World>,
    log: Log,
    app: App,
    outcome: Arc<std::sync::Mutex<AppOutcome>>,
) {
    let track = Track {
        log,
        app: app.name.clone(),
        outcome,
        open: Arc::default(),
    };
    match app.kind {
        AppKind::Bulk => bulk(world, track, app).await,
        AppKind::Rpc | AppKind::Mcp => session(world, track, app).await,
        AppKind::Ping => ping(world, track, app).await,
    }
}

/// Writes an app's outcome and log lines as it goes.
#[derive(Clone)]
struct Track {
    log: Log,
    app: String,
    outcome: Arc<std::sync::Mutex<AppOutcome>>,
    /// The outage this track's actor is in (its index in `outages`): only that actor's
    /// success ends it.
    open: Arc<std::sync::Mutex<Option<usize>>>,
}

impl Track {
    fn with<T>(&self, f: impl FnOnce(&mut AppOutcome) -> T) -> T {
        f(&mut self.outcome.lock().expect("outcome lock"))
    }

    fn note(&self, text: impl std::fmt::Display) {
        self.log.note(format!("{}: {text}", self.app));
    }

    /// The same app's track for another actor of it (a pinger of its own): its outages
    /// begin and end on its own attempts.
    fn actor(&self) -> Track {
        Track {
            open: Arc::default(),
            ..self.clone()
        }
    }

    /// The attempt begun at `since` failed: an outage from then, unless one is going on.
    fn lost(&self, since: Duration, why: impl std::fmt::Display) {
        let mut open = self.open.lock().expect("outage lock");
        if open.is_none() {
            *open = Some(self.with(|o| {
                o.outages.push((since, None));
                o.outages.len() - 1
            }));
            self.note(format!("lost its peer: {why}"));
        }
    }

    fn working(&self) {
        let Some(index) = self.open.lock().expect("outage lock").take() else {
            return;
        };
        let now = self.log.now();
        let after = self.with(|o| {
            o.outages[index].1 = Some(now);
            now - o.outages[index].0
        });
        self.note(format!("working again after {}", seconds(after)));
    }

    fn corrupt(&self, what: String) {
        self.note(format!("corrupt: {what}"));
        self.with(|o| o.corrupt.push(what));
    }

    fn finish(&self, summary: String) {
        let now = self.log.now();
        self.with(|o| o.finished = Some(now));
        self.note(summary);
    }
}

/// The bytes a bulk app sends: different at every offset and for every app.
fn payload_byte(app_port: u16, offset: u64) -> u8 {
    (offset as u32)
        .wrapping_mul(2654435761)
        .wrapping_add(u32::from(app_port).wrapping_mul(97))
        .rotate_right(13) as u8
}

async fn listen(world: &dyn World, node: &str, port: u16) -> Result<Box<dyn LinkIo>, String> {
    let listen = Request::Listen { port, open: true };
    Ok(world.request(node, listen).await?.connection)
}

async fn accept(world: &dyn World, node: &str, port: u16) -> Result<Box<dyn LinkIo>, String> {
    Ok(world
        .request(
            node,
            Request::Accept {
                port,
                attach: false,
            },
        )
        .await?
        .connection)
}

async fn dial(
    world: &dyn World,
    from: &str,
    to: &str,
    port: u16,
) -> Result<Box<dyn LinkIo>, String> {
    let dial = Request::Dial {
        target: to.to_string(),
        port,
        attach: false,
    };
    Ok(world.request(from, dial).await?.connection)
}

/// Keeps `port` listened on at `node` across the node's restarts, handing each accepted
/// stream to `serve`.
async fn serve_forever<F, Fut>(world: Arc<dyn World>, node: String, port: u16, serve: F)
where
    F: Fn(Box<dyn LinkIo>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok(_held) = listen(&*world, &node, port).await else {
            tokio::time::sleep(RETRY / 2).await;
            continue;
        };
        while let Ok(stream) = accept(&*world, &node, port).await {
            tokio::spawn(serve(stream));
        }
        // The node went, or refused: try again in a moment, never in a busy loop.
        tokio::time::sleep(RETRY / 2).await;
    }
}

async fn bulk(world: Arc<dyn World>, track: Track, app: App) {
    let (from, to, port, total) = (app.from[0].clone(), app.to[0].clone(), app.port, app.bytes);
    track.with(|o| o.expected = total);
    let receiving = {
        let track = track.clone();
        move |mut stream: Box<dyn LinkIo>| {
            let track = track.clone();
            async move {
                let mut buf = vec![0u8; CHUNK];
                let (mut offset, mut intact) = (0u64, true);
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => return track.lost(track.log.now(), format!("receiving: {e}")),
                    };
                    for (i, &byte) in buf[..n].iter().enumerate() {
                        let at = offset + i as u64;
                        if intact && (at >= total || byte != payload_byte(port, at)) {
                            intact = false;
                            track.corrupt(format!("byte {at} is not the one sent"));
                        }
                    }
                    offset += n as u64;
                    if intact {
                        track.with(|o| o.delivered = offset);
                    }
                }
                // The sender counts the transfer done only when the receiver says so.
                let _ = stream.write_all(&offset.to_be_bytes()).await;
                let _ = stream.shutdown().await;
            }
        }
    };
    tokio::spawn(serve_forever(world.clone(), to.clone(), port, receiving));
    track.note(format!("sending {total} bytes from {from} to {to}"));
    let started = Instant::now();
    let mut stream = loop {
        let began = track.log.now();
        match dial(&*world, &from, &to, port).await {
            Ok(stream) => break stream,
            Err(e) => {
                track.lost(began, format!("dial: {e}"));
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    track.working();
    let mut sent = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK);
    while sent < total {
        chunk.clear();
        let end = (sent + CHUNK as u64).min(total);
        chunk.extend((sent..end).map(|at| payload_byte(port, at)));
        if let Err(e) = stream.write_all(&chunk).await {
            let why = format!("sending at byte {sent}: {e}; a bulk transfer does not resume");
            return track.lost(track.log.now(), why);
        }
        sent = end;
    }
    if let Err(e) = stream.shutdown().await {
        return track.lost(track.log.now(), format!("finishing: {e}"));
    }
    let mut count = [0u8; 8];
    match stream.read_exact(&mut count).await {
        Ok(_) if u64::from_be_bytes(count) == total => track.finish(format!(
            "{total} bytes arrived in {}",
            seconds(started.elapsed())
        )),
        Ok(_) => track.corrupt(format!(
            "the receiver got {} bytes of {total}",
            u64::from_be_bytes(count)
        )),
        Err(e) => track.lost(
            track.log.now(),
            format!("waiting for the receiver's count: {e}"),
        ),
    }
}

/// JSON lines one way and the other over a stream.
struct Lines {
    reader: BufReader<tokio::io::ReadHalf<Box<dyn LinkIo>>>,
    writer: tokio::io::WriteHalf<Box<dyn LinkIo>>,
}

impl Lines {
    fn new(stream: Box<dyn LinkIo>) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Self {
            reader: BufReader::new(reader),
            writer,
        }
    }

    async fn send(&mut self, message: &Value) -> Result<(), String> {
        let mut line = message.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("sending: {e}"))
    }

    /// The next message; a client gives up after `ANSWER_TIMEOUT`, a server waits for its
    /// client as long as it takes.
    async fn next(&mut self, patient: bool) -> Result<Value, String> {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line);
        let read = match patient {
            true => Ok(read.await),
            false => tokio::time::timeout(ANSWER_TIMEOUT, read).await,
        };
        match read {
            Err(_) => Err(format!("no answer within {}", seconds(ANSWER_TIMEOUT))),
            Ok(Err(e)) => Err(format!("receiving: {e}")),
            Ok(Ok(0)) => Err("the stream ended".into()),
            Ok(Ok(_)) => serde_json::from_str(&line).map_err(|e| format!("not JSON: {e}")),
        }
    }
}

/// The server of an rpc or mcp app: answers each request; in an MCP-style session it first
/// sends a progress notification and asks the client a question of its own, and answers the
/// call only once the client has answered that.
async fn serve_session(stream: Box<dyn LinkIo>, mcp: bool) {
    let mut lines = Lines::new(stream);
    while let Ok(message) = lines.next(true).await {
        let (Some(id), Some(method)) = (message.get("id").cloned(), message.get("method")) else {
            continue; // a notification
        };
        let result = match method.as_str() {
            Some("initialize") => json!({"protocolVersion": "2025-06-18", "capabilities": {}}),
            Some("tools/call") if mcp => {
                let asked = json!(format!("server-{id}"));
                let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": id, "progress": 0.5}});
                let question = json!({"jsonrpc": "2.0", "id": asked, "method": "sampling/createMessage",
                    "params": {"messages": [], "maxTokens": 1}});
                if lines.send(&progress).await.is_err() || lines.send(&question).await.is_err() {
                    return;
                }
                match lines.next(true).await {
                    Ok(answer) if answer.get("id") == Some(&asked) => {}
                    _ => return, // the client broke the session
                }
                json!({"content": [{"type": "text", "text": "done"}]})
            }
            _ => message.get("params").cloned().unwrap_or(Value::Null),
        };
        if lines
            .send(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The client of an rpc or mcp app: `requests` calls, `rate` a second, each retried (after a
/// redial, and for mcp a new initialize) until answered.
async fn session(world: Arc<dyn World>, track: Track, app: App) {
    let mcp = app.kind == AppKind::Mcp;
    let (from, to, port) = (app.from[0].clone(), app.to[0].clone(), app.port);
    track.with(|o| o.expected = app.requests);
    tokio::spawn(serve_forever(
        world.clone(),
        to.clone(),
        port,
        move |stream| serve_session(stream, mcp),
    ));
    let interval = Duration::from_secs_f64(1.0 / app.rate);
    let started = Instant::now();
    let mut lines: Option<Lines> = None;
    let mut next_id = 1u64;
    for call in 0..app.requests {
        tokio::time::sleep_until(started + interval * call as u32).await;
        loop {
            let began = track.log.now();
            if lines.is_none() {
                match open_session(&*world, &from, &to, port, mcp, &mut next_id).await {
                    Ok(opened) => lines = Some(opened),
                    Err(e) => {
                        track.lost(began, e);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            let open = lines.as_mut().expect("opened above");
            let id = next_id;
            next_id += 1;
            let sent_at = Instant::now();
            match call_once(open, id, call, mcp, &track).await {
                Ok(()) => {
                    track.with(|o| {
                        o.delivered += 1;
                        o.latencies.push(sent_at.elapsed());
                    });
                    track.working();
                    break;
                }
                Err(e) => {
                    track.lost(began, e);
                    lines = None;
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
    let summary = format!(
        "{} calls answered in {}",
        app.requests,
        seconds(started.elapsed())
    );
    track.finish(summary);
}

async fn open_session(
    world: &dyn World,
    from: &str,
    to: &str,
    port: u16,
    mcp: bool,
    next_id: &mut u64,
) -> Result<Lines, String> {
    let mut lines = Lines::new(
        dial(world, from, to, port)
            .await
            .map_err(|e| format!("dial: {e}"))?,
    );
    if mcp {
        let id = *next_id;
        *next_id += 1;
        lines
            .send(&json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {}}))
            .await?;
        let answer = lines.next(false).await?;
        if answer.get("id") != Some(&json!(id)) {
            return Err(format!("initialize answered with {answer}"));
        }
        lines
            .send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
    }
    Ok(lines)
}

/// One call: sent, and its answer matched (answering the server's own requests meanwhile).
async fn call_once(
    lines: &mut Lines,
    id: u64,
    call: u64,
    mcp: bool,
    track: &Track,
) -> Result<(), String> {
    let method = if mcp { "tools/call" } else { "echo" };
    let params = json!({"call": call});
    lines
        .send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        .await?;
    let mut asked = 0;
    loop {
        let message = lines.next(false).await?;
        match (message.get("id"), message.get("method")) {
            (None, _) => continue, // a notification
            (Some(server_id), Some(_)) => {
                asked += 1;
                let answer =
                    json!({"jsonrpc": "2.0", "id": server_id, "result": {"role": "assistant"}});
                lines.send(&answer).await?;
            }
            (Some(answered), None) if *answered == json!(id) => {
                let echoed = message["result"].get("call") == Some(&json!(call));
                if mcp && asked != 1 {
                    track.corrupt(format!(
                        "call {call}: the server asked {asked} questions, not 1"
                    ));
                } else if !mcp && !echoed {
                    track.corrupt(format!("call {call}: answered with {message}"));
                }
                return Ok(());
            }
            (Some(other), None) => {
                track.corrupt(format!(
                    "call {call}: an answer to {other} while waiting for {id}"
                ));
            }
        }
    }
}

/// Every node of `from` pings every other node of `to` by name, one after another, retrying
/// each until it is answered.
async fn ping(world: Arc<dyn World>, track: Track, app: App) {
    let pairs: Vec<(String, String)> = app
        .from
        .iter()
        .flat_map(|a| {
            app.to
                .iter()
                .filter(move |b| *b != a)
                .map(move |b| (a.clone(), b.clone()))
        })
        .collect();
    track.with(|o| o.expected = pairs.len() as u64);
    let started = Instant::now();
    let mut pingers = Vec::new();
    for from in &app.from {
        let targets: Vec<String> = pairs
            .iter()
            .filter(|(a, _)| a == from)
            .map(|(_, b)| b.clone())
            .collect();
        let (world, track, from) = (world.clone(), track.actor(), from.clone());
        pingers.push(tokio::spawn(async move {
            for to in targets {
                let sent_at = Instant::now();
                loop {
                    let began = track.log.now();
                    let ping = Request::Ping { target: to.clone() };
                    match world.request(&from, ping).await {
                        Ok(_) => break,
                        Err(e) => {
                            track.lost(began, format!("{from} -> {to}: {e}"));
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
                track.with(|o| {
                    o.delivered += 1;
                    o.latencies.push(sent_at.elapsed());
                });
                track.working();
            }
        }));
    }
    for pinger in pingers {
        let _ = pinger.await;
    }
    track.finish(format!(
        "{} pairs answered in {}",
        pairs.len(),
        seconds(started.elapsed())
    ));
}
