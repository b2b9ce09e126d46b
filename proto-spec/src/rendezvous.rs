//! Rendezvous requests and answers. Each exchange is one overlay stream to virtual port
//! [`RENDEZVOUS_PORT`]: the asker writes one request and finishes; the server writes one
//! answer and finishes.
//!
//! ```text
//! request: 0x01 Register  | record length u16 | record       (record: crate::record)
//!          0x02 Lookup    | address (6)
//!          0x03 Introduce | target address (6) | record length u16 | the asker's record
//!          0x04 LookupName | name (length u8, name)
//! answer:  0x00 Registered | observed socket address (the asker's address as seen by the server)
//!          0x01 Found      | record length u16 | record
//!          0x02 NotFound
//!          0x03 Refused    | reason length u16 | reason (UTF-8)
//!          0x04 Introduced
//!          0x05 NameTaken  | name (length u8, name) | the holder's address (6)
//!          0x06 Stale      | the stored record's seq u64
//! ```
//! A `Register` whose record's seq is not above the stored one's is answered `Stale`: the
//! owner (whose clock may have stepped back) raises its counter past that seq and registers
//! again.
//! A `Register` whose record claims a name that another key holds is answered `NameTaken`
//! and not stored; the node registers again without the name. `LookupName` is answered with
//! the live record that holds the name, which the asker checks carries that name.
//! `Introduce` asks the server to pass the asker's record to `target` over the target's own
//! connection, so that both start probing each other's endpoints at once (hole punching). A
//! node that receives `Introduce` naming itself as target starts probing the record's
//! endpoints.

use crate::address::Address;
use crate::name::{Name, put_name, read_name};
use crate::record::{MAX_RECORD_LEN, Record, RecordError};
use crate::wire::{
    DecodeError, Reader, put_reason, put_socket_addr, read_reason, read_socket_addr,
};
use std::net::SocketAddr;

pub const RENDEZVOUS_PORT: u16 = 1;
/// No request or answer is longer than this.
pub const MAX_MESSAGE_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Register(Box<Record>),
    Lookup(Address),
    Introduce {
        target: Address,
        record: Box<Record>,
    },
    LookupName(Name),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Registered { observed: SocketAddr },
    Found(Box<Record>),
    NotFound,
    Refused(String),
    Introduced,
    NameTaken { name: Name, holder: Address },
    Stale { stored_seq: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("malformed rendezvous message: {0}")]
    Malformed(#[from] DecodeError),
    #[error("refused record: {0}")]
    Record(#[from] RecordError),
}

fn put_blob(out: &mut Vec<u8>, blob: &[u8]) {
    out.extend_from_slice(&(blob.len() as u16).to_be_bytes());
    out.extend_from_slice(blob);
}

fn read_blob<'a>(
    r: &mut Reader<'a>,
    max: usize,
    what: &'static str,
) -> Result<&'a [u8], DecodeError> {
    let len = r.u16(what)? as usize;
    if len > max {
        return Err(DecodeError::Invalid {
            what,
            detail: format!("{len} bytes, at most {max} allowed"),
        });
    }
    r.take(len, what)
}

fn read_record(r: &mut Reader<'_>) -> Result<Box<Record>, MessageError> {
    Ok(Box::new(Record::decode(read_blob(
        r,
        MAX_RECORD_LEN,
        "record",
    )?)?))
}

fn required_name(r: &mut Reader<'_>) -> Result<Name, DecodeError> {
    read_name(r)?.ok_or(DecodeError::Invalid {
        what: "name",
        detail: "empty".into(),
    })
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Register(record) => {
                out.push(0x01);
                put_blob(&mut out, record.as_bytes());
            }
            Self::Lookup(address) => {
                out.push(0x02);
                out.extend_from_slice(&address.to_bytes());
            }
            Self::Introduce { target, record } => {
                out.push(0x03);
                out.extend_from_slice(&target.to_bytes());
                put_blob(&mut out, record.as_bytes());
            }
            Self::LookupName(name) => {
                out.push(0x04);
                put_name(&mut out, Some(name));
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(bytes);
        let request = match r.u8("request type")? {
            0x01 => Self::Register(read_record(&mut r)?),
            0x02 => Self::Lookup(Address::from_bytes(r.array("address")?)),
            0x03 => Self::Introduce {
                target: Address::from_bytes(r.array("target address")?),
                record: read_record(&mut r)?,
            },
            0x04 => Self::LookupName(required_name(&mut r)?),
            other => return Err(DecodeError::unknown("request type", other).into()),
        };
        r.finish("rendezvous request")?;
        Ok(request)
    }
}

impl Answer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Registered { observed } => {
                out.push(0x00);
                put_socket_addr(&mut out, *observed);
            }
            Self::Found(record) => {
                out.push(0x01);
                put_blob(&mut out, record.as_bytes());
            }
            Self::NotFound => out.push(0x02),
            Self::Refused(reason) => {
                out.push(0x03);
                put_reason(&mut out, reason);
            }
            Self::Introduced => out.push(0x04),
            Self::NameTaken { name, holder } => {
                out.push(0x05);
                put_name(&mut out, Some(name));
                out.extend_from_slice(&holder.to_bytes());
            }
            Self::Stale { stored_seq } => {
                out.push(0x06);
                out.extend_from_slice(&stored_seq.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(bytes);
        let answer = match r.u8("answer type")? {
            0x00 => Self::Registered {
                observed: read_socket_addr(&mut r)?,
            },
            0x01 => Self::Found(read_record(&mut r)?),
            0x02 => Self::NotFound,
            0x04 => Self::Introduced,
            0x05 => Self::NameTaken {
                name: required_name(&mut r)?,
                holder: Address::from_bytes(r.array("holder address")?),
            },
            0x03 => Self::Refused(read_reason(&mut r)?),
            0x06 => Self::Stale {
                stored_seq: r.u64("stored seq")?,
            },
            other => return Err(DecodeError::unknown("answer type", other).into()),
        };
        r.finish("rendezvous answer")?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretIdentity;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        let me = SecretIdentity::from_seed([5; 32]);
        let name: Name = "alpha".parse().unwrap();
        let record =
            Record::sign(&me, &["192.0.2.1:1".parse().unwrap()], Some(&name), 1, 99).unwrap();
        for request in [
            Request::Register(Box::new(record.clone())),
            Request::Lookup(me.address()),
            Request::Introduce {
                target: me.address(),
                record: Box::new(record.clone()),
            },
            Request::LookupName(name.clone()),
        ] {
            assert_eq!(Request::decode(&request.encode()).unwrap(), request);
        }
        for answer in [
            Answer::Registered {
                observed: "198.51.100.2:4".parse().unwrap(),
            },
            Answer::Found(Box::new(record)),
            Answer::NotFound,
            Answer::Refused("stale seq".into()),
            Answer::Introduced,
            Answer::NameTaken {
                name,
                holder: me.address(),
            },
            Answer::Stale { stored_seq: 7 },
        ] {
            assert!(answer.encode().len() <= MAX_MESSAGE_LEN);
            assert_eq!(Answer::decode(&answer.encode()).unwrap(), answer);
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Request::decode(&bytes);
            let _ = Answer::decode(&bytes);
        }
    }
}
