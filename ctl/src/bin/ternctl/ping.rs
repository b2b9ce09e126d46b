//! `ternctl ping TARGET`: one sealed control round trip, connecting first if needed.

use crate::output::{Failure, Report};
use crate::{check_target, failure};
use tern_ctl::Client;

pub async fn run(client: &Client, target: &str) -> Result<Report, Failure> {
    check_target(target)?;
    let data = client.ping(target).await.map_err(failure)?;
    let text = format!(
        "{target}: rtt {:.3} ms",
        data["rtt_ms"].as_f64().unwrap_or(0.0)
    );
    Ok(Report { data, text })
}
