//! The async shells of the traversal machines: [`run`] drives a [`PathMonitor`] for a live
//! connection, [`punch`] one round of hole punching.

use std::net::SocketAddr;

use tern_proto::Address;
use tern_proto::record::Record;
use tokio::time::Instant;

use super::Path;
use super::candidates::{Asker, probe_candidates};
use super::monitor::{Action, CHECK_INTERVAL, PathMonitor};
use crate::node::Node;
use crate::rendezvous::{self, PUNCH_WINDOW};
use crate::transport::paths::Route;

/// The dialling side's shell of a [`PathMonitor`]: checks the direct path, punches, and
/// moves the connection to `peer` between the direct path and the `relay`, until the
/// connection goes. `own_record` makes this node's record for introductions (None: the
/// node is going).
pub async fn run(
    node: Node,
    peer: Address,
    relay: SocketAddr,
    server: Address,
    mut record: Record,
    path: Path,
    own_record: impl Fn() -> Option<Record>,
) {
    let mut monitor = PathMonitor::new(Instant::now(), path);
    loop {
        let action = monitor.poll(Instant::now());
        if let Action::WaitUntil(at) = action {
            tokio::time::sleep_until(at).await;
            continue;
        }
        if !node.is_connected(peer) {
            return;
        }
        let switched = match action {
            Action::Check(endpoint) => {
                let answered = node.check_path(peer, endpoint, CHECK_INTERVAL).await;
                monitor.on_check(answered, Instant::now())
            }
            Action::Punch => {
                // The peer may have moved (a new network, a NAT that rebound) since it was
                // last looked up: punch towards where its newest record says it is.
                if let Ok(Some(newer)) = rendezvous::lookup(&node, server, peer).await
                    && newer.seq > record.seq
                {
                    record = newer;
                }
                let Some(introduction) = own_record() else {
                    return;
                };
                let answered =
                    punch(&node, peer, server, relay, &record.endpoints, introduction).await;
                monitor.on_punch(answered, Instant::now())
            }
            Action::WaitUntil(_) => None,
        };
        if let Some(path) = switched {
            let route = match path {
                Path::Direct(endpoint) => Route::Direct(endpoint),
                Path::Relay => Route::Relay { relay, peer },
            };
            match node.set_route(peer, route) {
                true => tracing::info!(%peer, %route, "path switched"),
                false => return,
            }
        }
    }
}

/// One round of hole punching to `target` through the rendezvous `server` (reached at
/// `server_at`), introducing this node with `record`: the endpoint that answered first, if
/// any.
pub async fn punch(
    node: &Node,
    target: Address,
    server: Address,
    server_at: SocketAddr,
    endpoints: &[SocketAddr],
    record: Record,
) -> Option<SocketAddr> {
    let candidates = probe_candidates(endpoints, server_at, Asker::Us);
    // The introduction is answered once the target has started probing us, so our first
    // probes already meet an open NAT on its side.
    if let Err(e) = rendezvous::request_introduction(node, server, target, record).await {
        tracing::debug!(peer = %target, error = %e, "no introduction");
    }
    node.probe(target, &candidates, PUNCH_WINDOW).await
}
