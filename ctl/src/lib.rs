//! tern-ctl: the client library agents link to talk to their local `ternd`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_ctl::ClientError> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! let client = tern_ctl::Client::for_home(None)?;
//! println!("this node is {}", client.status().await?["address"]);
//! let mut stream = client.dial("a1b2:c3d4:e5f6", 8000).await?;
//! stream.write_all(b"hello\n").await?;
//! stream.shutdown().await?; // half-close: the peer sees end of stream
//! let mut reply = String::new();
//! stream.read_to_string(&mut reply).await?;
//! # Ok(()) }
//! ```
//!
//! A [`Stream`] is a Unix connection the daemon splices to the overlay stream, so it works
//! with anything that takes `AsyncRead + AsyncWrite`; its `id` lets another call reset it or
//! ask how it ended.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde_json::Value;
use tern_local::frames::{FrameIoError, read_frame, write_frame};
use tern_local::home::{Home, HomeError};
use tern_proto::Address;
use tern_proto::api::{ApiError, DatagramFrame, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("no ternd answers on {}: {source}", .socket.display())]
    NoDaemon {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.message)]
    Api(ApiError),
    #[error(transparent)]
    Frame(#[from] FrameIoError),
    #[error("the daemon closed the connection without answering")]
    NoAnswer,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// A stable code for `--json` output.
    pub fn code(&self) -> &str {
        match self {
            Self::Home(_) => "no_home",
            Self::NoDaemon { .. } => "no_daemon",
            Self::Api(e) => &e.code,
            Self::Frame(_) | Self::NoAnswer | Self::Io(_) => "daemon_io",
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NoDaemon { socket, .. } => Some(format!(
                "start the node with `ternd --home {}` (or set TERN_HOME)",
                socket
                    .parent()
                    .map_or_else(|| ".".into(), |p| p.display().to_string())
            )),
            Self::Api(e) => e.hint.clone(),
            _ => None,
        }
    }
}

/// A handle on a local ternd; cheap to clone, one Unix connection per call or stream.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// One overlay stream, as seen from the local side.
#[derive(Debug)]
pub struct Stream {
    /// The daemon's id for it: see [`Client::reset`] and [`Client::outcome`].
    pub id: u64,
    pub peer: Address,
    pub io: UnixStream,
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A stream waiting for a socket: [`Pending::attach`] hands the daemon a connected stream
/// socket (a TCP connection, say), and the daemon copies between it and the overlay stream
/// itself, with no hop through this process.
#[derive(Debug)]
pub struct Pending {
    /// The daemon's id for it: see [`Client::reset`] and [`Client::outcome`].
    pub id: u64,
    pub peer: Address,
    connection: UnixStream,
}

impl Pending {
    /// Hands `socket` over and waits until the stream has ended: `{"end": "clean"}`, or how
    /// it broke, as [`Client::outcome`] tells. This process keeps its copy until then, so
    /// that a failed handover, or a daemon that goes away, resets the connection (TCP RST)
    /// rather than closing it as if the stream had ended.
    pub async fn attach(mut self, socket: impl Into<OwnedFd>) -> Result<Value, ClientError> {
        let socket = socket.into();
        let (descriptor, connection) = (socket.as_raw_fd(), self.connection.as_raw_fd());
        let sent = loop {
            self.connection.writable().await?;
            match self.connection.try_io(Interest::WRITABLE, || {
                send_descriptor(connection, descriptor)
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                sent => break sent,
            }
        };
        let outcome = match sent {
            Ok(()) => Client::answer(&mut self.connection).await,
            Err(e) => Err(e.into()),
        };
        if !matches!(&outcome, Ok(end) if end["end"] == "clean") {
            reset_on_close(&socket);
        }
        outcome
    }
}

/// A zero linger: closing the last copy of a TCP socket sends a reset (not TCP: no effect).
fn reset_on_close(socket: &OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is valid for reads of its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One byte carrying `descriptor` as `SCM_RIGHTS`.
fn send_descriptor(connection: RawFd, descriptor: RawFd) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is a valid empty message; the CMSG_* calls below write one
    // header and one descriptor inside `control`, which has room for both.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        libc::CMSG_DATA(header)
            .cast::<RawFd>()
            .write_unaligned(descriptor);
        if libc::sendmsg(connection, &message, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A stream that arrived on a listened port.
#[derive(Debug)]
pub struct Incoming {
    pub remote_port: u16,
    pub stream: Stream,
}

/// The stream id and peer of a `dial` or `accept` answer.
fn opened(data: &Value) -> Result<(u64, Address), ClientError> {
    let peer = data["peer"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .ok_or(ClientError::NoAnswer)?;
    let id = data["stream"].as_u64().ok_or(ClientError::NoAnswer)?;
    Ok((id, peer))
}

/// A claimed port: streams to it can be accepted, and its datagrams read, while this lives.
#[derive(Debug)]
pub struct PortListener {
    client: Client,
    port: u16,
    /// The connection that holds the port; the daemon pushes the port's datagrams on it.
    claim: tokio::sync::Mutex<UnixStream>,
}

/// A datagram that arrived on a listened port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: Address,
    pub source_port: u16,
    pub payload: Vec<u8>,
}

impl Client {
    /// The daemon of a home: `--home`, else `$TERN_HOME`, else `~/.local/share/tern`.
    pub fn for_home(home: Option<PathBuf>) -> Result<Self, ClientError> {
        Ok(Self {
            socket: Home::resolve(home)?.socket_path(),
        })
    }

    pub fn socket_path(&self) -> &std::path::Path {
        &self.socket
    }

    async fn open(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::NoDaemon {
                socket: self.socket.clone(),
                source,
            })
    }

    /// Sends a request on `connection` and returns the answer's data.
    async fn exchange(
        connection: &mut UnixStream,
        request: &Request,
    ) -> Result<Value, ClientError> {
        write_frame(connection, request).await?;
        Self::answer(connection).await
    }

    /// Reads one answer and returns its data.
    async fn answer(connection: &mut UnixStream) -> Result<Value, ClientError> {
        let response: Response = read_frame(connection).await?.ok_or(ClientError::NoAnswer)?;
        match (response.ok, response.error) {
            (true, _) => Ok(response.data),
            (false, Some(error)) => Err(ClientError::Api(error)),
            (false, None) => Err(ClientError::NoAnswer),
        }
    }

    async fn call(&self, request: Request) -> Result<Value, ClientError> {
        Self::exchange(&mut self.open().await?, &request).await
    }

    pub async fn status(&self) -> Result<Value, ClientError> {
        self.call(Request::Status).await
    }

    /// `{"peers": [...]}`, every page of them.
    pub async fn peers(&self) -> Result<Value, ClientError> {
        self.all_pages("peers", |after| Request::Peers { after })
            .await
    }

    /// A listing the daemon sends in pages (`next` names where the next one starts): all of
    /// `list`'s entries, over one connection.
    async fn all_pages(
        &self,
        list: &str,
        request: impl Fn(Option<String>) -> Request,
    ) -> Result<Value, ClientError> {
        let mut connection = self.open().await?;
        let mut whole = Self::exchange(&mut connection, &request(None)).await?;
        let mut entries = whole[list].take();
        while let Some(next) = whole["next"].as_str().map(str::to_owned) {
            let mut page = Self::exchange(&mut connection, &request(Some(next.clone()))).await?;
            if page["next"].as_str() == Some(next.as_str()) {
                return Err(ClientError::NoAnswer);
            }
            if let (Some(all), Some(more)) = (entries.as_array_mut(), page[list].as_array_mut()) {
                all.append(more);
            }
            whole = page;
        }
        whole[list] = entries;
        Ok(whole)
    }

    pub async fn ping(&self, target: &str) -> Result<Value, ClientError> {
        self.call(Request::Ping {
            target: target.into(),
        })
        .await
    }

    pub async fn trust_add(&self, address: &str) -> Result<Value, ClientError> {
        self.call(Request::TrustAdd {
            address: address.into(),
        })
        .await
    }

    pub async fn trust_remove(&self, address: &str) -> Result<Value, ClientError> {
        self.call(Request::TrustRemove {
            address: address.into(),
        })
        .await
    }

    pub async fn trust_list(&self) -> Result<Value, ClientError> {
        self.call(Request::TrustList).await
    }

    /// Asks `target`'s operator to trust this node; returns once the request is delivered.
    pub async fn trust_request(&self, target: &str, reason: &str) -> Result<Value, ClientError> {
        self.call(Request::TrustRequest {
            target: target.into(),
            reason: reason.into(),
        })
        .await
    }

    /// `{"pending": [...], "outgoing": [...]}`: requests to answer, and ours unanswered.
    pub async fn trust_requests(&self) -> Result<Value, ClientError> {
        self.all_pages("pending", |after| Request::TrustRequests { after })
            .await
    }

    /// Answers the pending request from `address`: approve trusts it (and it trusts us).
    pub async fn trust_answer(&self, address: &str, approve: bool) -> Result<Value, ClientError> {
        let address = address.into();
        self.call(if approve {
            Request::TrustApprove { address }
        } else {
            Request::TrustReject { address }
        })
        .await
    }

    /// `target`'s verified record: `address`, `public_key`, `name`, `endpoints`, `via`.
    pub async fn find(&self, target: &str) -> Result<Value, ClientError> {
        self.call(Request::Find {
            target: target.into(),
        })
        .await
    }

    /// Claims `name` for this node; `None` gives its name up.
    pub async fn name_set(&self, name: Option<&str>) -> Result<Value, ClientError> {
        self.call(Request::NameSet {
            name: name.map(String::from),
        })
        .await
    }

    /// Forgets the key pinned for `name`, accepting whatever key it is found with next.
    pub async fn name_forget(&self, name: &str) -> Result<Value, ClientError> {
        self.call(Request::NameForget { name: name.into() }).await
    }

    /// This node's name, its aliases and its pinned names.
    pub async fn names(&self) -> Result<Value, ClientError> {
        self.call(Request::Names).await
    }

    /// Sets the alias `name` to `address`, or with `None` removes it.
    pub async fn alias(&self, name: &str, address: Option<&str>) -> Result<Value, ClientError> {
        self.call(Request::Alias {
            name: name.into(),
            address: address.map(String::from),
        })
        .await
    }

    /// Opens a stream to `port` on `target`; bytes written reach the remote listener.
    pub async fn dial(&self, target: &str, port: u16) -> Result<Stream, ClientError> {
        let (id, peer, io) = self.dial_as(target, port, false).await?;
        Ok(Stream { id, peer, io })
    }

    /// Opens a stream to `port` on `target` for a socket to be attached to.
    pub async fn dial_pending(&self, target: &str, port: u16) -> Result<Pending, ClientError> {
        let (id, peer, connection) = self.dial_as(target, port, true).await?;
        Ok(Pending {
            id,
            peer,
            connection,
        })
    }

    async fn dial_as(
        &self,
        target: &str,
        port: u16,
        attach: bool,
    ) -> Result<(u64, Address, UnixStream), ClientError> {
        let mut connection = self.open().await?;
        let request = Request::Dial {
            target: target.into(),
            port,
            attach,
        };
        let (id, peer) = opened(&Self::exchange(&mut connection, &request).await?)?;
        Ok((id, peer, connection))
    }

    /// Ends a stream abnormally: its peer sees a reset with `code`, not a clean end.
    pub async fn reset(&self, stream: u64, code: u32) -> Result<Value, ClientError> {
        self.call(Request::Reset { stream, code }).await
    }

    /// How a stream ended once both its directions are closed: `{"end": "clean"}`, or
    /// `{"end": "broken", "detail": …}`, or `{"end": "reset", "code": …}`.
    pub async fn outcome(&self, stream: u64) -> Result<Value, ClientError> {
        self.call(Request::Outcome {
            stream,
            wait_ms: 10_000,
        })
        .await
    }

    /// How a stream ended, without waiting: `None` while it is still running.
    pub async fn outcome_now(&self, stream: u64) -> Result<Option<Value>, ClientError> {
        match self.call(Request::Outcome { stream, wait_ms: 0 }).await {
            Ok(outcome) => Ok(Some(outcome)),
            Err(ClientError::Api(e)) if e.code == "still_running" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Claims `port`; `open` admits peers that are not on the trust list.
    pub async fn listen(&self, port: u16, open: bool) -> Result<PortListener, ClientError> {
        let mut claim = self.open().await?;
        Self::exchange(&mut claim, &Request::Listen { port, open }).await?;
        Ok(PortListener {
            client: self.clone(),
            port,
            claim: tokio::sync::Mutex::new(claim),
        })
    }

    /// Sends one unreliable datagram (at most about 1,100 bytes) to `port` on `target`.
    pub async fn send_datagram(
        &self,
        target: &str,
        port: u16,
        source_port: u16,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let request = Request::SendDatagram {
            target: target.into(),
            port,
            source_port,
            data: hex::encode(payload),
        };
        self.call(request).await.map(|_| ())
    }
}

impl PortListener {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next datagram to the port; `None` if the daemon went away.
    pub async fn recv_datagram(&self) -> Result<Option<Datagram>, ClientError> {
        let mut claim = self.claim.lock().await;
        let Some(frame) = read_frame::<DatagramFrame>(&mut *claim).await? else {
            return Ok(None);
        };
        let bad = || ClientError::NoAnswer;
        Ok(Some(Datagram {
            from: frame.from.parse().map_err(|_| bad())?,
            source_port: frame.source_port,
            payload: hex::decode(&frame.data).map_err(|_| bad())?,
        }))
    }

    /// The next stream to the port (several `accept`s may wait at once).
    pub async fn accept(&self) -> Result<Incoming, ClientError> {
        let (id, peer, remote_port, io) = self.accept_as(false).await?;
        Ok(Incoming {
            remote_port,
            stream: Stream { id, peer, io },
        })
    }

    /// The next stream to the port, for a socket to be attached to; with its remote port.
    pub async fn accept_pending(&self) -> Result<(Pending, u16), ClientError> {
        let (id, peer, remote_port, connection) = self.accept_as(true).await?;
        let pending = Pending {
            id,
            peer,
            connection,
        };
        Ok((pending, remote_port))
    }

    async fn accept_as(
        &self,
        attach: bool,
    ) -> Result<(u64, Address, u16, UnixStream), ClientError> {
        let mut connection = self.client.open().await?;
        let request = Request::Accept {
            port: self.port,
            attach,
        };
        let data = Client::exchange(&mut connection, &request).await?;
        let (id, peer) = opened(&data)?;
        let remote_port = data["remote_port"].as_u64().unwrap_or(0) as u16;
        Ok((id, peer, remote_port, connection))
    }
}
