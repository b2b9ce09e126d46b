//! Kernel network lab: network namespaces joined by veth pairs.
//!
//! Every namespace a [`Lab`] creates is named `tern-<pid>-<n>-<label>`, and is deleted when
//! the `Lab` is dropped (and so on test failure). Namespaces left by a process that died
//! (a killed test run) are found by the pid in their name: [`remove_stale`] deletes them.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "tern-";

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "could not run `{command}`: {source}. Is iproute2 installed (apt-get install iproute2)?"
    )]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "`{command}` failed: {stderr}. The lab needs root (CAP_NET_ADMIN) and network namespaces"
    )]
    Failed { command: String, stderr: String },
    #[error("could not enter network namespace {namespace}: {source}")]
    Enter {
        namespace: String,
        source: std::io::Error,
    },
}

fn run(program: &str, args: &[&str]) -> Result<Output, LabError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(LabError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// A set of namespaces and links that lives as long as this value.
#[derive(Debug)]
pub struct Lab {
    namespaces: Vec<String>,
}

impl Lab {
    pub fn new() -> Self {
        Self {
            namespaces: Vec::new(),
        }
    }

    /// A new namespace with its loopback up. `label` is for people reading `ip netns list`.
    pub fn namespace(&mut self, label: &str) -> Result<Namespace, LabError> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{id}-{label}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        let ns = Namespace { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair from `host` (end named `name`, given `cidr`) to a bridge in `switch`.
    pub fn plug(
        &mut self,
        switch: &Namespace,
        bridge: &str,
        host: &Namespace,
        name: &str,
        cidr: &str,
    ) -> Result<(), LabError> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (end_host, end_switch) = (
            format!("t{:x}x{id}h", std::process::id()),
            format!("t{:x}x{id}s", std::process::id()),
        );
        run(
            "ip",
            &[
                "link",
                "add",
                &end_host,
                "netns",
                &host.name,
                "type",
                "veth",
                "peer",
                "name",
                &end_switch,
                "netns",
                &switch.name,
            ],
        )?;
        switch.ip(&["link", "set", &end_switch, "master", bridge])?;
        switch.ip(&["link", "set", &end_switch, "up"])?;
        host.ip(&["link", "set", &end_host, "name", name])?;
        host.ip(&["addr", "add", cidr, "dev", name])?;
        host.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// A veth pair between two namespaces, each end given an address (`ip/prefix`) and set up.
    pub fn link(
        &mut self,
        a: &Namespace,
        a_cidr: &str,
        b: &Namespace,
        b_cidr: &str,
    ) -> Result<(String, String), LabError> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Interface names are capped at 15 bytes; the pid keeps concurrent runs apart.
        let (end_a, end_b) = (
            format!("t{:x}x{id}a", std::process::id()),
            format!("t{:x}x{id}b", std::process::id()),
        );
        run(
            "ip",
            &[
                "link", "add", &end_a, "netns", &a.name, "type", "veth", "peer", "name", &end_b,
                "netns", &b.name,
            ],
        )?;
        for (ns, dev, cidr) in [(a, &end_a, a_cidr), (b, &end_b, b_cidr)] {
            ns.ip(&["addr", "add", cidr, "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok((end_a, end_b))
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace takes its veth ends, routes and nftables tables with it.
        for name in self.namespaces.drain(..).rev() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// One network namespace of a [`Lab`].
#[derive(Debug, Clone)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip ARGS…` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A command that runs inside this namespace (`ip netns exec`); the caller spawns it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens belong to the
    /// namespace for their whole life, whichever thread uses them later.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        let enter_err = |source| LabError::Enter {
            namespace: self.name.clone(),
            source,
        };
        let handle = std::fs::File::open(format!("/run/netns/{}", self.name)).map_err(enter_err)?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
                    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        return Err(enter_err(std::io::Error::last_os_error()));
                    }
                    Ok(f())
                })
                .join()
                .expect("a lab closure panicked")
        })
    }

    /// Runs a shell script inside this namespace (for sysctl writes and the like).
    pub fn sh(&self, script: &str) -> Result<Output, LabError> {
        run("ip", &["netns", "exec", &self.name, "sh", "-c", script])
    }

    /// Loads an nftables rule set into this namespace.
    pub fn nft(&self, rules: &str) -> Result<(), LabError> {
        use std::io::Write;
        let command = format!("ip netns exec {} nft -f -", self.name);
        let spawn_err = |source| LabError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(rules.as_bytes())
            .map_err(spawn_err)?;
        let output = child.wait_with_output().map_err(spawn_err)?;
        if !output.status.success() {
            return Err(LabError::Failed {
                command: format!("{command} (is nftables installed?)"),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// A UDP socket bound inside this namespace.
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<std::io::Result<UdpSocket>, LabError> {
        self.enter(|| UdpSocket::bind(addr))
    }
}

/// Deletes lab namespaces whose creating process no longer runs; returns their names.
pub fn remove_stale() -> Result<Vec<String>, LabError> {
    let listing = run("ip", &["netns", "list"])?;
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            run("ip", &["netns", "del", name])?;
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_datagram_crosses_a_veth_link_and_the_namespaces_go_away() {
        let names;
        {
            let mut lab = Lab::new();
            let a = lab.namespace("a").unwrap();
            let b = lab.namespace("b").unwrap();
            lab.link(&a, "192.0.2.1/24", &b, "192.0.2.2/24").unwrap();
            let rx = b
                .bind_udp("192.0.2.2:4000".parse().unwrap())
                .unwrap()
                .unwrap();
            let tx = a.bind_udp("192.0.2.1:0".parse().unwrap()).unwrap().unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            tx.send_to(b"over veth", "192.0.2.2:4000").unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"over veth");
            assert_eq!(from, tx.local_addr().unwrap());
            names = vec![a.name().to_string(), b.name().to_string()];
        }
        let listing = String::from_utf8(run("ip", &["netns", "list"]).unwrap().stdout).unwrap();
        for name in names {
            assert!(!listing.contains(&name), "{name} left behind");
        }
    }
}
