//! `ternd`: the tern node daemon. Without a subcommand it runs the node in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tern_daemon::config::ConfigFile;
use tern_daemon::daemon::{DEFAULT_PORT, Daemon, DaemonConfig};
use tern_daemon::dht::DhtSettings;
use tern_daemon::env::os::OsEnv;
use tern_daemon::home::Home;
use tern_proto::Name;

#[derive(Parser)]
#[command(
    name = "ternd",
    version,
    about = "The tern node daemon: a permanent address for an agent, reachable from anywhere",
    long_about = "Runs a tern node in the foreground until SIGINT/SIGTERM; logs go to stderr. \
        The node is ready once `ternctl status` answers. Without --rendezvous the node is its \
        own rendezvous, so a second node on the same host or LAN points --rendezvous at the first."
)]
struct Cli {
    /// The node's state directory (identity, trust list, local API socket).
    /// Default: $TERN_HOME, else ~/.local/share/tern.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    /// UDP address to listen on [default: 0.0.0.0:7440; port 0 picks any].
    #[arg(long, value_name = "UDP_ADDR", env = "TERN_LISTEN")]
    listen: Option<SocketAddr>,
    /// A rendezvous server, HOST:PORT, or ADDRESS@HOST:PORT to require that key (otherwise
    /// the first key that answers is pinned); repeat for several. Env: comma-separated list.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "TERN_RENDEZVOUS",
        value_delimiter = ','
    )]
    rendezvous: Vec<String>,
    /// Claim this name at the rendezvous servers, so peers can use it instead of the address
    /// (lowercase a-z, 0-9 and '-', 1-63 characters). Kept in the home for later runs.
    #[arg(long, value_name = "NAME", env = "TERN_HOSTNAME")]
    hostname: Option<Name>,
    /// Join the Mainline DHT: publish this node's signed record there and find peers through
    /// it when the rendezvous servers do not know them. Off by default; the DHT is public.
    #[arg(long, env = "TERN_DHT")]
    dht: bool,
    /// A DHT bootstrap node, HOST:PORT (implies --dht); repeat for several. Without it the
    /// public Mainline bootstrap nodes are used. Env: comma-separated list.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "TERN_DHT_BOOTSTRAP",
        value_delimiter = ','
    )]
    dht_bootstrap: Vec<String>,
    /// TOML configuration file (keys: listen, rendezvous, hostname, log_format,
    /// name_grace_days, dht, dht_bootstrap, lookup, and a [limits] table). Flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr: text or json. Levels via RUST_LOG (default info).
    #[arg(long, value_name = "FORMAT", env = "TERN_LOG_FORMAT")]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print this node's address and public key (creates the identity on first use).
    Id {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run as a rendezvous for other nodes: a node that registers with no upstream rendezvous.
    Rendezvous {
        /// UDP address to serve on.
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every local API connection and every attached socket is a descriptor: take the hard limit
/// rather than the soft one (often 1,024), as servers do.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for reads and writes of its size.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let home = Home::resolve(cli.home)?;
    match cli.command {
        Some(Command::Id { json }) => print_id(&home, json),
        Some(Command::Rendezvous { listen }) => {
            let args = RunArgs {
                listen: Some(listen),
                ..cli.run
            };
            serve(home, args, true)
        }
        None => serve(home, cli.run, false),
    }
}

fn print_id(home: &Home, json: bool) -> Result<()> {
    let identity = home
        .load_or_create_identity()
        .with_context(|| format!("loading the identity of {}", home.dir().display()))?;
    let public = identity.public();
    if json {
        let doc = serde_json::json!({
            "address": public.address(),
            "public_key": hex::encode(public.key_bytes()),
            "work_nonce": public.nonce(),
        });
        println!("{doc}");
    } else {
        println!("address     {}", public.address());
        println!("public_key  {}", hex::encode(public.key_bytes()));
    }
    Ok(())
}

fn serve(home: Home, args: RunArgs, rendezvous_role: bool) -> Result<()> {
    raise_open_file_limit();
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the config file {}", path.display()))?;
            ConfigFile::parse(&text)
                .with_context(|| format!("the config file {} is invalid", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let log_format = args
        .log_format
        .or(file.log_format.clone())
        .unwrap_or_else(|| "text".into());
    init_logging(&log_format)?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    let rendezvous = match (rendezvous_role, args.rendezvous.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => file.rendezvous.clone(),
        (false, false) => args.rendezvous,
    };
    home.ensure_dir()?;
    let mut config = DaemonConfig::new(home.clone(), listen, rendezvous);
    config.hostname = args.hostname.or(file.hostname.clone());
    if args.dht || !args.dht_bootstrap.is_empty() {
        config.dht = Some(DhtSettings {
            bootstrap: match args.dht_bootstrap.is_empty() {
                true => file.dht_bootstrap.clone(),
                false => args.dht_bootstrap,
            },
        });
    }
    file.apply(&mut config);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let socket_path = home.socket_path();
        let api = tern_daemon::env::os::bind_local_api(&socket_path)
            .await
            .with_context(|| format!("opening the local API socket {}", socket_path.display()))?;
        let daemon = Daemon::start(config, OsEnv::shared()).context("starting the node")?;
        let node = daemon.node().clone();
        tracing::info!(
            address = %node.address(),
            listen = %node.local_addr(),
            socket = %socket_path.display(),
            "ternd ready"
        );
        daemon.serve_api(api);
        wait_for_shutdown().await?;
        tracing::info!("shutting down");
        daemon.stop().await;
        let _ = std::fs::remove_file(&socket_path);
        Ok(())
    })
}

async fn wait_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}

fn init_logging(format: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("unknown log format {other:?}: use text or json"),
    }
    Ok(())
}
