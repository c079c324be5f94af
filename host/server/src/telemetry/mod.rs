//! Telemetry: intent versus action, as OpenTelemetry traces, metrics and a local audit log.
//!
//! Spans and metrics observe the pipeline without steering it. The audit log is different: it
//! is the door's record stage ([`Telemetry::record_allowed`], called by the door through the
//! pipeline's stages), and a decision it cannot record does not take effect (`[audit]
//! fail_closed`).
//!
//! * [`calls`]: call spans, decision attributes, call metrics, audit lines of calls;
//! * [`issuance`]: issuance spans and audit lines;
//! * [`audit`], [`otel`], [`usage`], `summary`: the log file, the exporters, the usage tally and
//!   the task summary span.
//!
//! * Every `tools/call` is a SERVER span `tools/call {tool}` following the MCP semantic
//!   conventions, plus `capgate.*` attributes; an allowed call has an `execute_tool {tool}`
//!   child, a denied one has none and ends with status ERROR.
//! * A task's trace id and root span id are fixed at issuance; a call without caller trace
//!   context is a child of the task's root span, one with caller context is the caller's child
//!   and links to the task span. The task span itself is exported when the task ends (once
//!   its usage counters have settled, see `summary.rs`), with its real start time and the
//!   intent / grant / action summary.
//! * Every decision is appended to the audit log before it takes effect.

pub mod audit;
mod calls;
pub(crate) use calls::stateless_protocol;
mod issuance;
pub mod otel;
mod summary;
pub mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use capgate_authz::{CallEnv, Transport, VerifiedToken};
use capgate_core::task::TaskRecord;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::ledger::TaskObserver;
use crate::store::TaskStore;

pub use audit::{AuditLog, AuditRecord};
pub use otel::Providers;
use summary::TaskSpans;
use usage::UsageRecorder;

/// The MCP conventions' bucket boundaries for operation durations, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// `error.type` of a call answered with an `isError` result (MCP semantic conventions).
const TOOL_ERROR: &str = "tool_error";

/// What the pipeline tells telemetry about a call as it starts.
pub(crate) struct CallRecord<'a> {
    pub(crate) tool: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) protocol: Option<&'a str>,
    pub(crate) session: Option<&'a str>,
    pub(crate) transport: Transport,
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) tool_call_id: Option<&'a str>,
    pub(crate) task: Option<&'a TaskRecord>,
    pub(crate) token: &'a VerifiedToken,
    pub(crate) nested: bool,
}

/// How a call ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The tool ran and succeeded.
    Ok,
    /// The tool ran and returned `isError`.
    ToolError,
    /// The guard refused.
    Denied,
    /// Invalid parameters.
    Invalid,
}

struct Metrics {
    duration: Histogram<f64>,
    decisions: Counter<u64>,
    guard: Histogram<f64>,
}

/// The telemetry of one capgate process.
pub struct Telemetry {
    audit: AuditLog,
    fail_closed: bool,
    record_payloads: bool,
    usage: Arc<UsageRecorder>,
    /// Builds task spans once a task's usage has settled; `None` when no spans are exported.
    task_spans: Option<TaskSpans>,
    providers: Providers,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    metrics: Metrics,
}

/// Settings of [`Telemetry`].
pub struct TelemetrySettings {
    /// Deny calls whose decision cannot be audited.
    pub fail_closed: bool,
    /// Put tool arguments and results on spans.
    pub record_payloads: bool,
}

impl Telemetry {
    /// Telemetry writing to `audit`, exporting through `providers`.
    pub fn new(
        audit: AuditLog,
        store: Arc<dyn TaskStore>,
        providers: Providers,
        settings: TelemetrySettings,
    ) -> Self {
        let meter = match &providers.meter {
            Some(m) => opentelemetry::metrics::MeterProvider::meter(m, "capgate"),
            None => opentelemetry::global::meter("capgate"),
        };
        let metrics = Metrics {
            duration: meter
                .f64_histogram("mcp.server.operation.duration")
                .with_unit("s")
                .with_description("Duration of MCP requests as seen by the server")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            decisions: meter
                .u64_counter("capgate.guard.decisions")
                .with_description("Guard decisions by decision and tool")
                .build(),
            guard: meter
                .f64_histogram("capgate.guard.duration")
                .with_unit("s")
                .with_description("Time the guard took to decide a call")
                .with_boundaries(vec![
                    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01,
                    0.05,
                ])
                .build(),
        };
        let tracer = providers.tracer.as_ref().map(|p| p.tracer("capgate"));
        let usage = Arc::new(UsageRecorder::start(Arc::clone(&store)));
        let task_spans = TaskSpans::start(tracer.clone(), store, Arc::clone(&usage));
        Telemetry {
            audit,
            fail_closed: settings.fail_closed,
            record_payloads: settings.record_payloads,
            usage,
            task_spans,
            providers,
            tracer,
            metrics,
        }
    }

    /// The providers, for installing the tracing layer and for shutdown.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Writes pending usage, builds the spans of tasks that have ended (waiting for their usage
    /// to settle, well under a second) and exports pending spans and metrics. Blocks.
    pub fn flush(&self) {
        if let Some(t) = &self.task_spans {
            t.flush();
        }
        self.usage.flush();
        self.providers.flush();
    }

    /// Waits until every counted call is in the store.
    pub fn flush_usage(&self) {
        self.usage.flush();
    }

    /// Flushes and stops everything. Blocks; call it off the async threads. Task spans come
    /// first (they read usage and export through the providers), the providers last.
    pub fn shutdown(&self) {
        if let Some(t) = &self.task_spans {
            t.stop();
        }
        self.usage.stop();
        // The last lines of this run get signed: only a crash leaves an unsigned tail.
        if let Err(e) = self.audit.seal() {
            tracing::error!(error = %capgate_core::error::chain(&e), "cannot write the audit log's closing checkpoint");
        }
        self.providers.shutdown();
    }

    pub(crate) fn ids_of_current(
        &self,
        fallback_trace: Option<&str>,
    ) -> (Option<String>, Option<String>) {
        let cx = tracing::Span::current().context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            (
                Some(sc.trace_id().to_string()),
                Some(sc.span_id().to_string()),
            )
        } else {
            // No span is exported: the line still gets an id of its own, so that a decision
            // can be named (and told apart from its neighbours) without a tracing backend.
            (
                fallback_trace.map(str::to_owned),
                Some(format!("{:016x}", local_span_id())),
            )
        }
    }

    pub(crate) fn record_duration(
        &self,
        tool: &str,
        env: &CallEnv,
        error: Option<&str>,
        started: Instant,
    ) {
        let mut attrs = vec![
            KeyValue::new("mcp.method.name", "tools/call"),
            KeyValue::new("gen_ai.tool.name", tool.to_owned()),
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("network.transport", env.transport.network()),
        ];
        if let Some(e) = error {
            attrs.push(KeyValue::new("error.type", e.to_owned()));
        }
        self.metrics
            .duration
            .record(started.elapsed().as_secs_f64(), &attrs);
    }

    pub(crate) fn record_decision(&self, tool: &str, decision: &'static str, took: Duration) {
        let attrs = [
            KeyValue::new("capgate.decision", decision),
            KeyValue::new("gen_ai.tool.name", tool.to_owned()),
        ];
        self.metrics.decisions.add(1, &attrs);
        self.metrics.guard.record(took.as_secs_f64(), &attrs);
    }
}

impl TaskObserver for Telemetry {
    fn task_ended(&self, task: &TaskRecord) {
        // One `end` line per task: only the process whose store write ended it is told.
        let reason = task.end_reason.map(|r| r.as_str()).unwrap_or("completed");
        let mut rec = AuditRecord::now(
            "end",
            &task
                .grant
                .tools
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
            reason,
        );
        rec.task = Some(task.id.clone());
        rec.agent = Some(task.agent.clone());
        rec.tenant = Some(task.tenant.clone());
        rec.reason = Some(task.revoked_by.clone().unwrap_or_else(|| reason.to_owned()));
        rec.trace_id = Some(task.trace_id.clone());
        rec.span_id = Some(task.span_id.clone());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", task = %task.id, error = %capgate_core::error::chain(&e), "audit record of a task's end lost");
        }
        if let Some(t) = &self.task_spans {
            t.ended(task);
        }
    }
}

pub(crate) fn pairs(map: &std::collections::BTreeMap<String, Vec<String>>) -> Vec<String> {
    map.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| format!("{t}={p}")))
        .collect()
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// A span id for a decision no exported span names: distinct within the process (a random
/// start, then an odd-multiplier step, a bijection of the 64-bit counter) and never zero,
/// without a `getrandom` call per decision.
fn local_span_id() -> u64 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let b = uuid::Uuid::new_v4().into_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    });
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = start.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if id != 0 {
            return id;
        }
    }
}

/// The task's root span, as a remote parent.
pub(crate) fn task_span_context(task: &TaskRecord) -> Option<SpanContext> {
    let trace = TraceId::from_hex(&task.trace_id).ok()?;
    let span = SpanId::from_hex(&task.span_id).ok()?;
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}
