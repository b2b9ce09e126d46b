//! Helpers shared by the end-to-end tests in `tests/tests/`: they run the real binaries, and
//! every process a test starts is killed (by its pid) when its guard drops, on failure too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};

pub mod floods;
use std::net::{TcpListener, TcpStream};

/// Path of a workspace binary built for this test run (cargo builds them before the tests).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// A child process killed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `ternd` with its own home in a temp dir.
pub struct Daemon {
    pub home: tempfile::TempDir,
    pub address: String,
    pub listen: String,
    _process: Guard,
}

impl Daemon {
    /// Starts `ternd --home H --listen 127.0.0.1:0 ARGS…` and waits until `ternctl status` answers.
    pub fn start(args: &[&str]) -> Self {
        Self::start_in(None, "127.0.0.1:0", args)
    }

    /// Starts ternd inside a lab namespace (or here), listening on `listen`. Its local API
    /// socket is a file, so `ternctl` reaches it from outside the namespace.
    pub fn start_in(
        namespace: Option<&tern_netsim::lab::Namespace>,
        listen: &str,
        args: &[&str],
    ) -> Self {
        Self::launch(
            tempfile::tempdir().expect("temp home"),
            namespace,
            listen,
            args,
        )
    }

    /// Stops this daemon and starts a new one on the same home and listen address.
    pub fn restart(self, args: &[&str]) -> Self {
        self.restart_after(args, || {})
    }

    /// Like [`Daemon::restart`], running `meanwhile` while the daemon is down.
    pub fn restart_after(self, args: &[&str], meanwhile: impl FnOnce()) -> Self {
        let listen = self.listen.clone();
        self.restart_on(&listen, args, meanwhile)
    }

    /// Stops this daemon and starts a new one on the same home listening on `listen` (a
    /// node that moved), running `meanwhile` while it is down.
    pub fn restart_on(self, listen: &str, args: &[&str], meanwhile: impl FnOnce()) -> Self {
        let Daemon { home, _process, .. } = self;
        drop(_process);
        meanwhile();
        Self::launch(home, None, listen, args)
    }

    fn launch(
        home: tempfile::TempDir,
        namespace: Option<&tern_netsim::lab::Namespace>,
        listen: &str,
        args: &[&str],
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.path().join("ternd.log"))
            .expect("log file");
        let mut command = match namespace {
            Some(ns) => ns.command(binary("ternd")),
            None => Command::new(binary("ternd")),
        };
        let child = command
            .arg("--home")
            .arg(home.path())
            .args(["--listen", listen])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TERN_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ternd");
        let process = Guard(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, doc) = ternctl_json(home.path(), &["status"]);
            if ok {
                return Self {
                    address: doc["data"]["address"].as_str().expect("address").into(),
                    listen: doc["data"]["listen"].as_str().expect("listen").into(),
                    home,
                    _process: process,
                };
            }
            assert!(
                Instant::now() < deadline,
                "ternd did not become ready: {doc}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ternd process's id (for reading its /proc entries).
    pub fn pid(&self) -> u32 {
        self._process.0.id()
    }

    pub fn ternctl(&self, args: &[&str]) -> Output {
        ternctl(self.home.path(), args)
    }

    pub fn ternctl_json(&self, args: &[&str]) -> (bool, Value) {
        ternctl_json(self.home.path(), args)
    }

    /// Starts a long-running ternctl (listen, expose, forward) and waits for its `ready:` line.
    pub fn serve(&self, args: &[&str]) -> Guard {
        let mut child = Command::new(binary("ternctl"))
            .arg("--home")
            .arg(self.home.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ternctl");
        let stderr = child.stderr.take().expect("stderr");
        let guard = Guard(child);
        let mut reader = std::io::BufReader::new(stderr);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).expect("ternctl stderr");
        assert!(
            line.starts_with("ready: "),
            "ternctl {args:?} said {line:?}"
        );
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        guard
    }

    /// Waits until the daemon reports it registered with its rendezvous.
    pub fn wait_registered(&self) {
        self.wait_status(Duration::from_secs(20), "registered", |s| {
            s["registered"] == true
        });
    }

    /// Waits (at most `within`) until `check` holds for the daemon's status (`data`), and
    /// gives that status; fails with the last status and the daemon's log.
    pub fn wait_status(
        &self,
        within: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_ternctl(&["status"], within, what, |doc| check(&doc["data"]))["data"].take()
    }

    /// Runs `ternctl --json ARGS` until `check` holds for its document (at most `within`),
    /// and gives that document; fails with the last one and the daemon's log.
    pub fn wait_ternctl(
        &self,
        args: &[&str],
        within: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let doc = self.ternctl_json(args).1;
            if check(&doc) {
                return doc;
            }
            assert!(
                Instant::now() < deadline,
                "ternctl {args:?} never {what} within {within:?}: {doc}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Two daemons on loopback: `a` is its own rendezvous, `b` registers with `a`.
    pub fn pair() -> (Self, Self) {
        let a = Self::start(&[]);
        let b = Self::start(&["--rendezvous", &a.listen]);
        (a, b)
    }

    /// `self` exposes `to` (a TCP address) as `port`; `from` forwards a fresh local TCP port
    /// to it. Returns the guards and the local address to connect to.
    pub fn expose_to(
        &self,
        from: &Daemon,
        port: u16,
        to: &str,
        open: bool,
    ) -> (Guard, Guard, std::net::SocketAddr) {
        let port = port.to_string();
        let mut args = vec!["expose", port.as_str(), "--to", to];
        if open {
            args.push("--open");
        }
        let exposed = self.serve(&args);
        let local = free_local_addr();
        let remote = format!("{}:{port}", self.address);
        let forward = from.serve(&["forward", "--listen", &local.to_string(), &remote]);
        (exposed, forward, local)
    }

    /// The daemon's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("ternd.log")).unwrap_or_default()
    }
}

pub fn ternctl(home: &Path, args: &[&str]) -> Output {
    Command::new(binary("ternctl"))
        .arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ternctl")
}

pub fn ternctl_json(home: &Path, args: &[&str]) -> (bool, Value) {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = ternctl(home, &full);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ternctl {args:?} printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), doc)
}

/// The Python of the test venv that holds the pinned MCP/A2A packages (`tests/requirements.txt`).
pub fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("TERN_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: create the test venv with `python3 -m venv .venv && .venv/bin/pip \
         install -r tests/requirements.txt` (.ci/run does this)",
        path.display()
    );
    path
}

/// A script under `tests/clients/`.
pub fn client_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// Whether any process still belongs to process group `pgid`.
pub fn process_group_alive(pgid: u32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
                // Fields after the parenthesised command: state, ppid, pgrp, …
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2).map(str::to_string))
                    .is_some_and(|pgrp| pgrp == pgid.to_string())
            })
        })
}

/// Runs a Python client from `tests/clients/` in the test venv; returns the JSON line it prints.
pub fn python_client<S: AsRef<std::ffi::OsStr>>(
    script: &str,
    args: &[S],
    context: impl Fn() -> String,
) -> Value {
    let out = Command::new(venv_bin("python"))
        .arg(client_script(script))
        .args(args)
        .output()
        .expect("run the Python client");
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        context()
    );
    serde_json::from_slice(&out.stdout).expect("the client prints one JSON line")
}

/// A loopback TCP address that was free a moment ago.
pub fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A TCP service on loopback that runs `handle` on a thread per connection; returns its port.
pub fn tcp_service(handle: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || handle(conn));
        }
    });
    port
}

/// Answers each JSON-RPC line's `id` with `{"echo": method}`, after a notification the client
/// must skip.
pub fn json_rpc_service() -> u16 {
    tcp_service(|conn| {
        let mut writer = conn.try_clone().expect("clone the connection");
        for line in BufReader::new(conn).lines().map_while(Result::ok) {
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                return;
            };
            let note = r#"{"jsonrpc":"2.0","method":"notifications/progress"}"#;
            let reply = serde_json::json!({"jsonrpc": "2.0", "id": msg["id"], "result": {"echo": msg["method"]}});
            if writeln!(writer, "{note}\n{reply}").is_err() {
                return;
            }
        }
    })
}

/// A daemon in this process whose UDP socket is bound inside a lab host's namespace, so all
/// its traffic crosses the lab's routers (the NAT and data-path benchmarks).
pub struct LabDaemon {
    pub daemon: std::sync::Arc<tern_daemon::daemon::Daemon>,
    _home: tempfile::TempDir,
}

impl LabDaemon {
    pub fn start(host: &tern_netsim::internet::Host, port: u16, rendezvous: &[String]) -> Self {
        use tern_daemon::env::os::{OsEnv, wrap_udp};
        let home = tempfile::tempdir().expect("home");
        let socket = host
            .namespace
            .bind_udp(std::net::SocketAddr::from((host.address, port)))
            .expect("enter namespace")
            .expect("bind");
        let config = tern_daemon::daemon::DaemonConfig::new(
            tern_daemon::home::Home::at(home.path()),
            socket.local_addr().expect("addr"),
            rendezvous.to_vec(),
        );
        let socket = wrap_udp(socket, 8 << 20).expect("socket");
        Self {
            daemon: tern_daemon::daemon::Daemon::start_on(config, OsEnv::shared(), socket)
                .expect("daemon"),
            _home: home,
        }
    }
}
