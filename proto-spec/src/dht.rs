//! What a node publishes in the Mainline DHT (BEP 44 mutable items): its endpoint record and
//! the rendezvous servers it can be introduced and relayed through, signed by the node.
//!
//! ```text
//! version 0x01 | record length u16 | endpoint record (crate::record)
//! | rendezvous count u8 (≤ 4) | each: server address (6) | server endpoint (§5.1 encoding)
//! | Ed25519 signature (64)
//! signature = Ed25519(record key, "tern 2026-12 dht announcement v1" || every byte before it)
//! ```
//!
//! Each announcement goes under two DHT keys:
//! - the node's own key, salt [`RECORD_SALT`]: only the node can write there; a dialer that
//!   knows the key (a pinned name) reads it;
//! - the *address index* key, salt [`ADDRESS_SALT`]: an Ed25519 key derived from the 48-bit
//!   address alone ([`address_index_seed`]), so a dialer that knows only the address can find
//!   the node. Anyone can derive that key and write there, which is why the announcement
//!   carries its own signature: a reader accepts only an announcement whose record derives
//!   the address it asked for. A writer with the index key can blank the slot (a higher BEP 44
//!   seq) but cannot forge it.

use crate::address::Address;
use crate::record::{MAX_RECORD_LEN, Record, RecordError};
use crate::wire::{DecodeError, Reader, put_socket_addr, read_signature, read_socket_addr};
use std::net::SocketAddr;

const SIGNING_CONTEXT: &[u8] = b"tern 2026-12 dht announcement v1";
const ADDRESS_INDEX_CONTEXT: &str = "tern 2026-12 dht address index v1";
const VERSION: u8 = 0x01;
pub const MAX_RENDEZVOUS: usize = 4;
/// BEP 44's limit on a mutable item's value.
pub const MAX_VALUE_LEN: usize = 1000;
pub const RECORD_SALT: &[u8] = b"tern-record";
pub const ADDRESS_SALT: &[u8] = b"tern-address";

/// A rendezvous server the announcing node is registered with: where a dialer asks for an
/// introduction and a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reachable {
    pub server: Address,
    pub at: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum AnnouncementError {
    #[error("malformed DHT announcement: {0}")]
    Malformed(#[from] DecodeError),
    #[error("DHT announcement's record refused: {0}")]
    Record(#[from] RecordError),
    #[error("DHT announcement's signature does not verify: forged or altered")]
    BadSignature,
    #[error("a DHT announcement lists at most {MAX_RENDEZVOUS} rendezvous servers")]
    TooManyRendezvous,
}

/// An announcement whose record and signature have been checked. Whether it is the node the
/// reader asked for, and whether it is still live, is the reader's to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub record: Record,
    pub rendezvous: Vec<Reachable>,
    bytes: Vec<u8>,
}

impl Announcement {
    /// Signs `record` (which must be `me`'s own) with the servers it can be reached through.
    pub fn sign(
        me: &crate::identity::SecretIdentity,
        record: Record,
        rendezvous: &[Reachable],
    ) -> Result<Self, AnnouncementError> {
        if rendezvous.len() > MAX_RENDEZVOUS {
            return Err(AnnouncementError::TooManyRendezvous);
        }
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&(record.as_bytes().len() as u16).to_be_bytes());
        bytes.extend_from_slice(record.as_bytes());
        bytes.push(rendezvous.len() as u8);
        for r in rendezvous {
            bytes.extend_from_slice(&r.server.to_bytes());
            put_socket_addr(&mut bytes, r.at);
        }
        bytes.extend_from_slice(&me.sign(SIGNING_CONTEXT, &bytes));
        Ok(Self {
            record,
            rendezvous: rendezvous.to_vec(),
            bytes,
        })
    }

    /// Decodes and verifies: the record (work and its signature), then the announcement's
    /// signature by the record's key.
    pub fn decode(bytes: &[u8]) -> Result<Self, AnnouncementError> {
        let mut r = Reader::new(bytes);
        r.version("announcement version", VERSION)?;
        let len = r.u16("record length")? as usize;
        if len > MAX_RECORD_LEN {
            return Err(DecodeError::Invalid {
                what: "record length",
                detail: format!("{len} (at most {MAX_RECORD_LEN})"),
            }
            .into());
        }
        let record = Record::decode(r.take(len, "record")?)?;
        let count = r.u8("rendezvous count")? as usize;
        if count > MAX_RENDEZVOUS {
            return Err(AnnouncementError::TooManyRendezvous);
        }
        let rendezvous = (0..count)
            .map(|_| {
                Ok(Reachable {
                    server: Address::from_bytes(r.array("server address")?),
                    at: read_socket_addr(&mut r)?,
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let (body, signature) = read_signature(bytes, r, "announcement")?;
        if !record.identity.signed(SIGNING_CONTEXT, body, &signature) {
            return Err(AnnouncementError::BadSignature);
        }
        Ok(Self {
            record,
            rendezvous,
            bytes: bytes.to_vec(),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The Ed25519 seed of `address`'s index key in the DHT: public to all, by design.
pub fn address_index_seed(address: Address) -> [u8; 32] {
    blake3::derive_key(ADDRESS_INDEX_CONTEXT, &address.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretIdentity;
    use crate::name::MAX_NAME_LEN;
    use proptest::prelude::*;

    fn me() -> &'static SecretIdentity {
        static ID: std::sync::OnceLock<SecretIdentity> = std::sync::OnceLock::new();
        ID.get_or_init(|| SecretIdentity::from_seed([19; 32]))
    }

    fn servers(n: usize) -> Vec<Reachable> {
        (0..n)
            .map(|i| Reachable {
                server: Address::from_bytes([i as u8; 6]),
                at: "[2001:db8::7]:7440".parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn round_trip_every_altered_byte_refused_and_the_largest_fits_the_dht() {
        let endpoints: Vec<SocketAddr> = vec!["192.0.2.1:7440".parse().unwrap()];
        let record = Record::sign(me(), &endpoints, None, 5, 1_900_000_000).unwrap();
        let signed = Announcement::sign(me(), record, &servers(2)).unwrap();
        assert_eq!(Announcement::decode(signed.as_bytes()).unwrap(), signed);
        for i in 0..signed.as_bytes().len() {
            let mut altered = signed.as_bytes().to_vec();
            altered[i] ^= 0x01;
            assert!(
                Announcement::decode(&altered).is_err(),
                "byte {i} altered yet accepted"
            );
        }
        let name = "x".repeat(MAX_NAME_LEN).parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let largest = Record::sign(me(), &[v6; 8], Some(&name), 5, 1).unwrap();
        let largest = Announcement::sign(me(), largest, &servers(MAX_RENDEZVOUS)).unwrap();
        assert!(largest.as_bytes().len() <= MAX_VALUE_LEN);
        assert!(Announcement::sign(me(), signed.record.clone(), &servers(5)).is_err());
    }

    #[test]
    fn another_nodes_record_under_someone_elses_signature_is_refused() {
        let other = SecretIdentity::from_seed([20; 32]);
        let theirs = Record::sign(&other, &[], None, 1, 1_900_000_000).unwrap();
        // Signed by `me` around `other`'s record: the signature must be the record key's.
        let forged = Announcement::sign(me(), theirs, &[]).unwrap();
        assert!(matches!(
            Announcement::decode(forged.as_bytes()),
            Err(AnnouncementError::BadSignature)
        ));
    }

    #[test]
    fn the_index_key_depends_on_the_address_only() {
        let a = Address::from_bytes([1, 2, 3, 4, 5, 6]);
        assert_eq!(address_index_seed(a), address_index_seed(a));
        assert_ne!(
            address_index_seed(a),
            address_index_seed(Address::from_bytes([1, 2, 3, 4, 5, 7]))
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Announcement::decode(&bytes);
        }
    }
}
