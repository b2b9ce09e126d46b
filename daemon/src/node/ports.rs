//! Virtual ports: overlay streams and datagrams, listeners and who may use them, and the
//! tasks that serve a connection's incoming streams and datagrams.

use super::*;

/// One end of an overlay stream: bytes in order, both directions, like a TCP connection.
#[derive(Debug)]
pub struct OverlayStream {
    pub peer: Address,
    pub local_port: u16,
    pub remote_port: u16,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl AsyncRead for OverlayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for OverlayStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send)
            .poll_write(cx, buf)
            .map_err(Into::into)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

/// An overlay datagram received on a listened port.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub from: Address,
    pub source_port: u16,
    pub payload: Bytes,
}

/// Streams and datagrams arriving on one virtual port; the port is freed when this drops.
pub struct Listener {
    port: u16,
    streams: mpsc::Receiver<OverlayStream>,
    datagrams: Option<mpsc::Receiver<Datagram>>,
    shared: Weak<Shared>,
}

impl Listener {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next accepted stream; `None` once the node has shut down.
    pub async fn accept(&mut self) -> Option<OverlayStream> {
        self.streams.recv().await
    }

    /// The next datagram; `None` once the node has shut down or the queue was taken.
    pub async fn recv_datagram(&mut self) -> Option<Datagram> {
        self.datagrams.as_mut()?.recv().await
    }

    /// Hands the port's datagram queue to another owner, so that streams and datagrams can be
    /// awaited by different tasks.
    pub fn take_datagrams(&mut self) -> Option<mpsc::Receiver<Datagram>> {
        self.datagrams.take()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.state().ports.remove(&self.port);
        }
    }
}

/// Who may open streams to (and send datagrams to) a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any verified peer.
    Open,
    /// Only peers on the node's trust list.
    Trusted,
}

/// The identity hello is the only unidirectional stream; any later one is stopped at once so
/// its data is never buffered.
pub(super) async fn refuse_uni_streams(connection: quinn::Connection) {
    while let Ok(mut uni) = connection.accept_uni().await {
        let _ = uni.stop(0u32.into());
    }
}

/// How often a connection's path pin is moved to where quinn now sends (a migrated peer).
const PIN_CHECK: Duration = Duration::from_secs(1);

/// Serves a connection's incoming streams until it closes, keeping its path pinned (also
/// after the peer migrated to a new path), then forgets it.
///
/// The pin marks a path as the peer's proven one: relay frames are taken from it and, serving
/// as a relay, the node forwards the peer's frames to it. quinn moves to a new source at its
/// first packet, before validating it, so a spoofed source would be believed: the pin moves
/// only once the peer answers a sealed ping on the new path.
pub(super) async fn serve_streams(
    connection: quinn::Connection,
    peer: Address,
    shared: Weak<Shared>,
) {
    // `register` pinned the path the connection was verified on.
    let mut pinned = connection.remote_address();
    let mut pin_check = tokio::time::interval(PIN_CHECK);
    let mut validating = tokio::task::JoinSet::new();
    let reason = loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => match shared.upgrade() {
                    Some(node) => node.tasks.spawn(answer_stream(send, recv, peer, shared.clone())),
                    None => break quinn::ConnectionError::LocallyClosed,
                },
                Err(e) => break e,
            },
            _ = pin_check.tick(), if validating.is_empty() => {
                // Ask quinn first, then take the path lock (never both at once).
                let now_at = connection.remote_address();
                if now_at != pinned && let Some(shared) = shared.upgrade() {
                    let route = shared.socket.paths().route_for(&now_at);
                    // A slow path (a loaded mobile link) gets a few round trips to answer.
                    let patience = (connection.rtt() * 3).max(PIN_CHECK);
                    let node = Node { shared };
                    validating.spawn(async move {
                        let valid = match route {
                            Some(Route::Direct(real)) => node.check_path(peer, real, patience).await,
                            Some(Route::Relay { .. }) => true,
                            None => false,
                        };
                        (now_at, valid)
                    });
                }
            }
            Some(Ok((now_at, valid))) = validating.join_next() => {
                if valid && connection.remote_address() == now_at && let Some(shared) = shared.upgrade() {
                    let mut paths = shared.socket.paths();
                    paths.pin(now_at);
                    paths.unpin(pinned);
                    pinned = now_at;
                }
            }
        }
    };
    tracing::debug!(%peer, %reason, "connection closed");
    let Some(shared) = shared.upgrade() else {
        return;
    };
    shared.socket.paths().unpin(pinned);
    let mut state = shared.state();
    let id = connection.stable_id();
    if let Some(kept) = state.connections.get_mut(&peer) {
        kept.retain(|c| c.stable_id() != id && c.close_reason().is_none());
    }
    let survivor = state
        .connections
        .get(&peer)
        .and_then(|kept| kept.last().cloned());
    if survivor.is_none() {
        state.connections.remove(&peer);
    }
    let carried_new_streams = state
        .peers
        .get(&peer)
        .is_some_and(|p| p.connection.stable_id() == id);
    if carried_new_streams {
        match survivor {
            // Another verified connection to the peer is still open: it carries them now.
            Some(connection) => {
                let since = shared.env.wall_clock();
                state.peers.insert(peer, Peer { connection, since });
            }
            None => {
                state.peers.remove(&peer);
            }
        }
    }
}

/// Reads a stream's preamble and hands the stream to its port's listener, or refuses it.
async fn answer_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: Address,
    shared: Weak<Shared>,
) {
    let Some(timeout) = shared.upgrade().map(|s| s.config.preamble_timeout) else {
        return;
    };
    let mut raw = [0u8; PREAMBLE_LEN];
    let preamble = match tokio::time::timeout(timeout, recv.read_exact(&mut raw)).await {
        Ok(Ok(())) => Preamble::decode(&raw),
        // A peer that never finishes its preamble only costs this task until the timeout.
        _ => return,
    };
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let preamble = match preamble {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "bad stream preamble");
            return refuse(send, recv, StreamStatus::BadPreamble).await;
        }
    };
    let admitted = shared
        .state()
        .admit(preamble.destination_port, peer, |p| &p.streams);
    drop(shared);
    let sender = match admitted {
        Ok(sender) => sender,
        Err(status) => {
            tracing::debug!(%peer, port = preamble.destination_port, ?status, "stream refused");
            return refuse(send, recv, status).await;
        }
    };
    let Ok(permit) = sender.try_reserve() else {
        return refuse(send, recv, StreamStatus::Busy).await;
    };
    // The answer goes out before the application can write anything after it.
    if send
        .write_all(&[StreamStatus::Accepted as u8])
        .await
        .is_err()
    {
        return;
    }
    permit.send(OverlayStream {
        peer,
        local_port: preamble.destination_port,
        remote_port: preamble.source_port,
        send,
        recv,
    });
}

pub(super) async fn refuse(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    status: StreamStatus,
) {
    let _ = recv.stop(0u32.into());
    if send.write_all(&[status as u8]).await.is_ok() {
        let _ = send.finish();
        // Let the answer reach the peer before the stream is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

pub(super) async fn serve_datagrams(
    connection: quinn::Connection,
    peer: Address,
    shared: Weak<Shared>,
) {
    while let Ok(bytes) = connection.read_datagram().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Ok((port, source_port, _)) = decode_datagram(&bytes) else {
            continue;
        };
        let admitted = shared.state().admit(port, peer, |p| &p.datagrams);
        if let Ok(sender) = admitted {
            // Datagrams are unreliable by contract: a full queue drops the newest.
            let _ = sender.try_send(Datagram {
                from: peer,
                source_port,
                payload: bytes.slice(DATAGRAM_HEADER_LEN..),
            });
        }
    }
}

impl Node {
    /// Replaces the set of peers allowed to reach [`Access::Trusted`] ports; applies at once.
    pub fn set_trusted(&self, trusted: impl IntoIterator<Item = Address>) {
        self.shared.state().trusted = trusted.into_iter().collect();
    }

    /// Opens a stream to `port` on a connected peer and waits for its answer.
    pub async fn open_stream(&self, peer: Address, port: u16) -> Result<OverlayStream, DialError> {
        let (connection, local_port) = {
            let mut state = self.shared.state();
            let connection = state
                .live_connection(peer)
                .ok_or(DialError::NotConnected(peer))?;
            (connection, state.ephemeral_port())
        };
        let lost = |e: &dyn std::fmt::Display| DialError::ConnectionLost {
            peer,
            reason: e.to_string(),
        };
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
        let preamble = Preamble {
            destination_port: port,
            source_port: local_port,
        };
        send.write_all(&preamble.encode())
            .await
            .map_err(|e| lost(&e))?;
        let timeout = self.shared.config.preamble_timeout;
        let mut answer = [0u8; 1];
        tokio::time::timeout(timeout, recv.read_exact(&mut answer))
            .await
            .map_err(|_| DialError::NoAnswer {
                peer,
                port,
                timeout,
            })?
            .map_err(|e| lost(&e))?;
        match StreamStatus::from_byte(answer[0]) {
            Ok(StreamStatus::Accepted) => Ok(OverlayStream {
                peer,
                local_port,
                remote_port: port,
                send,
                recv,
            }),
            Ok(status) => Err(DialError::Refused { peer, port, status }),
            Err(e) => Err(lost(&e)),
        }
    }

    /// Starts accepting streams and datagrams on a virtual port.
    pub fn listen(&self, port: u16, access: Access) -> Result<Listener, ListenError> {
        let mut state = self.shared.state();
        if state.ports.contains_key(&port) {
            return Err(ListenError::InUse(port));
        }
        let (stream_tx, streams) = mpsc::channel(self.shared.config.stream_backlog.max(1));
        let (datagram_tx, datagrams) = mpsc::channel(self.shared.config.datagram_backlog.max(1));
        state.ports.insert(
            port,
            PortSenders {
                streams: stream_tx,
                datagrams: datagram_tx,
                access,
            },
        );
        Ok(Listener {
            port,
            streams,
            datagrams: Some(datagrams),
            shared: Arc::downgrade(&self.shared),
        })
    }

    /// Sends one unreliable datagram to `port` on a connected peer.
    pub fn send_datagram(
        &self,
        peer: Address,
        port: u16,
        source_port: u16,
        payload: &[u8],
    ) -> Result<(), DatagramError> {
        let connection = self
            .shared
            .state()
            .live_connection(peer)
            .ok_or(DatagramError::NotConnected(peer))?;
        let mut datagram = BytesMut::with_capacity(DATAGRAM_HEADER_LEN + payload.len());
        datagram.extend_from_slice(&encode_datagram_header(port, source_port));
        datagram.extend_from_slice(payload);
        connection
            .send_datagram(datagram.freeze())
            .map_err(|e| DatagramError::Send {
                peer,
                reason: e.to_string(),
            })
    }

    /// One message on a new stream to `port` on `peer`, then the whole answer (at most
    /// `max_answer` bytes): the shape of tern's own small protocols (rendezvous, trust
    /// requests).
    pub async fn exchange(
        &self,
        peer: Address,
        port: u16,
        message: &[u8],
        max_answer: usize,
    ) -> Result<Vec<u8>, ExchangeError> {
        let stream_err = |e: &dyn std::fmt::Display| ExchangeError::Stream(e.to_string());
        let mut stream = self.open_stream(peer, port).await?;
        stream
            .send
            .write_all(message)
            .await
            .map_err(|e| stream_err(&e))?;
        stream.send.finish().map_err(|e| stream_err(&e))?;
        stream
            .recv
            .read_to_end(max_answer)
            .await
            .map_err(|e| stream_err(&e))
    }
}
