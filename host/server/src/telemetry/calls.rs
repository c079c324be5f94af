//! Call telemetry: the SERVER span of every `tools/call`, its decision attributes, the call
//! metrics, and the audit line of every call decision.
//!
//! Invariant: every attribute is set once, through `set_attribute` (a key that is also a
//! `tracing` field would be exported twice, which the OpenTelemetry data model forbids), and an
//! allowed call's audit line is on disk before the call runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capgate_authz::{CallEnv, CredentialError, Denial, Grant, VerifiedToken};
use capgate_core::door::{CallError, Prepared};
use capgate_core::error::chain;
use capgate_core::task::TaskRecord;
use capgate_core::{ToolError, ToolOutput};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::audit::AuditRecord;
use super::{CallRecord, TOOL_ERROR, Telemetry, task_span_context};

impl Telemetry {
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
        // MCP 2026-07-28 has no sessions: its semantic conventions forbid `mcp.session.id` there.
        if let Some(s) = r.session.filter(|_| !stateless_protocol(r.protocol)) {
            span.set_attribute("mcp.session.id", s.to_owned());
        }
        if let Some(id) = r.tool_call_id {
            span.set_attribute("gen_ai.tool.call.id", id.to_owned());
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

    /// A call that could not be put to the guard: an unknown tool (a protocol error, `-32602`)
    /// or arguments the schema or the resource function refused (a tool execution error).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn call_invalid(
        &self,
        token: &VerifiedToken,
        task: Option<&TaskRecord>,
        tool: &str,
        error: &CallError,
        env: &CallEnv,
        started: Instant,
        rpc_id: Option<&str>,
    ) {
        let (error_type, reason) = match error {
            CallError::UnknownTool { .. } => ("-32602", "unknown_tool"),
            _ => (TOOL_ERROR, "invalid_arguments"),
        };
        let span = tracing::Span::current();
        span.set_attribute("error.type", error_type);
        span.set_attribute("capgate.decision", "deny");
        span.set_attribute("capgate.deny.reason", reason);
        span.set_status(Status::error(error.to_string()));
        let (trace_id, span_id) = self.ids_of_current(task.map(|t| t.trace_id.as_str()));
        let mut rec = AuditRecord::now("call", tool, "invalid");
        rec.task = task.map(|t| t.id.clone());
        rec.agent = Some(token.identity().agent.clone());
        rec.tenant = Some(token.identity().tenant.clone());
        rec.reason = Some(error.to_string());
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.jsonrpc_id = rpc_id.map(str::to_owned);
        rec.transport = Some(env.transport.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %chain(&e), "audit record lost");
        }
        self.record_duration(tool, env, Some(error_type), started);
    }

    /// The door's record stage: writes the allow to the audit log before the call runs. `Err`
    /// when it cannot be written and the log is fail-closed; the call must then not run, and
    /// the pipeline reports the denial through [`Telemetry::call_denied`].
    pub(crate) fn record_allowed(
        &self,
        call: &Prepared,
        grant: &Grant,
        env: &CallEnv,
        rpc_id: Option<&str>,
    ) -> Result<(), Box<Denial>> {
        let tool = call.spec().name.as_str();
        let resource = call.resource().as_str();
        let (trace_id, span_id) = self.ids_of_current(Some(&grant.task.trace_id));
        let mut rec = AuditRecord::now("call", tool, "allow");
        rec.task = Some(grant.task.id.clone());
        rec.agent = Some(grant.task.agent.clone());
        rec.tenant = Some(grant.task.tenant.clone());
        rec.resource = Some(resource.to_owned());
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.jsonrpc_id = rpc_id.map(str::to_owned);
        rec.transport = Some(env.transport.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            let e = chain(&e);
            tracing::error!(target: "capgate", error = %e, "audit record lost");
            if self.fail_closed {
                return Err(Box::new(Denial::fault(
                    "audit_unavailable",
                    format!(
                        "{e}; calls are refused until it can be written ([audit] fail_closed); this is capgate's fault, not the request's"
                    ),
                    call,
                    Some(Arc::clone(&grant.task)),
                )));
            }
        }
        Ok(())
    }

    /// An allowed, recorded call: its span attributes, decision metrics and usage.
    pub(crate) fn call_allowed(
        &self,
        call: &Prepared,
        grant: &Grant,
        took: Duration,
        target: Option<&str>,
    ) {
        let tool = call.spec().name.as_str();
        let resource = call.resource().as_str();
        let in_intent = grant.task.declares(tool, resource);
        self.guardrail_span(Verdict::Allow, tool, target);
        let span = tracing::Span::current();
        span.set_attribute("capgate.decision", "allow");
        span.set_attribute("capgate.resource", resource.to_owned());
        span.set_attribute("capgate.intent.match", in_intent);
        span.set_attribute("capgate.decision.cached", grant.cached);
        if self.record_payloads {
            span.set_attribute(
                "gen_ai.tool.call.arguments",
                serde_json::Value::Object(call.args().clone()).to_string(),
            );
        }
        self.record_decision(tool, "allow", took);
        self.usage.record(&grant.task.id, tool, true, !in_intent);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn call_denied(
        &self,
        token: &VerifiedToken,
        denial: &Denial,
        env: &CallEnv,
        took: Duration,
        started: Instant,
        rpc_id: Option<&str>,
        target: Option<&str>,
    ) {
        self.guardrail_span(Verdict::Deny(denial), &denial.tool, target);
        let span = tracing::Span::current();
        let in_intent = denial
            .task
            .as_ref()
            .is_some_and(|t| t.declares(&denial.tool, &denial.resource));
        span.set_attribute("capgate.decision", "deny");
        span.set_attribute("capgate.deny.reason", denial.reason.clone());
        span.set_attribute("capgate.resource", denial.resource.clone());
        span.set_attribute("capgate.intent.match", in_intent);
        if let Some(f) = &denial.task_revoked {
            span.set_attribute("capgate.task.revoked_by", f.revoked_by.clone());
        }
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
        rec.jsonrpc_id = rpc_id.map(str::to_owned);
        rec.transport = Some(env.transport.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %chain(&e), "audit record lost");
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
        self.record_duration(tool, env, error, started);
    }

    /// A stdio call whose token could not be used at all.
    pub(crate) fn token_refused(&self, tool: &str, error: &CredentialError, env: &CallEnv) {
        let kind = match error {
            CredentialError::Token(t) => t.kind(),
            CredentialError::Unavailable(_) => "store_unavailable",
        };
        let error = chain(error);
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
        span.set_attribute("capgate.deny.reason", kind);
        span.set_attribute("error.type", TOOL_ERROR);
        span.set_status(Status::error(error.clone()));
        let _enter = span.enter();
        let (trace_id, span_id) = self.ids_of_current(None);
        let mut rec = AuditRecord::now("call", tool, "deny");
        rec.reason = Some(format!("{kind}: {error}"));
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(env.transport.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %chain(&e), "audit record lost");
        }
        self.metrics.decisions.add(
            1,
            &[
                KeyValue::new("capgate.decision", "deny"),
                KeyValue::new("gen_ai.tool.name", tool.to_owned()),
            ],
        );
    }
}

/// A guard decision, as the GenAI guardrail conventions describe it.
pub(crate) enum Verdict<'a> {
    Allow,
    Deny(&'a Denial),
}

impl Telemetry {
    /// The `run_guardrail capgate` span of one decision (GenAI security conventions), a child of
    /// the call span, so that backends that understand guardrails show capgate's verdicts. Only
    /// built when spans are exported.
    fn guardrail_span(&self, verdict: Verdict<'_>, tool: &str, target: Option<&str>) {
        if self.tracer.is_none() {
            return;
        }
        let span = tracing::info_span!(
            target: "capgate::call",
            "run_guardrail",
            otel.name = "run_guardrail capgate",
            otel.kind = "internal",
        );
        span.set_attribute("gen_ai.operation.name", "run_guardrail");
        span.set_attribute("gen_ai.guardrail.component.name", "capgate");
        span.set_attribute("gen_ai.guardrail.target.type", "input");
        span.set_attribute("gen_ai.guardrail.target.subtype", "tool_call");
        span.set_attribute("gen_ai.tool.name", tool.to_owned());
        if let Some(t) = target {
            span.set_attribute("gen_ai.guardrail.target.id", t.to_owned());
        }
        match verdict {
            Verdict::Allow => {
                span.set_attribute("gen_ai.guardrail.verdict.type", "allow");
                span.set_attribute("gen_ai.guardrail.action.type", "allow");
            }
            Verdict::Deny(d) => {
                span.set_attribute("gen_ai.guardrail.verdict.type", "deny");
                span.set_attribute("gen_ai.guardrail.action.type", "block");
                span.set_attribute("gen_ai.guardrail.verdict.reason", d.message.clone());
                // The failed rule is the policy: a policy file's `// rule:` name, or the
                // built-in check (`tool_not_granted`, `budget_exhausted`, ...).
                span.set_attribute("gen_ai.guardrail.security.policy.id", d.reason.clone());
                if let Some(c) = d.failed_checks.first() {
                    span.set_attribute("gen_ai.guardrail.security.policy.rule.id", c.rule.clone());
                }
                if !d.fault {
                    span.set_attribute(
                        "gen_ai.guardrail.security.risk.category",
                        "excessive_agency",
                    );
                }
            }
        }
        // Entered and left at once: the decision has already been made.
        drop(span.enter());
    }
}

/// Whether a protocol revision is the stateless one (2026-07-28 and later): no sessions.
pub(crate) fn stateless_protocol(protocol: Option<&str>) -> bool {
    protocol.is_some_and(|p| p >= "2026-07-28")
}

/// The caller's span context from a W3C `traceparent` value, read by OpenTelemetry's own
/// propagator. Anything malformed is `None`: bad trace context is ignored, never an error.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([("traceparent".to_owned(), value.trim().to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Malformed context is ignored. (OpenTelemetry's propagator reads a trace id shorter than
    /// 32 hex digits as zero-padded rather than refusing it; a caller can name any trace it
    /// likes anyway, so that leniency costs nothing.)
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
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
