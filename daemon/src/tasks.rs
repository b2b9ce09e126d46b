//! The tasks one node started. Every task of a node (its daemon's and its local API's too)
//! is in its set, so stopping the node stops them all and frees what they hold — the socket,
//! the TCP listener, the local API — and a node can start again in the same process.

use std::future::Future;
use std::sync::Mutex;

use tokio::task::JoinSet;
use tracing::Instrument;

#[derive(Debug, Default)]
pub struct Tasks {
    set: Mutex<JoinSet<()>>,
    /// Set by `stop`: tasks started after it are dropped, not run.
    stopped: std::sync::atomic::AtomicBool,
}

impl Tasks {
    /// Starts `task` in the span it is started from: a node's tasks (and theirs) carry the
    /// node's span, so with many nodes in one process each log line says whose it is.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut set = self.set.lock().expect("task set lock");
        // Reap finished tasks as new ones come, so the set holds only live ones.
        while set.try_join_next().is_some() {}
        set.spawn(task.in_current_span());
    }

    /// Aborts every task (each is dropped at its next await point); tasks started after this
    /// are dropped, not run.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        self.set.lock().expect("task set lock").abort_all();
    }

    /// Aborts every task and waits until all have ended. Never call it from one of these
    /// tasks: it would wait for itself.
    pub async fn shutdown(&self) {
        self.stop();
        let mut set = std::mem::take(&mut *self.set.lock().expect("task set lock"));
        set.shutdown().await;
    }

    /// Tasks running.
    pub fn len(&self) -> usize {
        let mut set = self.set.lock().expect("task set lock");
        while set.try_join_next().is_some() {}
        set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
