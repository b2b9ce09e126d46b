//! Spliced streams by id: how each ended, and a way to end one abnormally from another local
//! API connection. The bytes themselves never pass through here.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

/// Finished streams remembered for `outcome` queries before the oldest are forgotten.
const REMEMBERED: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum Outcome {
    /// Both directions ended with a clean end of stream.
    Clean,
    /// The stream broke: a reset from the peer, or the connection was lost.
    Broken { detail: String },
    /// This side reset it on request, with this code.
    Reset { code: u32 },
}

struct Entry {
    abort: Option<oneshot::Sender<u32>>,
    done: watch::Receiver<Option<Outcome>>,
}

/// What a splice holds for its stream.
pub struct StreamHandle {
    pub id: u64,
    pub abort: oneshot::Receiver<u32>,
    pub done: watch::Sender<Option<Outcome>>,
}

#[derive(Default)]
pub struct StreamTable {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
}

impl StreamTable {
    pub fn open(&mut self) -> StreamHandle {
        self.next_id += 1;
        let (abort_tx, abort) = oneshot::channel();
        let (done, done_rx) = watch::channel(None);
        self.entries.insert(
            self.next_id,
            Entry {
                abort: Some(abort_tx),
                done: done_rx,
            },
        );
        self.forget_oldest_finished();
        StreamHandle {
            id: self.next_id,
            abort,
            done,
        }
    }

    /// Asks a running splice to reset its stream; false if unknown or already ended.
    pub fn reset(&mut self, id: u64, code: u32) -> bool {
        self.entries
            .get_mut(&id)
            .and_then(|e| e.abort.take())
            .is_some_and(|abort| abort.send(code).is_ok())
    }

    pub fn watch(&self, id: u64) -> Option<watch::Receiver<Option<Outcome>>> {
        self.entries.get(&id).map(|e| e.done.clone())
    }

    fn forget_oldest_finished(&mut self) {
        while self.entries.len() > REMEMBERED {
            let finished = self
                .entries
                .iter()
                .find(|(_, e)| e.done.borrow().is_some())
                .map(|(id, _)| *id);
            match finished {
                Some(id) => self.entries.remove(&id),
                None => return,
            };
        }
    }
}

/// Waits up to `limit` for a stream's outcome.
pub async fn wait_outcome(
    mut done: watch::Receiver<Option<Outcome>>,
    limit: Duration,
) -> Option<Outcome> {
    let finished = tokio::time::timeout(limit, done.wait_for(Option::is_some)).await;
    match finished {
        Ok(Ok(outcome)) => outcome.clone(),
        _ => None,
    }
}
