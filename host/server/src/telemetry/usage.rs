//! Per-task usage counters, written to the store off the call path.
//!
//! A call adds to an in-memory tally under a mutex — no channel message, no thread wake-up, no
//! I/O — and one thread writes the tally to the store every [`BATCH_DELAY`]. Invariant:
//! [`UsageRecorder::flush`] returns only once every call counted before it is in the store, so a
//! task's summary at its end counts every call this process made. (After a `kill -9`, the last
//! batch may be missing from the counters; the audit log, written before each call runs, still
//! has every call.)

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{TaskStore, UsageDelta};

/// Longest a counted call waits before it is written to the store.
pub(crate) const BATCH_DELAY: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Tally {
    counts: HashMap<(String, String), UsageDelta>,
    /// Flush requests made, and the last one whose calls are in the store.
    requested: u64,
    written: u64,
    stop: bool,
}

struct Shared {
    tally: Mutex<Tally>,
    /// Wakes the writer early (a flush or a stop).
    wake: Condvar,
    /// Tells flushers their calls are written.
    written: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tallies usage and writes it to the store in batches.
pub struct UsageRecorder {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl UsageRecorder {
    /// Starts the writer thread.
    pub fn start(store: Arc<dyn TaskStore>) -> Self {
        let shared = Arc::new(Shared {
            tally: Mutex::new(Tally::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("capgate-usage".into())
            .spawn(move || writer(store, s))
            .ok();
        UsageRecorder {
            shared,
            thread: Mutex::new(thread),
        }
    }

    /// Counts one call.
    pub fn record(&self, task_id: &str, tool: &str, allowed: bool, out_of_intent: bool) {
        let mut tally = self.shared.lock();
        let entry = tally
            .counts
            .entry((task_id.to_owned(), tool.to_owned()))
            .or_insert_with(|| UsageDelta::new(task_id, tool));
        entry.add_call(allowed, out_of_intent);
    }

    /// Waits until every call counted so far is in the store.
    pub fn flush(&self) {
        let mut tally = self.shared.lock();
        if tally.stop {
            return;
        }
        tally.requested += 1;
        let want = tally.requested;
        self.shared.wake.notify_one();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tally.written < want && !tally.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(target: "capgate", "task usage counters were not written within 10 s");
                return;
            }
            tally = self
                .shared
                .written
                .wait_timeout(tally, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Writes what is pending and stops the writer.
    pub fn stop(&self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn writer(store: Arc<dyn TaskStore>, shared: Arc<Shared>) {
    // After a failed write the store is asked again even with nothing new: a store that keeps
    // failed batches (the PostgreSQL one does) sends them then.
    let mut unconfirmed = false;
    loop {
        let (batch, served, stop) = {
            let mut tally = shared.lock();
            if !tally.stop && tally.requested == tally.written {
                tally = shared
                    .wake
                    .wait_timeout(tally, BATCH_DELAY)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let batch: Vec<UsageDelta> = tally.counts.drain().map(|(_, d)| d).collect();
            (batch, tally.requested, tally.stop)
        };
        if !batch.is_empty() || unconfirmed {
            match store.add_usage(&batch) {
                Ok(()) => unconfirmed = false,
                Err(e) => {
                    unconfirmed = true;
                    tracing::warn!(target: "capgate", error = %e, tools = batch.len(), "task usage counters not written yet");
                }
            }
        }
        {
            let mut tally = shared.lock();
            tally.written = tally.written.max(served);
        }
        shared.written.notify_all();
        if stop {
            return;
        }
    }
}
