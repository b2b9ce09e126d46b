//! `ternctl`: operate a local tern node. One module per command; shared plumbing here.

mod bench;
mod connect;
mod expose;
mod forward;
mod id;
mod listen;
mod mcp;
mod names;
mod output;
mod ping;
mod status;
mod stdio;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use output::{Failure, Report, print_failure, print_success};
use tern_ctl::{Client, ClientError};
use tern_local::home::Home;

#[derive(Parser)]
#[command(
    name = "ternctl",
    version,
    about = "Operate a local tern node",
    long_about = "Operate a local tern node through its daemon's local API (HOME/ternd.sock). \
        TARGET is a node address (xxxx:xxxx:xxxx) or a name (an alias of yours, or a name a \
        node claimed with `ternd --hostname`). Exit code 0 on success, 1 on failure, 2 on \
        a usage error."
)]
struct Cli {
    /// The node's state directory. Default: $TERN_HOME, else ~/.local/share/tern.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print one JSON document: {"ok": true, "data": ...} or {"ok": false, "error": {...}}.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// This node's address and public key (read from the home; no daemon needed).
    Id,
    /// Whether the daemon runs, its address, endpoints and rendezvous registration.
    Status,
    /// Connected peers: path, remote endpoint, RTT, bytes, since when.
    Peers,
    /// Round-trip time to a peer over a sealed control packet.
    Ping { target: String },
    /// Throughput (through the peer's echo service) and round-trip time to a peer.
    Bench(bench::BenchArgs),
    /// The trust list: who may open streams to this node's private ports.
    Trust {
        #[command(subcommand)]
        command: trust::TrustCommand,
    },
    /// Pipe stdin/stdout over one stream to PORT on TARGET (like `nc -N`), or with --message
    /// send one JSON-RPC message and print the reply whose id matches.
    Connect(connect::ConnectArgs),
    /// Send one JSON-RPC message and print the matching reply.
    Send(connect::SendArgs),
    /// Serve PORT: print what each incoming stream sends, one stream at a time.
    Listen(listen::ListenArgs),
    /// Serve PORT by connecting each incoming stream to a local TCP service.
    Expose(expose::ExposeArgs),
    /// Map a local TCP port to PORT on TARGET: one overlay stream per TCP connection.
    Forward(forward::ForwardArgs),
    /// A node's verified record by name or address: address, public key, endpoints.
    Find { target: String },
    /// This node's name: claim one, give it up, or forget a name's pinned key.
    Name {
        #[command(subcommand)]
        command: names::NameCommand,
    },
    /// Your own names for nodes, checked before any rendezvous.
    Alias {
        #[command(subcommand)]
        command: names::AliasCommand,
    },
    /// Carry MCP's stdio transport: expose a server command, or connect to one.
    Mcp {
        #[command(subcommand)]
        command: mcp::McpCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let outcome = run(cli);
    match outcome {
        Ok(report) => {
            print_success(json, &report);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            print_failure(json, &failure);
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<Report, Failure> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "ternctl",
            &mut std::io::stdout(),
        );
        return Ok(Report {
            data: serde_json::Value::Null,
            text: String::new(),
        });
    }
    if let Command::Id = cli.command {
        let home = Home::resolve(cli.home).map_err(|e| Failure::new("no_home", e.to_string()))?;
        return id::run(&home);
    }
    let client = Client::for_home(cli.home).map_err(failure)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::new("runtime", format!("cannot start the async runtime: {e}")))?;
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Id | Command::Completions { .. } => unreachable!("handled above"),
            Command::Status => status::status(&client).await,
            Command::Peers => status::peers(&client).await,
            Command::Ping { target } => ping::run(&client, &target).await,
            Command::Bench(args) => bench::run(&client, args).await,
            Command::Trust { command } => trust::run(&client, command).await,
            Command::Connect(args) => connect::connect(&client, args).await,
            Command::Send(args) => connect::send(&client, args).await,
            Command::Listen(args) => listen::run(&client, args).await,
            Command::Expose(args) => expose::run(&client, args).await,
            Command::Forward(args) => forward::run(&client, args).await,
            Command::Mcp { command } => mcp::run(&client, command).await,
            Command::Find { target } => names::find(&client, &target).await,
            Command::Name { command } => names::name(&client, command).await,
            Command::Alias { command } => names::alias(&client, command).await,
        }
    });
    // A stdin read may still block in tokio's thread pool (the peer closed first); do not
    // wait for it.
    runtime.shutdown_background();
    outcome
}

/// A client error as the user sees it.
pub fn failure(e: ClientError) -> Failure {
    let failure = Failure::new(e.code(), e.to_string());
    match e.hint() {
        Some(hint) => failure.hint(hint),
        None => failure,
    }
}

/// Checks a TARGET now, so a typo is a usage-level error before anything is sent.
pub fn check_target(target: &str) -> Result<(), Failure> {
    target
        .parse::<tern_proto::Target>()
        .map(|_| ())
        .map_err(|e| {
            Failure::new("bad_address", e.to_string())
                .hint("use the address `ternctl id` prints on the other node, or its name")
        })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Room for each read when joining a local connection to an overlay stream (large, so bulk
/// transfers take few system calls; a small message still goes through at once).
const BRIDGE_BUFFER: usize = 256 * 1024;

/// Hands `tcp` to the daemon, which copies between it and `stream` itself (forward, expose),
/// and waits for the stream to end. FIN passes as FIN both ways; a TCP reset resets the
/// stream, and a stream reset or broken on the other side resets the TCP connection, so
/// closing stays distinguishable from failing (which is how HTTP clients cancel). An error
/// says how it broke.
pub async fn attach(stream: tern_ctl::Pending, tcp: tokio::net::TcpStream) -> Result<(), String> {
    let tcp = tcp
        .into_std()
        .map_err(|e| format!("could not hand the connection over: {e}"))?;
    let outcome = stream.attach(tcp).await.map_err(|e| failure(e).message)?;
    match outcome["end"].as_str() {
        Some("clean") => Ok(()),
        Some("reset") => Err(format!(
            "the stream was reset with code {}",
            outcome["code"]
        )),
        _ => Err(format!(
            "the stream broke: {}",
            outcome["detail"].as_str().unwrap_or("no detail given")
        )),
    }
}

/// Copies both ways until both directions ended; each side's EOF becomes the other's FIN.
pub async fn splice(
    a: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    b: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
) -> std::io::Result<()> {
    tokio::io::copy_bidirectional_with_sizes(a, b, BRIDGE_BUFFER, BRIDGE_BUFFER)
        .await
        .map(|_| ())
}
