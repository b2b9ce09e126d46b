//! Keeping a connection on the best path to a peer behind NATs. The dialling side owns the
//! decision: it starts on whichever path is up first (a punched direct path, or the relay),
//! moves the connection to the direct path when punching succeeds, back to the relay when the
//! direct path stops answering, and tries direct again later, backing off.
//!
//! Moving is one route change in the path table: quinn keeps its synthetic address, so the
//! connection and its streams never notice. The peer sees the packets arrive along the new
//! path and follows with QUIC connection migration; its replies reach us along either path.
//!
//! [`PathMonitor`] makes the decisions without I/O or a clock of its own (time comes in as
//! `now`); [`run`] is the thin async shell that sends the probes and applies the switches.
//! [`punch::Punch`] decides the probes of one hole punch the same way (`Node::probe` is its
//! shell), and [`race::Race`] the race of punching, relay and plain dials that makes a
//! connection ([`connect::Connector`] is its shell).

pub mod candidates;
pub mod connect;
pub mod driver;
pub mod monitor;
pub mod nat;
pub mod punch;
pub mod race;

use std::net::SocketAddr;

pub use candidates::{Asker, probe_candidates};
pub use driver::{punch, run};
pub use monitor::PathMonitor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct(SocketAddr),
    Relay,
}
