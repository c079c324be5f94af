//! Issuance telemetry: an INTERNAL span per issuance decision (in the task's own trace when a
//! task was issued) and its audit line.
//!
//! Invariant: an issuance whose audit line cannot be written is reported back to the issuer,
//! which ends the task before its token leaves capgate (`[audit] fail_closed`).

use std::sync::Arc;

use capgate_authz::issuance::IssuanceObserver;
use capgate_authz::{Channel, IssuanceError, VerifiedToken};
use capgate_core::error::chain;
use capgate_core::task::{Intent, TaskRecord};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, StringValue, Value};

use super::audit::AuditRecord;
use super::{Telemetry, pairs, task_span_context};

impl Telemetry {
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
        if let Some((issuer, subject)) = token.and_then(|t| t.identity().workload.clone()) {
            attrs.push(KeyValue::new("capgate.workload.issuer", issuer));
            attrs.push(KeyValue::new("capgate.workload.subject", subject));
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

impl IssuanceObserver for Telemetry {
    fn issued(
        &self,
        token: &VerifiedToken,
        task: &TaskRecord,
        channel: Channel,
    ) -> Result<(), Arc<dyn std::error::Error + Send + Sync>> {
        let (trace_id, span_id) =
            self.issuance_span(Some(token), &task.intent, Some(task), None, channel);
        let mut rec = AuditRecord::now("issuance", &task.intent.tools.join(","), "allow");
        rec.task = Some(task.id.clone());
        rec.agent = Some(task.agent.clone());
        rec.tenant = Some(task.tenant.clone());
        rec.resource = Some(pairs(&task.grant.tools).join(","));
        if let Some(w) = &task.grant.workload {
            rec.issuer = Some(w.issuer.clone());
            rec.subject = Some(w.subject.clone());
        }
        rec.holder = task.grant.holder.clone();
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(channel.as_str().into());
        match self.audit.append(&rec) {
            Ok(()) => Ok(()),
            Err(e) if self.fail_closed => Err(Arc::new(e)),
            Err(e) => {
                tracing::error!(target: "capgate", error = %chain(&e), "audit record lost");
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
        if let Some((issuer, subject)) = token.and_then(|t| t.identity().workload.clone()) {
            rec.issuer = Some(issuer);
            rec.subject = Some(subject);
        }
        rec.reason = Some(format!("{}: {error}", error.reason()));
        rec.trace_id = trace_id;
        rec.span_id = span_id;
        rec.transport = Some(channel.as_str().into());
        if let Err(e) = self.audit.append(&rec) {
            tracing::error!(target: "capgate", error = %chain(&e), "audit record lost");
        }
    }
}
