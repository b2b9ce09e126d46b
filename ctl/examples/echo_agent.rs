//! An agent built on `tern_ctl::Client`: serves a tiny JSON-RPC service on a virtual port of
//! its local node, and can call the same service on another node.
//!
//! ```sh
//! cargo run -p tern-ctl --example echo_agent -- serve 2000            # on node A (trusted peers only)
//! cargo run -p tern-ctl --example echo_agent -- call <A's address> 2000 hello   # on node B
//! ```
//! Set TERN_HOME (or pass nothing for ~/.local/share/tern) to choose the node.

use serde_json::{Value, json};
use tern_ctl::Client;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = Client::for_home(None)?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", port] => serve(&client, port.parse()?).await,
        ["call", target, port, text] => call(&client, target, port.parse()?, text).await,
        _ => {
            eprintln!("usage: echo_agent serve PORT | echo_agent call TARGET PORT TEXT");
            std::process::exit(2);
        }
    }
}

/// Answers each JSON-RPC request line `{"method":"echo","params":{"text":…}}` on its stream.
async fn serve(client: &Client, port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let listener = client.listen(port, false).await?;
    eprintln!("serving echo on port {port}; peers must be trusted (`ternctl trust add`)");
    loop {
        let incoming = listener.accept().await?;
        tokio::spawn(async move {
            let peer = incoming.stream.peer;
            let (read, mut write) = incoming.stream.io.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(request) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let reply = json!({
                    "jsonrpc": "2.0",
                    "id": request["id"],
                    "result": { "text": request["params"]["text"], "from": peer.to_string() },
                });
                if write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

async fn call(
    client: &Client,
    target: &str,
    port: u16,
    text: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let stream = client.dial(target, port).await?;
    let (read, mut write) = stream.io.into_split();
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": text}});
    write.write_all(format!("{request}\n").as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(read).read_line(&mut reply).await?;
    println!("{}", reply.trim_end());
    Ok(())
}
