//! Endpoint records: where a node can be reached, signed by the node itself, so that whoever
//! stores or relays a record (a rendezvous) cannot substitute a key or an endpoint.
//!
//! ```text
//! version 0x01 | public key (32) | work nonce u64 | seq u64 | expires u64 (Unix seconds)
//! | endpoint count u8 (≤ 8) | endpoints (§5.1 encoding each)
//! | name length u8 (0: no name; ≤ 63) | name (crate::name rule) | Ed25519 signature (64)
//! signature = Ed25519(key, "tern 2026-11 endpoint record v1" || every byte before it)
//! ```

use crate::address::Address;
use crate::identity::{IdentityError, PublicIdentity, SecretIdentity};
use crate::name::{Name, put_name, read_name};
use crate::wire::{DecodeError, Reader, put_socket_addr, read_signature, read_socket_addr};
use std::net::SocketAddr;

const SIGNING_CONTEXT: &[u8] = b"tern 2026-11 endpoint record v1";
const VERSION: u8 = 0x01;
pub const MAX_ENDPOINTS: usize = 8;
/// Larger than any valid record: 1 + 32 + 24 + 1 + 8 × 19 + 1 + 63 + 64.
pub const MAX_RECORD_LEN: usize = 338;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("malformed record: {0}")]
    Malformed(#[from] DecodeError),
    #[error("record identity refused: {0}")]
    Identity(#[from] IdentityError),
    #[error("record signature does not verify: forged or altered")]
    BadSignature,
    #[error("a record holds at most {MAX_ENDPOINTS} endpoints")]
    TooManyEndpoints,
}

/// A record whose identity and signature have been checked. Expiry is the holder's to check,
/// against its own clock ([`Record::is_live`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub identity: PublicIdentity,
    pub endpoints: Vec<SocketAddr>,
    /// The name the node claims, if any.
    pub name: Option<Name>,
    pub seq: u64,
    pub expires: u64,
    bytes: Vec<u8>,
}

impl Record {
    pub fn sign(
        me: &SecretIdentity,
        endpoints: &[SocketAddr],
        name: Option<&Name>,
        seq: u64,
        expires: u64,
    ) -> Result<Self, RecordError> {
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(RecordError::TooManyEndpoints);
        }
        let public = me.public();
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&public.key_bytes());
        bytes.extend_from_slice(&public.nonce().to_be_bytes());
        bytes.extend_from_slice(&seq.to_be_bytes());
        bytes.extend_from_slice(&expires.to_be_bytes());
        bytes.push(endpoints.len() as u8);
        for e in endpoints {
            put_socket_addr(&mut bytes, *e);
        }
        put_name(&mut bytes, name);
        bytes.extend_from_slice(&me.sign(SIGNING_CONTEXT, &bytes));
        Ok(Self {
            identity: *public,
            endpoints: endpoints.to_vec(),
            name: name.cloned(),
            seq,
            expires,
            bytes,
        })
    }

    /// Decodes and verifies: work condition, then signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(bytes);
        r.version("record version", VERSION)?;
        let key: [u8; 32] = r.array("public key")?;
        let nonce = r.u64("work nonce")?;
        let seq = r.u64("seq")?;
        let expires = r.u64("expiry")?;
        let count = r.u8("endpoint count")? as usize;
        if count > MAX_ENDPOINTS {
            return Err(RecordError::TooManyEndpoints);
        }
        let endpoints = (0..count)
            .map(|_| read_socket_addr(&mut r))
            .collect::<Result<Vec<_>, _>>()?;
        let name = read_name(&mut r)?;
        let (body, signature) = read_signature(bytes, r, "record")?;
        let identity = PublicIdentity::verify(key, nonce)?;
        if !identity.signed(SIGNING_CONTEXT, body, &signature) {
            return Err(RecordError::BadSignature);
        }
        Ok(Self {
            identity,
            endpoints,
            name,
            seq,
            expires,
            bytes: bytes.to_vec(),
        })
    }

    pub fn address(&self) -> Address {
        self.identity.address()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_live(&self, now_unix: u64) -> bool {
        now_unix < self.expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::MAX_NAME_LEN;
    use proptest::prelude::*;

    fn me() -> &'static SecretIdentity {
        static ID: std::sync::OnceLock<SecretIdentity> = std::sync::OnceLock::new();
        ID.get_or_init(|| SecretIdentity::from_seed([9; 32]))
    }

    #[test]
    fn round_trip_and_every_altered_byte_is_refused() {
        let endpoints: Vec<SocketAddr> = vec![
            "192.0.2.1:7440".parse().unwrap(),
            "[2001:db8::1]:9".parse().unwrap(),
        ];
        let name: Name = "alpha".parse().unwrap();
        let record = Record::sign(me(), &endpoints, Some(&name), 3, 1_900_000_000).unwrap();
        let back = Record::decode(record.as_bytes()).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.address(), me().address());
        assert!(back.is_live(1_899_999_999) && !back.is_live(1_900_000_000));
        for i in 0..record.as_bytes().len() {
            let mut altered = record.as_bytes().to_vec();
            altered[i] ^= 0x01;
            assert!(
                Record::decode(&altered).is_err(),
                "byte {i} altered yet accepted"
            );
        }
        assert!(record.as_bytes().len() <= MAX_RECORD_LEN);
        let largest = Record::sign(
            me(),
            &[endpoints[1]; MAX_ENDPOINTS],
            Some(&"x".repeat(MAX_NAME_LEN).parse().unwrap()),
            3,
            1,
        )
        .unwrap();
        assert_eq!(largest.as_bytes().len(), MAX_RECORD_LEN);
        let nameless = Record::sign(me(), &endpoints, None, 3, 1).unwrap();
        assert_eq!(Record::decode(nameless.as_bytes()).unwrap().name, None);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Record::decode(&bytes);
        }
    }
}
