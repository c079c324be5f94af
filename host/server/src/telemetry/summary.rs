//! Task spans: the intent-versus-action summary of a task, exported once its usage has settled.
//!
//! Usage counters reach the store in batches ([`usage::BATCH_DELAY`]), from every process that
//! serves the task, and the process that ends a task is often not the one that served its calls
//! (`capgate task end` against a running server). So a task span is built on a thread of its
//! own, [`SETTLE`] after the task ended: by then every call allowed before the end has been
//! counted in the store, whichever process made it. Ending a task never waits for this.
//!
//! Invariant: [`TaskSpans::flush`] returns only once every task that ended before it was called
//! has had its span built and handed to the span processor.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{Span as _, SpanId, SpanKind, TraceId, Tracer as _};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SdkTracer;

use capgate_core::task::TaskRecord;
use capgate_core::time::rfc3339;

use super::usage::{self, UsageRecorder};
use super::{otel, pairs, truncate};
use crate::store::TaskStore;

/// How long after a task's end its span waits for other processes' usage batches: twice their
/// batching delay, so a batch that was just about to be written has landed.
pub(crate) const SETTLE: Duration =
    Duration::from_millis(2 * usage::BATCH_DELAY.as_millis() as u64);

enum Msg {
    Ended {
        task: Box<TaskRecord>,
        /// When the task ended, as a span end time.
        at: SystemTime,
        /// When its usage has settled.
        settled: Instant,
    },
    Flush(mpsc::SyncSender<()>),
    Stop,
}

/// The thread that builds task spans.
pub(crate) struct TaskSpans {
    tx: Sender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// What building a task span needs.
struct Builder {
    tracer: SdkTracer,
    store: Arc<dyn TaskStore>,
    usage: Arc<UsageRecorder>,
}

impl TaskSpans {
    /// Starts the thread. `None` without a tracer: with nothing exported there is nothing to
    /// build.
    pub(crate) fn start(
        tracer: Option<SdkTracer>,
        store: Arc<dyn TaskStore>,
        usage: Arc<UsageRecorder>,
    ) -> Option<Self> {
        let builder = Builder {
            tracer: tracer?,
            store,
            usage,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("capgate-task-spans".into())
            .spawn(move || run(builder, rx))
            .ok()?;
        Some(TaskSpans {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// A task has just ended; its span follows once its usage has settled.
    pub(crate) fn ended(&self, task: &TaskRecord) {
        let _ = self.tx.send(Msg::Ended {
            task: Box::new(task.clone()),
            at: SystemTime::now(),
            settled: Instant::now() + SETTLE,
        });
    }

    /// Waits until every task ended so far has its span built (at most [`SETTLE`] plus the
    /// time to read the store).
    pub(crate) fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(SETTLE + Duration::from_secs(10));
        }
    }

    /// Builds the pending spans and stops the thread.
    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn run(builder: Builder, rx: Receiver<Msg>) {
    // Messages are handled in order, and tasks end in order, so waiting for each task's own
    // settling time in turn never delays a later one past its own.
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Ended { task, at, settled } => {
                let wait = settled.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                builder.export(&task, at);
            }
            Msg::Flush(ack) => {
                let _ = ack.send(());
            }
            Msg::Stop => return,
        }
    }
}

impl Builder {
    fn export(&self, task: &TaskRecord, ended: SystemTime) {
        // This process's own calls are counted at once; other processes' have settled.
        self.usage.flush();
        let usage = match self.store.usage(&task.id) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(target: "capgate", task = %task.id, error = %e, "task usage unavailable for its summary span");
                Vec::new()
            }
        };
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(&task.trace_id),
            SpanId::from_hex(&task.span_id),
        ) else {
            tracing::warn!(target: "capgate", task = %task.id, "task has malformed trace ids; no task span");
            return;
        };
        let granted: BTreeSet<&String> = task.grant.tools.keys().collect();
        let used: BTreeSet<&String> = usage
            .iter()
            .filter(|u| u.allowed > 0)
            .map(|u| &u.tool)
            .collect();
        let unused: Vec<String> = granted.difference(&used).map(|s| (*s).clone()).collect();
        let calls: u64 = usage.iter().map(|u| u.calls).sum();
        let denied: u64 = usage.iter().map(|u| u.denied).sum();
        let ooi: u64 = usage.iter().map(|u| u.out_of_intent).sum();
        let list = |v: Vec<String>| {
            Value::Array(
                v.into_iter()
                    .map(StringValue::from)
                    .collect::<Vec<_>>()
                    .into(),
            )
        };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut attrs = vec![
            KeyValue::new("capgate.task.id", task.id.clone()),
            KeyValue::new("capgate.agent.id", task.agent.clone()),
            KeyValue::new("capgate.tenant", task.tenant.clone()),
            KeyValue::new("capgate.intent.purpose", task.intent.purpose.clone()),
            KeyValue::new("capgate.intent.tools", list(task.intent.tools.clone())),
            KeyValue::new(
                "capgate.intent.resources",
                list(pairs(&task.intent.resources)),
            ),
            KeyValue::new(
                "capgate.grant.tools",
                list(task.grant.tools.keys().cloned().collect()),
            ),
            KeyValue::new("capgate.grant.resources", list(pairs(&task.grant.tools))),
            KeyValue::new("capgate.grant.expires_at", rfc3339(task.grant.expires_at)),
            KeyValue::new(
                "capgate.action.tools",
                list(used.iter().map(|s| (*s).clone()).collect()),
            ),
            KeyValue::new("capgate.action.unused_grants", list(unused)),
            KeyValue::new("capgate.action.calls", count(calls)),
            KeyValue::new("capgate.action.denied", count(denied)),
            KeyValue::new("capgate.action.out_of_intent", count(ooi)),
            KeyValue::new(
                "capgate.task.end_reason",
                task.end_reason.map(|r| r.as_str()).unwrap_or("completed"),
            ),
        ];
        if let Some(w) = &task.intent.on_behalf_of {
            attrs.push(KeyValue::new("capgate.intent.on_behalf_of", w.clone()));
        }
        if let Some(a) = &task.intent.approved_by {
            attrs.push(KeyValue::new("capgate.intent.approved_by", a.clone()));
        }
        if let Some(w) = &task.grant.workload {
            attrs.push(KeyValue::new("capgate.workload.issuer", w.issuer.clone()));
            attrs.push(KeyValue::new("capgate.workload.subject", w.subject.clone()));
        }
        if let Some(jkt) = &task.grant.holder {
            attrs.push(KeyValue::new("capgate.task.holder_jkt", jkt.clone()));
        }
        if let Some(by) = &task.revoked_by {
            attrs.push(KeyValue::new("capgate.task.revoked_by", by.clone()));
        }
        if let Some(b) = &task.grant.budget {
            if let Some(n) = b.calls {
                attrs.push(KeyValue::new("capgate.grant.budget.calls", count(n)));
            }
            if let Some(n) = b.per_minute {
                attrs.push(KeyValue::new("capgate.grant.budget.per_minute", count(n)));
            }
        }
        let name = format!("task {}", truncate(&task.intent.purpose, 40));
        let tracer = &self.tracer;
        // The ids every call span was given as parent at issuance; an empty parent context, so
        // the task span is the root of its trace.
        let mut span = otel::with_fixed_ids(trace_id, span_id, || {
            tracer
                .span_builder(name)
                .with_kind(SpanKind::Internal)
                .with_start_time(task.created_at)
                .with_attributes(attrs)
                .start_with_context(tracer, &Context::new())
        });
        // Another process's clock stamped the stored `ended_at`; the moment this process saw the
        // end cannot fall before the task's last call span here.
        let end = task.ended_at.map_or(ended, |stored| stored.max(ended));
        span.end_with_timestamp(end);
    }
}
