//! The local API server: `HOME/ternd.sock`, mode 0600, and only clients running as this
//! daemon's user (or root) are served. Frames are specified in `tern_proto::api`; a `dial` or
//! `accept` turns its connection into the overlay stream, spliced without framing.

use std::sync::Weak;
use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::api::{DatagramFrame, PAGE_BUDGET, Request, Response, page};
use tern_proto::{Address, Name};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

pub use tern_local::frames::{FrameIoError, read_frame, write_frame};

use super::Daemon;
use crate::backoff::accept_patiently;
use crate::discovery::FindError;
use crate::env::ApiConnection;
use crate::node::{DialError, OverlayStream};
use crate::services::apps::AppError;
use crate::services::names::NameError;
use crate::services::trust_requests::TrustRequestError;
use crate::store::StoreError;
use crate::streams::{Outcome, StreamHandle, wait_outcome};
use crate::traversal::connect::ConnectError;

/// A client must send its request within this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Room for copies between a local API client and its QUIC stream: at first, and at most
/// for the download buffer and the upload region (read into, handed to quinn in chunks).
const SPLICE_START: usize = 16 * 1024;
const SPLICE_BUFFER: usize = 256 * 1024;
const SPLICE_REGION: usize = 1 << 20;
/// The longest an `outcome` request may wait for its stream to end.
const OUTCOME_WAIT: Duration = Duration::from_secs(10);
/// Reset code when the local side of a splice failed.
const STREAM_BROKEN: u32 = 1;

/// Serves the local API on `listener` until the daemon goes (`Daemon::serve_api` runs it as
/// one of the node's tasks).
pub async fn serve(daemon: Weak<Daemon>, listener: UnixListener) {
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    loop {
        // At the limit, new clients wait in the kernel's queue until a place frees up.
        let Some(clients) = daemon.upgrade().map(|d| d.api_clients.clone()) else {
            return;
        };
        let Ok(place) = clients.acquire_owned().await else {
            return;
        };
        let (stream, _) = accept_patiently("local API", || listener.accept()).await;
        let allowed = stream
            .peer_cred()
            .is_ok_and(|cred| cred.uid() == own_uid || cred.uid() == 0);
        if !allowed {
            tracing::warn!("local API client of another user refused");
            continue;
        }
        let Some(daemon) = daemon.upgrade() else {
            return;
        };
        daemon.node().clone().spawn(async move {
            let _place = place;
            if let Err(e) = serve_client(&daemon, stream).await {
                tracing::debug!(error = %e, "local API client ended");
            }
        });
    }
}

const UNREACHABLE_HINT: &str =
    "check that the remote ternd runs; `ternctl status` shows this node's registration";

/// An error as the local API reports it: a code clients match on, the message, and a hint
/// at what to do. Every error a request can end in has its code here.
trait Failure: std::error::Error {
    fn code(&self) -> (&'static str, Option<&'static str>);

    fn failure(&self) -> Response {
        let (code, hint) = self.code();
        Response::failure(code, self.to_string(), hint.map(String::from))
    }
}

impl Failure for StoreError {
    fn code(&self) -> (&'static str, Option<&'static str>) {
        ("internal", None)
    }
}

impl Failure for FindError {
    fn code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            FindError::NotFound(_) => (
                "not_found",
                Some(
                    "check the address, and that both nodes use the same rendezvous (ternd --rendezvous) or both the DHT (ternd --dht)",
                ),
            ),
            FindError::Unanswered { .. } => ("unreachable", Some(UNREACHABLE_HINT)),
        }
    }
}

impl Failure for ConnectError {
    fn code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ConnectError::Find(e) => e.code(),
            ConnectError::Unreachable { .. } => ("unreachable", Some(UNREACHABLE_HINT)),
        }
    }
}

impl Failure for NameError {
    fn code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            NameError::BadTarget(_) => (
                "bad_address",
                Some("use the address `ternctl id` prints on the other node, or its name"),
            ),
            NameError::NotFound(_) | NameError::NoAlias(_) => ("not_found", None),
            NameError::Pinned(_) => ("pin_mismatch", None),
            NameError::Conflict(_) => ("name_conflict", None),
            NameError::Held(_) => ("name_taken", None),
            NameError::Unresolved(..) => (
                "unreachable",
                Some("check the rendezvous servers in `ternctl status`"),
            ),
            NameError::Find(e) => e.code(),
            NameError::Store(e) => e.code(),
        }
    }
}

impl Failure for TrustRequestError {
    fn code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            TrustRequestError::NoPending(_) => ("not_found", None),
            TrustRequestError::NotDelivered { .. } => ("not_delivered", None),
            TrustRequestError::Name(e) => e.code(),
            TrustRequestError::Connect(e) => e.code(),
            TrustRequestError::Store(e) => e.code(),
        }
    }
}

impl Failure for AppError {
    fn code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            AppError::Connect(e) => e.code(),
            AppError::Dial(DialError::Refused { .. }) => (
                "refused",
                Some(
                    "the remote operator can run `ternctl trust add <this node's address>`, or expose the port with --open",
                ),
            ),
            AppError::Dial(_) | AppError::Probe(_) => ("unreachable", Some(UNREACHABLE_HINT)),
            AppError::Datagram(_) => (
                "datagram_not_sent",
                Some("datagrams must fit one packet (about 1,100 bytes); use a stream for more"),
            ),
            AppError::ReservedPort(_) | AppError::PortInUse(_) | AppError::NotListening(_) => {
                ("bad_port", None)
            }
        }
    }
}

/// A TARGET (address or name) as an address, or the failure to send back.
async fn resolve(daemon: &Daemon, target: &str) -> Result<Address, Response> {
    daemon
        .names()
        .resolve(target)
        .await
        .map_err(|e| e.failure())
}

fn parse_name(text: &str) -> Result<Name, Response> {
    text.parse::<Name>()
        .map_err(|e| Response::failure("bad_name", e.to_string(), None))
}

/// The response to a request that either succeeds with `data` or fails.
fn answer(result: Result<Value, impl Failure>) -> Response {
    match result {
        Ok(data) => Response::success(data),
        Err(e) => e.failure(),
    }
}

/// Serves one local API client over any byte stream: the Unix socket's, or an in-memory pipe
/// of a simulated app. Whoever calls this has checked who the client is.
pub async fn serve_client<S: ApiConnection>(
    daemon: &Daemon,
    mut client: S,
) -> Result<(), FrameIoError> {
    loop {
        let request =
            match tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<Request>(&mut client)).await {
                Err(_) | Ok(Ok(None)) => return Ok(()),
                Ok(Err(FrameIoError::Frame(e))) => {
                    let response = Response::failure("bad_request", e.to_string(), None);
                    return write_frame(&mut client, &response).await;
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Some(request))) => request,
            };
        match request {
            Request::Status => {
                write_frame(&mut client, &Response::success(daemon.status())).await?
            }
            Request::Peers { after } => {
                let relayed_because = daemon.relayed_because();
                let peers = daemon.node().peers().into_iter().map(|p| {
                    let mut peer = json!(p);
                    if p.path == "relay" {
                        peer["relayed_because"] = json!(relayed_because);
                    }
                    peer
                });
                let (peers, next) = page(peers, after.as_deref(), PAGE_BUDGET);
                let peers = json!({ "peers": peers, "next": next });
                write_frame(&mut client, &Response::success(peers)).await?
            }
            Request::Ping { target } => {
                let response = match resolve(daemon, &target).await {
                    Err(response) => response,
                    Ok(peer) => answer(daemon.apps().ping(peer).await.map(
                        |rtt| json!({ "address": peer, "rtt_ms": rtt.as_secs_f64() * 1000.0 }),
                    )),
                };
                write_frame(&mut client, &response).await?
            }
            Request::TrustAdd { ref address } | Request::TrustRemove { ref address } => {
                let trusted = matches!(request, Request::TrustAdd { .. });
                let response = match resolve(daemon, address).await {
                    Err(response) => response,
                    Ok(peer) => answer(
                        daemon
                            .trust()
                            .set(peer, trusted)
                            .map(|changed| json!({ "address": peer, "changed": changed })),
                    ),
                };
                write_frame(&mut client, &response).await?
            }
            Request::TrustRequest { target, reason } => {
                let response = answer(
                    daemon
                        .trust_requests()
                        .request(&target, &reason)
                        .await
                        .map(|peer| json!({ "address": peer, "delivered": true })),
                );
                write_frame(&mut client, &response).await?
            }
            Request::TrustRequests { after } => {
                let requests = daemon.trust_requests().list(after.as_deref());
                write_frame(&mut client, &Response::success(requests)).await?
            }
            Request::TrustApprove { ref address } | Request::TrustReject { ref address } => {
                let approve = matches!(request, Request::TrustApprove { .. });
                let response = match resolve(daemon, address).await {
                    Err(response) => response,
                    Ok(peer) => answer(daemon.trust_requests().answer(peer, approve).await),
                };
                write_frame(&mut client, &response).await?
            }
            Request::Find { target } => {
                let response = answer(daemon.names().find_target(&target).await);
                write_frame(&mut client, &response).await?
            }
            Request::NameSet { name } => {
                let response = match name.as_deref().map(parse_name).transpose() {
                    Err(response) => response,
                    Ok(name) => answer(daemon.names().set_name(name).await),
                };
                write_frame(&mut client, &response).await?
            }
            Request::NameForget { name } => {
                let response = match parse_name(&name) {
                    Err(response) => response,
                    Ok(name) => answer(
                        daemon
                            .names()
                            .forget_name(&name)
                            .map(|pinned| json!({ "name": name, "was_pinned_to": pinned })),
                    ),
                };
                write_frame(&mut client, &response).await?
            }
            Request::Names => {
                write_frame(&mut client, &Response::success(daemon.names().list())).await?
            }
            Request::Alias { name, address } => {
                let address = match address.map(|a| a.parse::<Address>()).transpose() {
                    Ok(address) => address,
                    Err(e) => {
                        let response = Response::failure("bad_address", e.to_string(), None);
                        write_frame(&mut client, &response).await?;
                        continue;
                    }
                };
                let response = match parse_name(&name) {
                    Err(response) => response,
                    Ok(name) => answer(daemon.names().set_alias(name.clone(), address).map(|previous| {
                        json!({ "name": name, "address": address, "previous": previous })
                    })),
                };
                write_frame(&mut client, &response).await?
            }
            Request::Reset { stream, code } => {
                let response = if daemon.streams().reset(stream, code) {
                    Response::success(json!({ "stream": stream, "code": code }))
                } else {
                    Response::failure(
                        "unknown_stream",
                        format!("no running stream {stream}"),
                        None,
                    )
                };
                write_frame(&mut client, &response).await?
            }
            Request::Outcome { stream, wait_ms } => {
                let wait = Duration::from_millis(wait_ms).min(OUTCOME_WAIT);
                let watched = daemon.streams().watch(stream);
                let response = match watched {
                    None => Response::failure(
                        "unknown_stream",
                        format!("no stream {stream} is known"),
                        None,
                    ),
                    Some(done) => match wait_outcome(done, wait).await {
                        Some(outcome) => Response::success(json!(outcome)),
                        None => Response::failure(
                            "still_running",
                            format!("stream {stream} has not ended within {wait:?}"),
                            Some("close both directions of the stream first".into()),
                        ),
                    },
                };
                write_frame(&mut client, &response).await?
            }
            Request::TrustList => {
                let trusted = json!({ "trusted": daemon.trust().list() });
                write_frame(&mut client, &Response::success(trusted)).await?
            }
            Request::Listen { port, open } => {
                let mut datagrams = match daemon.apps().listen(port, open) {
                    Ok(datagrams) => datagrams,
                    Err(e) => {
                        write_frame(&mut client, &e.failure()).await?;
                        continue;
                    }
                };
                write_frame(
                    &mut client,
                    &Response::success(json!({ "port": port, "open": open })),
                )
                .await?;
                // The port is held while this connection lives; its datagrams are pushed here.
                let (mut reader, mut writer) = tokio::io::split(client);
                let mut sink = [0u8; 64];
                loop {
                    tokio::select! {
                        read = reader.read(&mut sink) => if !matches!(read, Ok(n) if n > 0) { break },
                        Some(datagram) = datagrams.recv() => {
                            let frame = DatagramFrame {
                                from: datagram.from.to_string(),
                                source_port: datagram.source_port,
                                data: hex::encode(&datagram.payload),
                            };
                            if write_frame(&mut writer, &frame).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                daemon.apps().unlisten(port);
                return Ok(());
            }
            Request::SendDatagram {
                target,
                port,
                source_port,
                data,
            } => {
                let response = match (resolve(daemon, &target).await, hex::decode(&data)) {
                    (Err(response), _) => response,
                    (_, Err(e)) => Response::failure(
                        "bad_request",
                        format!("datagram data is not hex: {e}"),
                        None,
                    ),
                    (Ok(peer), Ok(payload)) => match daemon
                        .apps()
                        .send_datagram(peer, port, source_port, &payload)
                        .await
                    {
                        Ok(()) => Response::success(json!({ "sent": payload.len() })),
                        Err(e) => e.failure(),
                    },
                };
                write_frame(&mut client, &response).await?
            }
            Request::Dial {
                target,
                port,
                attach,
            } => {
                let peer = match resolve(daemon, &target).await {
                    Ok(peer) => peer,
                    Err(response) => {
                        write_frame(&mut client, &response).await?;
                        continue;
                    }
                };
                match daemon.apps().dial(peer, port).await {
                    Ok(stream) => {
                        let handle = daemon.streams().open();
                        let opened = json!({ "stream": handle.id, "peer": peer, "port": port, "local_port": stream.local_port });
                        write_frame(&mut client, &Response::success(opened)).await?;
                        serve_stream(client, stream, handle, attach).await;
                        return Ok(());
                    }
                    Err(e) => write_frame(&mut client, &e.failure()).await?,
                }
            }
            Request::Accept { port, attach } => match daemon.apps().accept(port).await {
                Ok(Some(stream)) => {
                    let handle = daemon.streams().open();
                    let accepted = json!({ "stream": handle.id, "peer": stream.peer, "port": port, "remote_port": stream.remote_port });
                    write_frame(&mut client, &Response::success(accepted)).await?;
                    serve_stream(client, stream, handle, attach).await;
                    return Ok(());
                }
                Ok(None) => {
                    let e = AppError::NotListening(port);
                    write_frame(&mut client, &e.failure()).await?
                }
                Err(e) => write_frame(&mut client, &e.failure()).await?,
            },
        }
    }
}

/// The stream ends in the daemon: with `attach`, between the overlay stream and the socket
/// the client hands over; otherwise between the overlay stream and the API connection.
async fn serve_stream<S: ApiConnection>(
    mut client: S,
    stream: OverlayStream,
    mut handle: StreamHandle,
    attach: bool,
) {
    if !attach {
        let reset = async {
            match (&mut handle.abort).await {
                Ok(code) => Outcome::Reset { code },
                Err(_) => std::future::pending().await,
            }
        };
        let outcome = splice(client, stream, reset).await;
        let _ = handle.done.send(Some(outcome));
        return;
    }
    let outcome = splice_attached(&mut client, stream, &mut handle.abort).await;
    // Ended: a `reset` from now on finds nothing to reset.
    handle.abort.close();
    let _ = handle.done.send(Some(outcome.clone()));
    let _ = write_frame(&mut client, &Response::success(json!(outcome))).await;
}

/// Waits for the client's socket, then copies between it and the stream.
async fn splice_attached<S: ApiConnection>(
    client: &mut S,
    stream: OverlayStream,
    abort: &mut oneshot::Receiver<u32>,
) -> Outcome {
    let received = tokio::select! {
        received = tokio::time::timeout(REQUEST_TIMEOUT, client.receive_socket()) => received,
        Ok(code) = &mut *abort => return conclude(stream, Outcome::Reset { code }),
    };
    let mut socket = match received {
        Ok(Ok(Some(socket))) => socket,
        failed => {
            let detail = match failed {
                Err(_) => format!("no socket handed over within {REQUEST_TIMEOUT:?}"),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "the client left before handing over a socket".to_string(),
            };
            return conclude(stream, Outcome::Broken { detail });
        }
    };
    // The stream lives while its client does: stopping `ternctl forward` ends what it forwards.
    let stop = async {
        let mut byte = [0u8; 1];
        tokio::select! {
            Ok(code) = &mut *abort => Outcome::Reset { code },
            _ = client.read(&mut byte) => Outcome::Broken {
                detail: "the client that attached the socket left".to_string(),
            },
        }
    };
    let outcome = splice(&mut socket, stream, stop).await;
    if outcome != Outcome::Clean {
        socket.reset_on_close();
    }
    outcome
}

/// A stream that did not end cleanly is reset both ways, so the peer sees it broken.
fn conclude(mut stream: OverlayStream, outcome: Outcome) -> Outcome {
    let code = match outcome {
        Outcome::Clean => return outcome,
        Outcome::Broken { .. } => STREAM_BROKEN,
        Outcome::Reset { code } => code,
    };
    let _ = stream.send.reset(code.into());
    let _ = stream.recv.stop(code.into());
    outcome
}

/// Copies both ways until both sides have ended; each side's EOF becomes the other's FIN.
/// A failure, or `stop` (a `reset` request, say), resets the QUIC stream so the peer sees a
/// broken stream rather than a clean end.
async fn splice(
    local: impl AsyncRead + AsyncWrite + Unpin,
    mut stream: OverlayStream,
    stop: impl Future<Output = Outcome>,
) -> Outcome {
    let (mut from_client, mut to_client) = tokio::io::split(local);
    let copied = {
        let (send, recv) = (&mut stream.send, &mut stream.recv);
        // The client's bytes go to quinn as chunks of one region it holds until they are
        // acknowledged (no copy). Regions and the download buffer start small and grow only
        // while reads fill them, so an idle or chatty stream keeps little memory.
        let upload = async {
            let (mut region, mut size) = (bytes::BytesMut::new(), SPLICE_START);
            loop {
                if region.capacity() < size / 4 {
                    region.reserve(size);
                }
                let room = region.capacity();
                if from_client.read_buf(&mut region).await? == 0 {
                    return send.finish().map_err(std::io::Error::other);
                }
                if region.len() == room {
                    size = (size * 2).min(SPLICE_REGION);
                }
                send.write_chunk(region.split().freeze()).await?;
            }
        };
        // quinn's packets are gathered into one buffer: one write to the client for many.
        let download = async {
            let mut buffer = vec![0u8; SPLICE_START];
            while let Some(n) = recv.read(&mut buffer).await? {
                to_client.write_all(&buffer[..n]).await?;
                if n == buffer.len() && n < SPLICE_BUFFER {
                    buffer.resize(n * 2, 0);
                }
            }
            to_client.shutdown().await
        };
        tokio::select! {
            copied = async { tokio::try_join!(upload, download).map(|_| ()) } => copied,
            stopped = stop => return conclude(stream, stopped),
        }
    };
    match copied {
        Ok(()) => Outcome::Clean,
        Err(e) => conclude(
            stream,
            Outcome::Broken {
                detail: e.to_string(),
            },
        ),
    }
}
