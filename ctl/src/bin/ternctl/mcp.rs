//! `ternctl mcp expose NAME [--open] -- CMD ARGS…` and `ternctl mcp connect TARGET NAME`:
//! MCP's stdio transport carried over the overlay, bytes verbatim.
//!
//! Expose runs one fresh server process per incoming stream, in its own process group; the
//! stream's bytes go to its stdin (EOF only after the last byte was delivered), its stdout
//! goes to the stream, its stderr to our stderr (never into the stream). When the stream or
//! the server ends, the other side is closed; a server that outlives its stream gets TERM,
//! then KILL, to its whole group. A server that dies (non-zero, or by a signal) resets the
//! stream, so `mcp connect` on the other side exits non-zero.

use std::process::Stdio;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::connect::pipe_stdio;
use crate::output::{Failure, Report};
use crate::{check_target, failure, shutdown_signal};
use tern_ctl::{Client, Stream};
use tern_proto::service::service_port;

/// How long a server may run on after its stream ended, before TERM; and after TERM, before KILL.
const GRACE: Duration = Duration::from_secs(3);
/// Reset code that tells the other side the server process failed.
const SERVER_FAILED: u32 = 0x10;

#[derive(Subcommand)]
pub enum McpCommand {
    /// Serve an MCP stdio server as NAME: one fresh process per incoming stream.
    Expose {
        name: String,
        /// Accept streams from any peer, not only trusted ones.
        #[arg(long)]
        open: bool,
        /// The server command and its arguments (after `--`).
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Be the stdio command an MCP client spawns: carries stdin/stdout to NAME on TARGET.
    Connect { target: String, name: String },
}

pub async fn run(client: &Client, command: McpCommand) -> Result<Report, Failure> {
    match command {
        McpCommand::Expose {
            name,
            open,
            command,
        } => expose(client, &name, open, command).await,
        McpCommand::Connect { target, name } => connect(client, &target, &name).await,
    }
}

fn port_of(name: &str) -> Result<u16, Failure> {
    service_port(name).map_err(|e| Failure::new("bad_name", e.to_string()))
}

async fn expose(
    client: &Client,
    name: &str,
    open: bool,
    command: Vec<String>,
) -> Result<Report, Failure> {
    let port = port_of(name)?;
    let listener = client.listen(port, open).await.map_err(failure)?;
    eprintln!(
        "ready: serving MCP `{name}` (port {port}) with {}",
        command.join(" ")
    );
    let serve = async {
        loop {
            let incoming = listener.accept().await.map_err(failure)?;
            let (client, command, name) = (client.clone(), command.clone(), name.to_string());
            tokio::spawn(async move { serve_one(&client, &name, &command, incoming.stream).await });
        }
    };
    tokio::select! {
        result = serve => result,
        _ = shutdown_signal() => Ok(Report { data: json!({ "name": name, "port": port }), text: String::new() }),
    }
}

async fn serve_one(client: &Client, name: &str, command: &[String], stream: Stream) {
    let (id, peer) = (stream.id, stream.peer);
    let spawned = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("[{name}] cannot start {}: {e}", command[0]);
            let _ = client.reset(id, SERVER_FAILED).await;
            return;
        }
    };
    let group = child.id().map(|pid| pid as i32);
    eprintln!(
        "[{name}] stream from {peer}: started {} (pid {})",
        command[0],
        group.unwrap_or(0)
    );
    let (mut from_peer, mut to_peer) = stream.io.into_split();
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let log_name = name.to_string();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{log_name} {peer}] {line}");
        }
    });
    // Stream → stdin; dropping stdin afterwards is the EOF, after every byte was written.
    let mut inbound = tokio::spawn(async move {
        let copied = tokio::io::copy(&mut from_peer, &mut stdin).await;
        drop(stdin);
        copied
    });
    // stdout → stream runs here, not in a task: the stream must not close (a clean end)
    // before we know how the server ended.
    let (status, drained) = {
        let output = tokio::io::copy(&mut stdout, &mut to_peer);
        tokio::pin!(output);
        let mut drained = None;
        let mut stopping = Stopping::No;
        let status = loop {
            tokio::select! {
                copied = &mut output, if drained.is_none() => drained = Some(copied),
                status = child.wait() => break status,
                // The stream ended (or broke): the server gets GRACE to exit by itself.
                _ = &mut inbound, if stopping == Stopping::No => {
                    stopping = Stopping::Term(tokio::time::Instant::now() + GRACE);
                }
                _ = tokio::time::sleep_until(stopping.deadline()), if stopping != Stopping::No => {
                    stopping = stopping.escalate(group);
                }
            }
        };
        // Deliver the output the server wrote before it ended.
        if drained.is_none() {
            drained = tokio::time::timeout(GRACE, &mut output).await.ok();
        }
        (status, drained)
    };
    inbound.abort();
    let clean = status.as_ref().is_ok_and(|s| s.success()) && matches!(drained, Some(Ok(_)));
    if clean {
        let _ = to_peer.shutdown().await;
    } else {
        let _ = client.reset(id, SERVER_FAILED).await;
    }
    stop_group(group).await;
    match status {
        Ok(s) => eprintln!("[{name}] stream from {peer}: server ended ({s})"),
        Err(e) => eprintln!("[{name}] stream from {peer}: lost the server: {e}"),
    }
}

/// Stopping a server whose stream has ended: TERM at the first deadline, KILL at the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    No,
    Term(tokio::time::Instant),
    Kill(tokio::time::Instant),
    Killed,
}

impl Stopping {
    fn deadline(self) -> tokio::time::Instant {
        match self {
            Self::Term(at) | Self::Kill(at) => at,
            // Never reached: the select branch is disabled in these states.
            Self::No | Self::Killed => tokio::time::Instant::now() + Duration::from_secs(86_400),
        }
    }

    fn escalate(self, group: Option<i32>) -> Self {
        match self {
            Self::Term(_) => {
                signal_group(group, libc::SIGTERM);
                Self::Kill(tokio::time::Instant::now() + GRACE)
            }
            Self::Kill(_) => {
                signal_group(group, libc::SIGKILL);
                Self::Killed
            }
            other => other,
        }
    }
}

/// Whatever the server left running in its group gets TERM, then KILL.
async fn stop_group(group: Option<i32>) {
    if signal_group(group, libc::SIGTERM) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal_group(group, libc::SIGKILL);
    }
}

/// Signals the whole process group; false if it no longer exists.
fn signal_group(group: Option<i32>, signal: i32) -> bool {
    match group {
        // SAFETY: kill with a negative pid signals that process group; no memory involved.
        Some(pgid) if pgid > 0 => unsafe { libc::kill(-pgid, signal) == 0 },
        _ => false,
    }
}

async fn connect(client: &Client, target: &str, name: &str) -> Result<Report, Failure> {
    check_target(target)?;
    let port = port_of(name)?;
    let stream = client.dial(target, port).await.map_err(failure)?;
    let piped = pipe_stdio(client, stream).await?;
    let outcome = piped.outcome;
    if outcome["end"] == "clean" {
        Ok(Report {
            data: json!({ "bytes_sent": piped.sent, "bytes_received": piped.received }),
            text: String::new(),
        })
    } else {
        Err(Failure::new(
            "server_failed",
            format!(
                "the MCP server `{name}` on {target} ended abnormally ({})",
                outcome["detail"].as_str().unwrap_or("reset")
            ),
        )
        .hint("its operator sees the server's stderr in `ternctl mcp expose`'s output"))
    }
}
