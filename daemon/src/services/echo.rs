//! The built-in echo service on virtual port 7 (`ternctl ping`, `ternctl bench`): open to
//! every peer, so it bounds what a peer can hold there.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::node::{Access, Listener, Node, OverlayStream};

/// Virtual port of the built-in echo service.
pub const ECHO_PORT: u16 = 7;
/// An echo stream that moves nothing for this long is reset: the echo port is open to every
/// peer, so no peer may park streams on it.
const ECHO_IDLE: Duration = Duration::from_secs(30);

/// Serves echo on `node` as one of its tasks.
pub fn start(node: &Node) {
    let listener = node
        .listen(ECHO_PORT, Access::Open)
        .expect("a fresh node has no listener on the echo port");
    node.spawn(serve(node.clone(), listener));
}

async fn serve(node: Node, mut listener: Listener) {
    while let Some(stream) = listener.accept().await {
        node.spawn(echo(stream));
    }
}

async fn echo(mut stream: OverlayStream) {
    // Small: a peer may hold many echo streams open at once.
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let n = match tokio::time::timeout(ECHO_IDLE, stream.recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => {
                let _ = stream.send.shutdown().await;
                return;
            }
            Ok(Err(_)) => return,
            Err(_) => break,
        };
        match tokio::time::timeout(ECHO_IDLE, stream.send.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => break,
        }
    }
    let _ = stream.send.reset(0u32.into());
    let _ = stream.recv.stop(0u32.into());
}
