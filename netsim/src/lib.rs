//! tern-netsim: the network lab tern's NAT and partition tests run in.
//!
//! [`sim`] runs real tern nodes in one process on a simulated network under tokio's paused
//! clock, repeatable from a seed. [`lab`] builds real-kernel topologies from network
//! namespaces, veth links and (for the NAT matrix) nftables rules, and removes everything it
//! made by id, even when a test fails.

pub mod fixture;
pub mod internet;
pub mod lab;
pub mod local_api;
pub mod scenario;
pub mod sim;
