//! Per-task usage counters, written to the store off the call path.
//!
//! Calls send a small event on a channel; one thread batches them into the store every few
//! hundred milliseconds. Invariant: [`UsageRecorder::flush`] returns only once every event sent
//! before it is in the store, so a task's summary at its end counts every call this process
//! made. (After a `kill -9`, the last batch may be missing from the counters; the audit log,
//! written before each call runs, still has every call.)

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{TaskStore, UsageDelta};

enum Msg {
    Delta(UsageDelta),
    Flush(mpsc::SyncSender<()>),
    Stop,
}

/// Batches usage into the store.
pub struct UsageRecorder {
    tx: Sender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Longest a counted call waits before it is written to the store.
pub(crate) const BATCH_DELAY: Duration = Duration::from_millis(200);
const BATCH_MAX: usize = 512;

impl UsageRecorder {
    /// Starts the writer thread.
    pub fn start(store: Arc<dyn TaskStore>) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("capgate-usage".into())
            .spawn(move || writer(store, rx))
            .ok();
        UsageRecorder {
            tx,
            thread: std::sync::Mutex::new(thread),
        }
    }

    /// Counts one call.
    pub fn record(&self, delta: UsageDelta) {
        let _ = self.tx.send(Msg::Delta(delta));
    }

    /// Waits until everything recorded so far is in the store.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Flushes and stops the writer.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn writer(store: Arc<dyn TaskStore>, rx: Receiver<Msg>) {
    let mut batch: Vec<UsageDelta> = Vec::new();
    let mut oldest: Option<Instant> = None;
    let write = |batch: &mut Vec<UsageDelta>| {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.add_usage(batch) {
            tracing::warn!(target: "capgate", error = %e, calls = batch.len(), "task usage counters not written");
        }
        batch.clear();
    };
    loop {
        let wait = match oldest {
            Some(t) => BATCH_DELAY.saturating_sub(t.elapsed()),
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Delta(d)) => {
                oldest.get_or_insert_with(Instant::now);
                batch.push(d);
                if batch.len() >= BATCH_MAX {
                    write(&mut batch);
                    oldest = None;
                }
            }
            Ok(Msg::Flush(ack)) => {
                write(&mut batch);
                oldest = None;
                let _ = ack.send(());
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                write(&mut batch);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                write(&mut batch);
                oldest = None;
            }
        }
    }
}
