//! The local API between `ternd` and its clients, over the Unix socket `HOME/ternd.sock`.
//!
//! Each message is a frame: length u32 (big-endian, at most [`MAX_FRAME`]) then that many
//! bytes of UTF-8 JSON. A client sends one [`Request`] and reads one [`Response`]. After a
//! successful `dial` or `accept` the same connection carries the overlay stream's raw bytes
//! in both directions (no more frames); closing the write side half-closes the stream. The
//! answer names the stream (`data.stream`), so that another connection can `reset` it or ask
//! for its `outcome`: a Unix socket can only say end-of-stream, not how a stream ended.
//!
//! With `attach`, the client hands the daemon a connected stream socket instead (one byte
//! carrying the descriptor as `SCM_RIGHTS`, after the answer); the daemon copies between that
//! socket and the overlay stream itself, so the client's process is off the data path, and
//! writes the stream's outcome as one last frame when the stream has ended. Closing the API
//! connection before then breaks the stream.

use serde::{Deserialize, Serialize};

pub const MAX_FRAME: usize = 64 * 1024;

fn is_false(value: &bool) -> bool {
    !value
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Node address, listen address, rendezvous registration.
    Status,
    /// Connected peers and their paths, in address order. A list too long for one frame
    /// comes in pages: ask again with `after` set to the answer's `next` until it is null.
    Peers {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    /// Open a stream to `port` on `target` (an address or a name, as everywhere a `target`
    /// appears); the connection becomes the stream, or with `attach`, waits for a socket.
    Dial {
        target: String,
        port: u16,
        #[serde(default, skip_serializing_if = "is_false")]
        attach: bool,
    },
    /// Claim `port` for as long as this connection stays open; `open` admits untrusted peers.
    Listen {
        port: u16,
        open: bool,
    },
    /// Wait for the next stream on a port this client listens on; the connection becomes it,
    /// or with `attach`, waits for a socket.
    Accept {
        port: u16,
        #[serde(default, skip_serializing_if = "is_false")]
        attach: bool,
    },
    /// One unreliable datagram to `port` on `target`; `data` in hex.
    SendDatagram {
        target: String,
        port: u16,
        source_port: u16,
        data: String,
    },
    /// Round trip to a peer over a sealed control packet.
    Ping {
        target: String,
    },
    /// End a spliced stream abnormally: the peer sees a reset with `code`, not a clean end.
    Reset {
        stream: u64,
        code: u32,
    },
    /// How a spliced stream ended: `clean` or why not; waits up to `wait_ms` for it to end.
    Outcome {
        stream: u64,
        #[serde(default = "default_outcome_wait_ms")]
        wait_ms: u64,
    },
    TrustAdd {
        address: String,
    },
    TrustRemove {
        address: String,
    },
    TrustList,
    /// Ask `target`'s operator to trust this node (a signed request over the overlay).
    TrustRequest {
        target: String,
        #[serde(default)]
        reason: String,
    },
    /// Trust requests to this node waiting for an answer (paged like `peers`), and ours not
    /// answered yet.
    TrustRequests {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
    TrustApprove {
        address: String,
    },
    TrustReject {
        address: String,
    },
    /// `target`'s verified record: address, public key, name, endpoints.
    Find {
        target: String,
    },
    /// Claim `name` for this node, or with `null` give its name up.
    NameSet {
        name: Option<String>,
    },
    /// Forget the key pinned for `name`.
    NameForget {
        name: String,
    },
    /// This node's name, aliases and pinned names.
    Names,
    /// Set (`address` given) or remove an alias.
    Alias {
        name: String,
        address: Option<String>,
    },
}

fn default_outcome_wait_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable, machine-readable: `bad_request`, `bad_address`, `unreachable`, `refused`, …
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn success(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            data,
            error: None,
        }
    }

    pub fn failure(code: &str, message: impl Into<String>, hint: Option<String>) -> Self {
        Self {
            ok: false,
            data: serde_json::Value::Null,
            error: Some(ApiError {
                code: code.into(),
                message: message.into(),
                hint,
            }),
        }
    }
}

/// Pushed by the daemon on a `listen` connection for each datagram to that port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatagramFrame {
    pub from: String,
    pub source_port: u16,
    /// The payload in hex.
    pub data: String,
}

/// Room for a list's entries in one answer frame; the rest is for the envelope.
pub const PAGE_BUDGET: usize = MAX_FRAME - 4096;

/// The entries (each an object with an `"address"`, in address order) that come after
/// `after` and fit in `budget` bytes of JSON, and the `next` to ask after if any are left.
pub fn page(
    entries: impl IntoIterator<Item = serde_json::Value>,
    after: Option<&str>,
    budget: usize,
) -> (Vec<serde_json::Value>, Option<String>) {
    let key = |entry: &serde_json::Value| entry["address"].as_str().unwrap_or_default().to_owned();
    let mut page = Vec::new();
    let mut used = 0;
    for entry in entries
        .into_iter()
        .filter(|e| after.is_none_or(|after| key(e).as_str() > after))
    {
        let size = serde_json::to_vec(&entry).map_or(0, |bytes| bytes.len()) + 1;
        if used + size > budget && !page.is_empty() {
            let next = page.last().map(key);
            return (page, next);
        }
        used += size;
        page.push(entry);
    }
    (page, None)
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame is not valid JSON for this message: {0}")]
    Json(#[from] serde_json::Error),
}

/// A frame's bytes: length prefix and JSON.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(message)?;
    if json.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(json.len()));
    }
    let mut out = (json.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

/// The body length announced by a frame header, if allowed.
pub fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_is_left_out_unless_asked_for() {
        let accept = Request::Accept {
            port: 7,
            attach: true,
        };
        let frame = encode(&accept).unwrap();
        assert_eq!(&frame[4..], br#"{"op":"accept","port":7,"attach":true}"#);
        let plain: Request = decode(br#"{"op":"accept","port":7}"#).unwrap();
        assert_eq!(
            plain,
            Request::Accept {
                port: 7,
                attach: false
            }
        );
    }

    #[test]
    fn requests_round_trip_in_their_documented_json() {
        let dial = Request::Dial {
            target: "a1b2:c3d4:e5f6".into(),
            port: 7,
            attach: false,
        };
        let frame = encode(&dial).unwrap();
        assert_eq!(
            &frame[4..],
            br#"{"op":"dial","target":"a1b2:c3d4:e5f6","port":7}"#
        );
        assert_eq!(
            body_len(frame[..4].try_into().unwrap()).unwrap(),
            frame.len() - 4
        );
        assert_eq!(decode::<Request>(&frame[4..]).unwrap(), dial);
        assert!(body_len((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
        assert!(decode::<Request>(br#"{"op":"format_disk"}"#).is_err());
        assert_eq!(
            decode::<Request>(br#"{"op":"peers"}"#).unwrap(),
            Request::Peers { after: None }
        );
    }

    #[test]
    fn pages_cover_every_entry_once_in_order() {
        let entries: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!({"address": format!("0000:0000:{i:04x}"), "pad": "x".repeat(50)}))
            .collect();
        let (mut seen, mut after) = (Vec::new(), None::<String>);
        loop {
            let (page, next) = page(entries.clone(), after.as_deref(), 1000);
            assert!(!page.is_empty() && serde_json::to_vec(&page).unwrap().len() <= 1000 + 2);
            seen.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, entries);
        // One entry larger than the budget still comes, alone.
        let (page, next) = page(entries[..2].to_vec(), None, 10);
        assert_eq!((page.len(), next.as_deref()), (1, Some("0000:0000:0000")));
    }
}
