//! Trust requests: how a node asks another node's operator to trust it. Each exchange is one
//! overlay stream to virtual port [`TRUST_REQUEST_PORT`], open to any verified peer (an
//! untrusted peer may ask, nothing more): one message, then one answer.
//!
//! ```text
//! message: 0x01 Request  | signed request (below)
//!          0x02 Approved   (the operator approved the request this peer sent us)
//!          0x03 Rejected
//! answer:  0x00 Accepted
//!          0x01 Refused  | reason length u16 | reason (UTF-8)
//!
//! signed request: public key (32) | work nonce u64 | to address (6) | sent u64 (Unix seconds)
//!                 | reason length u16 (≤ 500) | reason (UTF-8) | Ed25519 signature (64)
//! signature = Ed25519(key, "tern 2026-11 trust request v1" || every byte before it)
//! ```
//! The signature binds the request to its sender, its addressee and its time, so a stored
//! request stays verifiable and cannot be replayed to another node.

use crate::address::Address;
use crate::identity::{IdentityError, PublicIdentity, SecretIdentity};
use crate::wire::{DecodeError, Reader, put_reason, read_reason};

pub const TRUST_REQUEST_PORT: u16 = 2;
pub const MAX_REASON_LEN: usize = 500;
/// No message or answer is longer than this.
pub const MAX_MESSAGE_LEN: usize = 1024;
const SIGNING_CONTEXT: &[u8] = b"tern 2026-11 trust request v1";

#[derive(Debug, thiserror::Error)]
pub enum TrustRequestError {
    #[error("malformed trust request message: {0}")]
    Malformed(#[from] DecodeError),
    #[error("trust request identity refused: {0}")]
    Identity(#[from] IdentityError),
    #[error("trust request signature does not verify: forged or altered")]
    BadSignature,
    #[error("the reason is {0} bytes; at most {MAX_REASON_LEN} are allowed")]
    ReasonTooLong(usize),
}

/// A request whose work condition and signature have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub from: PublicIdentity,
    pub to: Address,
    pub sent: u64,
    pub reason: String,
    bytes: Vec<u8>,
}

impl SignedRequest {
    pub fn sign(
        me: &SecretIdentity,
        to: Address,
        sent: u64,
        reason: &str,
    ) -> Result<Self, TrustRequestError> {
        if reason.len() > MAX_REASON_LEN {
            return Err(TrustRequestError::ReasonTooLong(reason.len()));
        }
        let from = *me.public();
        let mut bytes = from.key_bytes().to_vec();
        bytes.extend_from_slice(&from.nonce().to_be_bytes());
        bytes.extend_from_slice(&to.to_bytes());
        bytes.extend_from_slice(&sent.to_be_bytes());
        bytes.extend_from_slice(&(reason.len() as u16).to_be_bytes());
        bytes.extend_from_slice(reason.as_bytes());
        bytes.extend_from_slice(&me.sign(SIGNING_CONTEXT, &bytes));
        Ok(Self {
            from,
            to,
            sent,
            reason: reason.to_owned(),
            bytes,
        })
    }

    /// Decodes and verifies: work condition, then signature.
    pub fn decode(bytes: &[u8]) -> Result<Self, TrustRequestError> {
        let mut r = Reader::new(bytes);
        let request = read_signed(&mut r)?;
        r.finish("trust request")?;
        Ok(request)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn read_signed(r: &mut Reader<'_>) -> Result<SignedRequest, TrustRequestError> {
    let start = r.rest_len();
    let whole = r.peek_rest();
    let key: [u8; 32] = r.array("public key")?;
    let nonce = r.u64("work nonce")?;
    let to = Address::from_bytes(r.array("to address")?);
    let sent = r.u64("sent")?;
    let reason_len = r.u16("reason length")? as usize;
    if reason_len > MAX_REASON_LEN {
        return Err(TrustRequestError::ReasonTooLong(reason_len));
    }
    let reason = std::str::from_utf8(r.take(reason_len, "reason")?)
        .map_err(|_| DecodeError::Invalid {
            what: "reason",
            detail: "not UTF-8".into(),
        })?
        .to_owned();
    let body_len = start - r.rest_len();
    let signature = r.array("signature")?;
    let from = PublicIdentity::verify(key, nonce)?;
    if !from.signed(SIGNING_CONTEXT, &whole[..body_len], &signature) {
        return Err(TrustRequestError::BadSignature);
    }
    Ok(SignedRequest {
        from,
        to,
        sent,
        reason,
        bytes: whole[..body_len + 64].to_vec(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Box<SignedRequest>),
    Approved,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Refused(String),
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Request(request) => [&[0x01], request.as_bytes()].concat(),
            Self::Approved => vec![0x02],
            Self::Rejected => vec![0x03],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TrustRequestError> {
        let mut r = Reader::new(bytes);
        let message = match r.u8("message type")? {
            0x01 => Self::Request(Box::new(read_signed(&mut r)?)),
            0x02 => Self::Approved,
            0x03 => Self::Rejected,
            other => return Err(DecodeError::unknown("message type", other).into()),
        };
        r.finish("trust request message")?;
        Ok(message)
    }
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Accepted => vec![0x00],
            Self::Refused(reason) => {
                let mut out = vec![0x01];
                put_reason(&mut out, reason);
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let answer = match r.u8("answer type")? {
            0x00 => Self::Accepted,
            0x01 => Self::Refused(read_reason(&mut r)?),
            other => return Err(DecodeError::unknown("answer type", other)),
        };
        r.finish("trust request answer")?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip_and_every_altered_byte_is_refused() {
        let me = SecretIdentity::from_seed([31; 32]);
        let to = SecretIdentity::from_seed([32; 32]).address();
        let request = SignedRequest::sign(&me, to, 1_900_000_000, "agent söl asks").unwrap();
        let message = Message::Request(Box::new(request.clone()));
        let bytes = message.encode();
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
        assert_eq!(Message::decode(&bytes).unwrap(), message);
        assert_eq!(SignedRequest::decode(request.as_bytes()).unwrap(), request);
        for i in 1..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            assert!(Message::decode(&altered).is_err(), "byte {i} altered");
        }
        let longest = SignedRequest::sign(&me, to, 1, &"x".repeat(MAX_REASON_LEN)).unwrap();
        assert!(Message::Request(Box::new(longest)).encode().len() <= MAX_MESSAGE_LEN);
        assert!(SignedRequest::sign(&me, to, 1, &"x".repeat(MAX_REASON_LEN + 1)).is_err());
        for m in [Message::Approved, Message::Rejected] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
        for a in [Answer::Accepted, Answer::Refused("slow down".into())] {
            assert_eq!(Answer::decode(&a.encode()).unwrap(), a);
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Message::decode(&bytes);
            let _ = Answer::decode(&bytes);
        }
    }
}
