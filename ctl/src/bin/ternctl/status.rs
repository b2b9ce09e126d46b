//! `ternctl status` and `ternctl peers`.

use crate::failure;
use crate::output::{Failure, Report};
use tern_ctl::Client;

pub async fn status(client: &Client) -> Result<Report, Failure> {
    let data = client.status().await.map_err(failure)?;
    let registered = if data["registered"].as_bool() == Some(true) {
        "yes"
    } else {
        "not yet"
    };
    let rendezvous = match &data["rendezvous"] {
        serde_json::Value::String(s) => s.clone(),
        servers => servers
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|s| s["server"].as_str().unwrap_or("?").to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
    };
    let dht = &data["dht"];
    let dht = match dht {
        serde_json::Value::String(off) => off.clone(),
        serde_json::Value::Null => "?".into(),
        _ => format!(
            "{} nodes in the routing table, last published {}{}{}",
            dht["routing_table"],
            match dht["last_publish"].as_u64() {
                Some(at) => format!("at {at} (Unix s)"),
                None => "never".into(),
            },
            match dht["refused"].as_u64() {
                Some(0) | None => String::new(),
                Some(n) => format!(", {n} values refused"),
            },
            match dht["last_error"].as_str() {
                Some(e) => format!("; last error: {e}"),
                None => String::new(),
            },
        ),
    };
    let nat = &data["nat"];
    let nat = match nat["kind"].as_str() {
        Some("unknown") | None => "unknown (not seen through a rendezvous yet)".to_string(),
        Some(kind) => format!(
            "{kind} (mapping {}, filtering {})",
            nat["mapping"].as_str().unwrap_or("?"),
            nat["filtering"].as_str().unwrap_or("?")
        ),
    };
    let text = format!(
        "address     {}\nlisten      {}\nendpoints   {}\nrendezvous  {rendezvous} (registered: {registered})\nnat         {nat}\ndht         {dht}\npeers       {}",
        data["address"].as_str().unwrap_or("?"),
        data["listen"].as_str().unwrap_or("?"),
        data["endpoints"]
            .as_array()
            .map(|e| e
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default(),
        data["peers"],
    );
    Ok(Report { data, text })
}

pub async fn peers(client: &Client) -> Result<Report, Failure> {
    let data = client.peers().await.map_err(failure)?;
    let mut text = String::from(
        "ADDRESS         PATH    REMOTE                 RTT(ms)  SENT       RECEIVED   SINCE\n",
    );
    for p in data["peers"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "{:<15} {:<7} {:<22} {:>7.2}  {:<10} {:<10} {}\n",
            p["address"].as_str().unwrap_or("?"),
            p["path"].as_str().unwrap_or("?"),
            p["remote"].as_str().unwrap_or("?"),
            p["rtt_ms"].as_f64().unwrap_or(0.0),
            p["bytes_sent"],
            p["bytes_received"],
            p["since"],
        ));
        if let Some(why) = p["relayed_because"].as_str() {
            text.push_str(&format!("                relayed: {why}\n"));
        }
    }
    Ok(Report { data, text })
}
