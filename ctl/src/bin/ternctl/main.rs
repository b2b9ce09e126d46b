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

/// Joins an overlay stream and a local TCP connection (forward, expose). FIN passes as FIN
/// both ways; a TCP reset resets the stream, and a stream reset or broken on the other side
/// resets the TCP connection: closing stays distinguishable from failing, which is how HTTP
/// clients cancel.
pub async fn bridge(
    client: &Client,
    stream: tern_ctl::Stream,
    tcp: tokio::net::TcpStream,
) -> Result<(), String> {
    use tokio::io::{AsyncWriteExt, BufReader};
    const LOCAL_FAILURE: u32 = 1;
    let id = stream.id;
    let (mut from_stream, mut to_stream) = stream.io.into_split();
    let (mut from_tcp, mut to_tcp) = tcp.into_split();
    // A broken stream has ended by the time its local connection reports end of file; a
    // clean half-close has not (the other direction still runs).
    let broke = |outcome: Option<serde_json::Value>| outcome.is_some_and(|o| o["end"] != "clean");
    let upload = async {
        match tokio::io::copy_buf(
            &mut BufReader::with_capacity(BRIDGE_BUFFER, &mut from_tcp),
            &mut to_stream,
        )
        .await
        {
            Ok(_) => {
                to_stream.shutdown().await.ok();
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    };
    let download = async {
        tokio::io::copy_buf(
            &mut BufReader::with_capacity(BRIDGE_BUFFER, &mut from_stream),
            &mut to_tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
        if broke(client.outcome_now(id).await.map_err(|e| e.to_string())?) {
            return Err("the stream was reset or broke on the other side".to_string());
        }
        to_tcp.shutdown().await.ok();
        Ok(())
    };
    let failed = match tokio::try_join!(upload, download) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    if !broke(client.outcome_now(id).await.ok().flatten()) {
        // The local side failed: tell the other side.
        let _ = client.reset(id, LOCAL_FAILURE).await;
    }
    // Dropping with a zero linger sends RST instead of FIN.
    if let Ok(tcp) = from_tcp.reunite(to_tcp) {
        let _ = tcp.set_zero_linger();
    }
    Err(failed)
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
