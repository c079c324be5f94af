//! Telemetry: intent versus action, as OpenTelemetry traces, metrics and a local audit log.
//!
//! Observes the pipeline without steering it, with one exception that is the point of an
//! audit log: when a decision cannot be recorded, the call is refused (`[audit] fail_closed`).
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
pub mod otel;
mod summary;
pub mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, StringValue, Value};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::capability::{TokenError, VerifiedToken};
use crate::guard::{Authorized, CallEnv, Denial, Grant};
use crate::issuance::{Channel, Intent, IssuanceError, IssuanceObserver};
use crate::ledger::TaskObserver;
use crate::registry::{CallError, ToolCall};
use crate::store::{TaskRecord, TaskStore};
use crate::tool::{ToolError, ToolOutput};

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
    pub(crate) transport: crate::guard::Transport,
    pub(crate) traceparent: Option<&'a str>,
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
        self.providers.shutdown();
    }

    pub(crate) fn call_span(&self, r: &CallRecord<'_>) -> tracing::Span {
        // Every attribute is set once, through `set_attribute`: a key that is also a `tracing`
        // field would be exported twice (the SDK does not deduplicate), which the OpenTelemetry
        // data model forbids.
        macro_rules! call_span {
            ($($parent:tt)*) => {
                tracing::info_span!(
                    target: "capgate::call",
                    $($parent)*
                    "tools/call",
                    otel.name = %format_args!("tools/call {}", r.tool),
                    otel.kind = "server",
                )
            };
        }
        let span = if r.nested {
            call_span!()
        } else {
            call_span!(parent: None,)
        };
        let task_ctx = r.task.and_then(task_span_context);
        if !r.nested {
            // The parent must be set before the span is first entered (or its context read):
            // tracing-opentelemetry starts the OpenTelemetry span then, and a started span's
            // parent can no longer change.
            let set = match r.traceparent.and_then(parse_traceparent) {
                Some(caller) => {
                    if let Some(t) = task_ctx {
                        span.add_link(t);
                    }
                    span.set_parent(Context::new().with_remote_span_context(caller))
                }
                None => match task_ctx {
                    Some(t) => span.set_parent(Context::new().with_remote_span_context(t)),
                    None => Ok(()),
                },
            };
            if let Err(e) = set {
                // Without the OpenTelemetry layer (no exporter) there is nothing to parent.
                tracing::trace!(target: "capgate", error = %e, "call span parent not set");
            }
        }
        span.set_attribute("gen_ai.tool.name", r.tool.to_owned());
        span.set_attribute("mcp.method.name", "tools/call");
        span.set_attribute("gen_ai.operation.name", "execute_tool");
        span.set_attribute("jsonrpc.request.id", r.request_id.to_owned());
        span.set_attribute("network.transport", r.transport.network());
        if let Some(p) = r.protocol {
            span.set_attribute("mcp.protocol.version", p.to_owned());
        }
        if let Some(s) = r.session {
            span.set_attribute("mcp.session.id", s.to_owned());
        }
        let id = r.token.identity();
        span.set_attribute("capgate.agent.id", id.agent.clone());
        span.set_attribute("capgate.tenant", id.tenant.clone());
        if let Some(t) = r.task {
            span.set_attribute("capgate.task.id", t.id.clone());
        }
        span
    }

    pub(crate) fn execution_span(&self, tool: &str) -> tracing::Span {
        let span = tracing::info_span!(
            target: "capgate::call",
            "execute_tool",
            otel.name = %format_args!("execute_tool {tool}"),
            otel.kind = "internal",
        );
        span.set_attribute("gen_ai.operation.name", "execute_tool");
        span.set_attribute("gen_ai.tool.name", tool.to_owned());
        span
    }

    fn ids_of_current(&self, fallback_trace: Option<&str>) -> (Option<String>, Option<String>) {
        let cx = tracing::Span::current().context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            (
                Some(sc.trace_id().to_string()),
                Some(sc.span_id().to_string()),
            )
        } else {
            (fallback_trace.map(str::to_owned), None)
        }
    }

    fn record_duration(&self, tool: &str, env: &CallEnv, error: Option<&str>, started: Instant) {
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

    fn record_decision(&self, tool: &str, decision: &'static str, took: Duration) {
        let attrs = [
            KeyValue::new("capgate.decision", decision),
            KeyValue::new("gen_ai.tool.name", tool.to_owned()),
        ];
        self.metrics.decisions.add(1, &attrs);
        self.metrics.guard.record(took.as_secs_f64(), &attrs);
    }

    pub(crate) fn call_invalid(
        &self,
        token: &VerifiedToken,
        task: Option<&TaskRecord>,
        tool: &str,
        error: &CallError,
        env: &CallEnv,
        started: Instant,
    ) {
        let span = tracing::Span::current();
        span.set_attribute("error.type", "-32602");
        span.set_attribute("capgate.decision", "deny");
        span.set_attribute("capgate.deny.reason", "invalid_params");
        span.set_status(Status::error(error.to_string()));
        let (trace_id, span_id) = self.ids_of_current(task.map(|t| t.trace_id.as_str()));
        let mut rec = AuditRecord::now("call", tool, "invalid");
        rec.task = task.map(|t| t.id.clone());
        rec.agent = Some(token.identity().agent.clone());
        rec.tenant = Some(token.identity().tenant.clone());
        rec.reason = Some(error.to_string());
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(env.transport.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %e, "audit record lost");
        }
        self.record_duration(tool, env, Some("-32602"), started);
    }

    /// The guard allowed: records the decision. `Err` when it cannot be recorded and the audit
    /// log is fail-closed; the call must then not run, and the caller reports the returned
    /// denial through [`Telemetry::call_denied`], which writes the span's decision attributes.
    pub(crate) fn call_allowed(
        &self,
        call: &Authorized<ToolCall>,
        env: &CallEnv,
        took: Duration,
    ) -> Result<(), Box<Denial>> {
        let grant = call.grant();
        let c = call.get();
        let tool = c.spec().name.as_str();
        let resource = c.resource().as_str();
        let span = tracing::Span::current();
        let in_intent = grant.task.declares(tool, resource);
        let (trace_id, span_id) = self.ids_of_current(Some(&grant.task.trace_id));
        let mut rec = AuditRecord::now("call", tool, "allow");
        rec.task = Some(grant.task.id.clone());
        rec.agent = Some(grant.task.agent.clone());
        rec.tenant = Some(grant.task.tenant.clone());
        rec.resource = Some(resource.to_owned());
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(env.transport.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %e, "audit record lost");
            if self.fail_closed {
                return Err(Box::new(Denial {
                    reason: "audit_unavailable".into(),
                    message: format!(
                        "the audit log cannot be written ({e}); calls are refused until it can ([audit] fail_closed)"
                    ),
                    failed_checks: Vec::new(),
                    tool: tool.to_owned(),
                    resource: resource.to_owned(),
                    task: Some(Arc::clone(&grant.task)),
                }));
            }
        }
        span.set_attribute("capgate.decision", "allow");
        span.set_attribute("capgate.resource", resource.to_owned());
        span.set_attribute("capgate.intent.match", in_intent);
        span.set_attribute("capgate.decision.cached", grant.cached);
        if self.record_payloads {
            span.set_attribute(
                "gen_ai.tool.call.arguments",
                serde_json::Value::Object(c.args().clone()).to_string(),
            );
        }
        self.record_decision(tool, "allow", took);
        self.usage.record(&grant.task.id, tool, true, !in_intent);
        Ok(())
    }

    pub(crate) fn call_denied(
        &self,
        token: &VerifiedToken,
        denial: &Denial,
        env: &CallEnv,
        took: Duration,
        started: Instant,
    ) {
        let span = tracing::Span::current();
        let in_intent = denial
            .task
            .as_ref()
            .is_some_and(|t| t.declares(&denial.tool, &denial.resource));
        span.set_attribute("capgate.decision", "deny");
        span.set_attribute("capgate.deny.reason", denial.reason.clone());
        span.set_attribute("capgate.resource", denial.resource.clone());
        span.set_attribute("capgate.intent.match", in_intent);
        // A denial is answered with an `isError` result, which the MCP conventions type as
        // `tool_error`; `capgate.decision` tells it apart from a tool that ran and failed.
        span.set_attribute("error.type", TOOL_ERROR);
        span.set_status(Status::error(denial.message.clone()));
        let (trace_id, span_id) =
            self.ids_of_current(denial.task.as_ref().map(|t| t.trace_id.as_str()));
        let mut rec = AuditRecord::now("call", &denial.tool, "deny");
        rec.task = denial.task.as_ref().map(|t| t.id.clone());
        rec.agent = Some(token.identity().agent.clone());
        rec.tenant = Some(token.identity().tenant.clone());
        rec.resource = Some(denial.resource.clone());
        rec.reason = Some(format!("{}: {}", denial.reason, denial.message));
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(env.transport.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %e, "audit record lost");
        }
        if took > Duration::ZERO {
            self.record_decision(&denial.tool, "deny", took);
        }
        if let Some(task) = &denial.task {
            self.usage.record(&task.id, &denial.tool, false, !in_intent);
        }
        self.record_duration(&denial.tool, env, Some(TOOL_ERROR), started);
    }

    pub(crate) fn call_finished(
        &self,
        grant: &Grant,
        tool: &str,
        result: &Result<ToolOutput, ToolError>,
        exec_span: &tracing::Span,
        env: &CallEnv,
        started: Instant,
    ) {
        let span = tracing::Span::current();
        let error = match result {
            Ok(out) => {
                if self.record_payloads {
                    let text: Vec<String> = out
                        .content
                        .iter()
                        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                        .collect();
                    span.set_attribute("gen_ai.tool.call.result", text.join("\n"));
                }
                None
            }
            Err(e) => {
                span.set_attribute("error.type", TOOL_ERROR);
                span.set_status(Status::error(e.to_string()));
                exec_span.set_attribute("error.type", TOOL_ERROR);
                exec_span.set_status(Status::error(e.to_string()));
                Some(TOOL_ERROR)
            }
        };
        let _ = grant;
        self.record_duration(tool, env, error, started);
    }

    /// A stdio call whose token could not be used at all.
    pub(crate) fn token_refused(&self, tool: &str, error: &TokenError, env: &CallEnv) {
        let span = tracing::info_span!(
            target: "capgate::call",
            parent: None,
            "tools/call",
            otel.name = %format_args!("tools/call {tool}"),
            otel.kind = "server",
        );
        span.set_attribute("mcp.method.name", "tools/call");
        span.set_attribute("gen_ai.tool.name", tool.to_owned());
        span.set_attribute("gen_ai.operation.name", "execute_tool");
        span.set_attribute("network.transport", env.transport.network());
        span.set_attribute("capgate.decision", "deny");
        span.set_attribute("capgate.deny.reason", error.kind());
        span.set_attribute("error.type", TOOL_ERROR);
        span.set_status(Status::error(error.to_string()));
        let _enter = span.enter();
        let (trace_id, span_id) = self.ids_of_current(None);
        let mut rec = AuditRecord::now("call", tool, "deny");
        rec.reason = Some(format!("{}: {error}", error.kind()));
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(env.transport.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %e, "audit record lost");
        }
        self.metrics.decisions.add(
            1,
            &[
                KeyValue::new("capgate.decision", "deny"),
                KeyValue::new("gen_ai.tool.name", tool.to_owned()),
            ],
        );
    }

    fn issuance_span(
        &self,
        token: Option<&VerifiedToken>,
        intent: &Intent,
        task: Option<&TaskRecord>,
        refusal: Option<&IssuanceError>,
        channel: Channel,
    ) -> (Option<String>, Option<String>) {
        let Some(tracer) = &self.tracer else {
            return (task.map(|t| t.trace_id.clone()), None);
        };
        let parent = match task.and_then(task_span_context) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let mut attrs = vec![
            KeyValue::new(
                "capgate.decision",
                if refusal.is_none() { "allow" } else { "deny" },
            ),
            KeyValue::new("capgate.intent.purpose", intent.purpose.clone()),
            KeyValue::new(
                "capgate.intent.tools",
                Value::Array(
                    intent
                        .tools
                        .iter()
                        .cloned()
                        .map(StringValue::from)
                        .collect::<Vec<_>>()
                        .into(),
                ),
            ),
            KeyValue::new("capgate.issuance.channel", channel.as_str()),
        ];
        if let Some(t) = token {
            attrs.push(KeyValue::new(
                "capgate.agent.id",
                t.identity().agent.clone(),
            ));
            attrs.push(KeyValue::new("capgate.tenant", t.identity().tenant.clone()));
        }
        if let Some(t) = task {
            attrs.push(KeyValue::new("capgate.task.id", t.id.clone()));
        }
        if let Some(e) = refusal {
            attrs.push(KeyValue::new("capgate.deny.reason", e.reason()));
            attrs.push(KeyValue::new("capgate.issuance.rule", e.to_string()));
        }
        let mut span = tracer
            .span_builder("task issuance")
            .with_kind(SpanKind::Internal)
            .with_attributes(attrs)
            .start_with_context(tracer, &parent);
        if let Some(e) = refusal {
            span.set_status(Status::error(e.to_string()));
        }
        let sc = span.span_context().clone();
        span.end();
        (
            Some(sc.trace_id().to_string()),
            Some(sc.span_id().to_string()),
        )
    }
}

impl TaskObserver for Telemetry {
    fn task_ended(&self, task: &TaskRecord) {
        if let Some(t) = &self.task_spans {
            t.ended(task);
        }
    }
}

impl IssuanceObserver for Telemetry {
    fn issued(
        &self,
        token: &VerifiedToken,
        task: &TaskRecord,
        channel: Channel,
    ) -> Result<(), String> {
        let (trace_id, span_id) =
            self.issuance_span(Some(token), &task.intent, Some(task), None, channel);
        let mut rec = AuditRecord::now("issuance", &task.intent.tools.join(","), "allow");
        rec.task = Some(task.id.clone());
        rec.agent = Some(task.agent.clone());
        rec.tenant = Some(task.tenant.clone());
        rec.resource = Some(pairs(&task.grant.tools).join(","));
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(channel.as_str().into());
        match self.audit.append(&rec) {
            Ok(()) => Ok(()),
            Err(e) if self.fail_closed => Err(format!("the audit log cannot be written ({e})")),
            Err(e) => {
                tracing::error!(target: "capgate", error = %e, "audit record lost");
                Ok(())
            }
        }
    }

    fn refused(
        &self,
        token: Option<&VerifiedToken>,
        intent: &Intent,
        error: &IssuanceError,
        channel: Channel,
    ) {
        let (trace_id, span_id) = self.issuance_span(token, intent, None, Some(error), channel);
        let mut rec = AuditRecord::now("issuance", &intent.tools.join(","), "deny");
        rec.agent = token.map(|t| t.identity().agent.clone());
        rec.tenant = token.map(|t| t.identity().tenant.clone());
        rec.resource = Some(pairs(&intent.resources).join(","));
        rec.reason = Some(format!("{}: {error}", error.reason()));
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(channel.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %e, "audit record lost");
        }
    }
}

fn pairs(map: &std::collections::BTreeMap<String, Vec<String>>) -> Vec<String> {
    map.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| format!("{t}={p}")))
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// The task's root span, as a remote parent.
fn task_span_context(task: &TaskRecord) -> Option<SpanContext> {
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

/// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`). Anything malformed is `None`:
/// bad trace context is ignored, never an error.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let parts: Vec<&str> = s.trim().split('-').collect();
    if parts.len() < 4 {
        return None;
    }
    let (version, trace, span, flags) = (parts[0], parts[1], parts[2], parts[3]);
    if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if version == "00" && parts.len() != 4 {
        return None;
    }
    let lower_hex = |x: &str, n: usize| {
        x.len() == n
            && x.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_is_strict() {
        let ok =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            ok.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(ok.is_remote());
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
