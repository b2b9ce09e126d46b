//! tern-netsim: the network lab tern's NAT and partition tests run in.
//!
//! [`lab`] builds real-kernel topologies from network namespaces, veth links and (for the NAT
//! matrix) nftables rules, and removes everything it made by id, even when a test fails. The
//! in-process simulator (simulated sockets, NAT models, paused clock) joins it later.

pub mod internet;
pub mod lab;
