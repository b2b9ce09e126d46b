//! QUIC connection IDs that a restarted node still recognises as its own (so that it answers
//! its old connections' packets with a stateless reset their peers accept), and that cannot be
//! enumerated: 8 random bytes and a 4-byte keyed MAC of them. (quinn's hashed generator keeps
//! 3 random bytes, so its 2^24 IDs and their reset tokens could be harvested in full once its
//! key outlives a process.)

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};

use crate::env::Env;

const NONCE_LEN: usize = 8;
const MAC_LEN: usize = 4;

pub struct KeyedConnectionIds {
    key: [u8; 32],
    env: Arc<dyn Env>,
}

impl KeyedConnectionIds {
    pub fn new(key: [u8; 32], env: Arc<dyn Env>) -> Self {
        Self { key, env }
    }

    fn mac(&self, nonce: &[u8]) -> [u8; MAC_LEN] {
        let hash = blake3::keyed_hash(&self.key, nonce);
        hash.as_bytes()[..MAC_LEN]
            .try_into()
            .expect("a 32-byte hash")
    }
}

impl ConnectionIdGenerator for KeyedConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0u8; NONCE_LEN + MAC_LEN];
        self.env.fill_random(&mut id[..NONCE_LEN]);
        let mac = self.mac(&id[..NONCE_LEN]);
        id[NONCE_LEN..].copy_from_slice(&mac);
        ConnectionId::new(&id)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != NONCE_LEN + MAC_LEN {
            return Err(InvalidCid);
        }
        let (nonce, mac) = cid.split_at(NONCE_LEN);
        match self.mac(nonce) == mac {
            true => Ok(()),
            false => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        NONCE_LEN + MAC_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_under_their_key_only_and_do_not_repeat() {
        let mut ours = KeyedConnectionIds::new([1; 32], crate::env::os::OsEnv::shared());
        let theirs = KeyedConnectionIds::new([2; 32], crate::env::os::OsEnv::shared());
        let id = ours.generate_cid();
        assert_eq!(id.len(), 12);
        assert!(ours.validate(&id).is_ok());
        assert!(
            KeyedConnectionIds::new([1; 32], crate::env::os::OsEnv::shared())
                .validate(&id)
                .is_ok(),
            "after a restart"
        );
        assert!(theirs.validate(&id).is_err());
        assert_ne!(ours.generate_cid(), id);
        assert!(ours.validate(&ConnectionId::new(&[0; 8])).is_err());
    }
}
