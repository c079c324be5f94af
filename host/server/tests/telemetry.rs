//! Telemetry in process: the spans capgate emits for calls, tasks and issuance decisions,
//! captured by the SDK's in-memory exporter behind the very `tracing` layer `capgate serve`
//! installs ([`install_tracing`]), and the metrics, captured by the in-memory metric exporter.
//!
//! The `tracing` subscriber is process-wide, so every test in this binary shares one exporter.
//! Each test finds its own spans by trace id (every task has its own trace, and a caller's trace
//! id is random), so the tests stay correct when the harness runs them in parallel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use capgate_authz::issuance::new_trace_ids;
use capgate_authz::{Channel, CredentialError, IssuanceError, IssuedTask};
use capgate_core::Operation;
use capgate_core::task::{EndReason, Intent, Ttl};
use capgate_server::telemetry::otel::install_tracing;
use capgate_server::telemetry::{AuditLog, Providers};
use capgate_server::{Host, InProcessError};
use capgate_testkit::inproc::{Scratch, stdio_client};
use capgate_testkit::tools::counting;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::{Array, Value as OtelValue};
use opentelemetry_sdk::metrics::InMemoryMetricExporter;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use rmcp::model::{CallToolRequestParams, CallToolResult, RequestParamsMeta};

use serde_json::{Map, Value, json};

/// The exporters every test reads, behind the one process-wide subscriber.
struct Otel {
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
    providers: Providers,
}

fn otel() -> &'static Otel {
    static OTEL: OnceLock<Otel> = OnceLock::new();
    OTEL.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let metrics = InMemoryMetricExporter::default();
        let providers =
            Providers::with_span_exporter(spans.clone()).with_metric_exporter(metrics.clone());
        install_tracing(&providers);
        Otel {
            spans,
            metrics,
            providers,
        }
    })
}

/// Every finished span of one trace. The in-memory provider exports as each span ends, so
/// spans of calls that have returned are already here.
fn trace(trace_id: &str) -> Vec<SpanData> {
    otel()
        .spans
        .get_finished_spans()
        .expect("in-memory spans")
        .into_iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .collect()
}

/// The one span of `spans` with this name.
fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one span `{name}`, spans: {:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a OtelValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// A string (or scalar) attribute as text; panics when missing.
fn text_attr(span: &SpanData, key: &str) -> String {
    attr(span, key)
        .unwrap_or_else(|| panic!("span `{}` has no `{key}`: {:?}", span.name, span.attributes))
        .as_str()
        .into_owned()
}

fn list_attr(span: &SpanData, key: &str) -> Vec<String> {
    match attr(span, key) {
        Some(OtelValue::Array(Array::String(v))) => {
            v.iter().map(|s| s.as_str().to_owned()).collect()
        }
        other => panic!(
            "span `{}`: `{key}` is not a string array: {other:?}",
            span.name
        ),
    }
}

fn int_attr(span: &SpanData, key: &str) -> i64 {
    match attr(span, key) {
        Some(OtelValue::I64(n)) => *n,
        other => panic!("span `{}`: `{key}` is not an integer: {other:?}", span.name),
    }
}

fn bool_attr(span: &SpanData, key: &str) -> bool {
    match attr(span, key) {
        Some(OtelValue::Bool(b)) => *b,
        other => panic!("span `{}`: `{key}` is not a boolean: {other:?}", span.name),
    }
}

/// The data model requires unique attribute keys; the SDK does not deduplicate, so a key set
/// twice would be exported twice.
fn assert_unique_keys(span: &SpanData) {
    let mut seen = std::collections::BTreeSet::new();
    for kv in &span.attributes {
        assert!(
            seen.insert(kv.key.as_str()),
            "span `{}` sets `{}` more than once: {:?}",
            span.name,
            kv.key,
            span.attributes
        );
    }
}

fn is_error(span: &SpanData) -> bool {
    matches!(span.status, Status::Error { .. })
}

/// A host in a scratch directory with two run-time tools over `/data/...` resources: `read`
/// (operation read) and `write` (operation write), each counting its runs.
struct Fixture {
    scratch: Scratch,
    host: Host,
    read: String,
    write: String,
    reads: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
}

impl Fixture {
    fn new() -> Self {
        Self::with("", "fs_read", "fs_write")
    }

    /// `extra` is TOML appended to the config; `read` and `write` name the two tools.
    fn with(extra: &str, read: &str, write: &str) -> Self {
        let reads = Arc::new(AtomicUsize::new(0));
        let writes = Arc::new(AtomicUsize::new(0));
        let (r, w) = (
            counting(read, Operation::Read, Some("/data/"), &reads),
            counting(write, Operation::Write, Some("/data/"), &writes),
        );
        let scratch = Scratch::with_providers(extra, otel().providers.clone(), |b| {
            b.tool(r).unwrap().tool(w).unwrap()
        });
        Fixture {
            host: scratch.host.clone(),
            scratch,
            read: read.to_owned(),
            write: write.to_owned(),
            reads,
            writes,
        }
    }

    /// A second host over the same state (tasks, keys) with other settings, as after a restart
    /// with a changed config; its tools count into the same counters.
    fn reopen(&self, extra: &str) -> Host {
        let (r, w) = (
            counting(&self.read, Operation::Read, Some("/data/"), &self.reads),
            counting(&self.write, Operation::Write, Some("/data/"), &self.writes),
        );
        self.scratch.reopen(extra, otel().providers.clone(), |b| {
            b.tool(r).unwrap().tool(w).unwrap()
        })
    }

    /// An agent token with both tools, no resource limit of its own.
    fn agent(&self, agent: &str) -> String {
        self.scratch
            .agent(agent, "acme", &[&self.read, &self.write])
    }

    /// The usual intent: read under `/data/docs/`, write under `/data/out/`, approved.
    fn intent(&self, purpose: &str) -> Intent {
        Intent {
            purpose: purpose.into(),
            tools: vec![self.read.clone(), self.write.clone()],
            resources: BTreeMap::from([
                (self.read.clone(), vec!["/data/docs/".to_owned()]),
                (self.write.clone(), vec!["/data/out/".to_owned()]),
            ]),
            approved_by: Some("tester".into()),
            ..Intent::default()
        }
    }

    fn issue(&self, agent_token: &str, intent: Intent) -> Result<IssuedTask, IssuanceError> {
        let verified = self.host.verifier().verify(agent_token).unwrap();
        self.host.issuer().issue(&verified, intent, Channel::Http)
    }

    fn begin(&self, agent: &str, purpose: &str) -> IssuedTask {
        let token = self.agent(agent);
        self.issue(&token, self.intent(purpose))
            .expect("task issued")
    }

    /// [`Fixture::begin`], and a stdio client presenting the task's token.
    async fn session(&self, agent: &str, purpose: &str) -> (IssuedTask, Client) {
        let task = self.begin(agent, purpose);
        let client = stdio_client(&self.host, &task.token).await;
        (task, client)
    }
}

/// Writes `out/report.txt` with `token` on `host` (a fixture's, or one reopened over its state).
async fn write_report(
    host: &Host,
    token: &str,
) -> Result<capgate_core::ToolOutput, InProcessError> {
    let report = args(json!({"path": "out/report.txt"}));
    host.call(token, "fs_write", report).await
}

type Client = capgate_testkit::Client;

fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("arguments are an object"),
    }
}

async fn call(
    client: &Client,
    tool: &str,
    path: &str,
    traceparent: Option<&str>,
) -> CallToolResult {
    let mut params =
        CallToolRequestParams::new(tool.to_owned()).with_arguments(args(json!({"path": path})));
    if let Some(tp) = traceparent {
        params.set_traceparent(tp);
    }
    client.call_tool(params).await.expect("tools/call answered")
}

/// The call spans of a trace (SERVER `tools/call ...`), oldest first.
fn call_spans(spans: &[SpanData]) -> Vec<&SpanData> {
    let mut v: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("tools/call "))
        .collect();
    v.sort_by_key(|s| s.start_time);
    v
}

/// What ran under a call: its children except the guard's own verdict span.
fn children<'a>(spans: &'a [SpanData], parent: &SpanData) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_context.span_id())
        .filter(|s| s.name != GUARDRAIL)
        .collect()
}

const GUARDRAIL: &str = "run_guardrail capgate";

/// The guard's verdict on a call, as the GenAI security conventions' `run_guardrail` span.
fn guardrail<'a>(spans: &'a [SpanData], parent: &SpanData) -> &'a SpanData {
    let mut g = spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_context.span_id() && s.name == GUARDRAIL);
    let one = g.next().expect("a run_guardrail span under the call");
    assert!(g.next().is_none(), "one verdict per call");
    one
}

/// Over stdio: an allowed call is a SERVER span, child of the task's root span in the task's
/// trace, with the MCP conventions' and capgate's attributes and an INTERNAL execution child; a
/// denied one ends in ERROR with the reason the client was told and has no execution child.
#[tokio::test]
async fn allowed_and_denied_calls_are_children_of_the_task_span() {
    let fx = Fixture::new();
    let (task, client) = fx.session("agent-calls", "summarize the docs").await;
    let record = &task.record;
    let protocol = client
        .peer_info()
        .expect("server info")
        .protocol_version
        .to_string();

    let ok = call(&client, "fs_read", "docs/a.txt", None).await;
    assert_eq!(ok.is_error, Some(false), "{ok:?}");
    let denied = call(&client, "fs_read", "secret/key.pem", None).await;
    assert_eq!(denied.is_error, Some(true), "{denied:?}");
    let told = denied.structured_content.as_ref().unwrap()["capgate"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        fx.reads.load(Ordering::SeqCst),
        1,
        "the denied call did not run"
    );

    let spans = trace(&record.trace_id);
    let calls = call_spans(&spans);
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let task_span = SpanId::from_hex(&record.span_id).unwrap();
    for c in &calls {
        assert_eq!(c.name, "tools/call fs_read");
        assert_eq!(c.span_kind, SpanKind::Server);
        assert_eq!(
            c.parent_span_id, task_span,
            "the task's root span is the parent"
        );
        assert!(
            c.parent_span_is_remote,
            "the task span is exported later, elsewhere"
        );
        assert_unique_keys(c);
        assert_eq!(text_attr(c, "mcp.method.name"), "tools/call");
        assert_eq!(text_attr(c, "gen_ai.tool.name"), "fs_read");
        assert_eq!(text_attr(c, "gen_ai.operation.name"), "execute_tool");
        assert_eq!(text_attr(c, "network.transport"), "pipe");
        assert_eq!(text_attr(c, "mcp.protocol.version"), protocol);
        assert!(
            attr(c, "mcp.session.id").is_none(),
            "stdio has no MCP session, so no mcp.session.id"
        );
        assert!(
            text_attr(c, "jsonrpc.request.id").parse::<u64>().is_ok(),
            "the client's JSON-RPC id: {:?}",
            attr(c, "jsonrpc.request.id")
        );
        assert_eq!(text_attr(c, "capgate.task.id"), record.id);
        assert_eq!(text_attr(c, "capgate.agent.id"), "agent-calls");
        assert_eq!(text_attr(c, "capgate.tenant"), "acme");
        // Arguments and results are not recorded unless asked for.
        assert!(attr(c, "gen_ai.tool.call.arguments").is_none());
        assert!(attr(c, "gen_ai.tool.call.result").is_none());
    }

    let allowed = calls[0];
    assert_eq!(text_attr(allowed, "capgate.decision"), "allow");
    assert_eq!(text_attr(allowed, "capgate.resource"), "/data/docs/a.txt");
    assert!(bool_attr(allowed, "capgate.intent.match"));
    assert!(attr(allowed, "error.type").is_none());
    assert!(!is_error(allowed));
    let exec = children(&spans, allowed);
    assert_eq!(exec.len(), 1, "one execution child: {exec:#?}");
    assert_eq!(exec[0].name, "execute_tool fs_read");
    assert_eq!(exec[0].span_kind, SpanKind::Internal);
    assert_eq!(text_attr(exec[0], "gen_ai.tool.name"), "fs_read");
    assert_unique_keys(exec[0]);

    let refused = calls[1];
    assert_eq!(text_attr(refused, "capgate.decision"), "deny");
    assert_eq!(text_attr(refused, "capgate.deny.reason"), told);
    assert_eq!(
        text_attr(refused, "capgate.resource"),
        "/data/secret/key.pem"
    );
    assert!(!bool_attr(refused, "capgate.intent.match"));
    assert_eq!(text_attr(refused, "error.type"), "tool_error");
    assert!(
        is_error(refused),
        "a denial ends in ERROR: {:?}",
        refused.status
    );
    assert!(
        children(&spans, refused).is_empty(),
        "a denied call has no execution child"
    );

    // The verdicts, in the GenAI security conventions' terms.
    let yes = guardrail(&spans, allowed);
    assert_unique_keys(yes);
    assert_eq!(yes.span_kind, SpanKind::Internal);
    assert_eq!(text_attr(yes, "gen_ai.operation.name"), "run_guardrail");
    assert_eq!(text_attr(yes, "gen_ai.guardrail.verdict.type"), "allow");
    assert_eq!(text_attr(yes, "gen_ai.guardrail.target.type"), "input");
    assert_eq!(
        text_attr(yes, "gen_ai.guardrail.target.subtype"),
        "tool_call"
    );
    let no = guardrail(&spans, refused);
    assert_unique_keys(no);
    assert_eq!(text_attr(no, "gen_ai.guardrail.verdict.type"), "deny");
    assert_eq!(text_attr(no, "gen_ai.guardrail.action.type"), "block");
    assert_eq!(text_attr(no, "gen_ai.guardrail.security.policy.id"), told);
    assert_eq!(
        text_attr(no, "gen_ai.guardrail.target.id"),
        text_attr(refused, "jsonrpc.request.id"),
        "the verdict names the request it is about"
    );
    assert!(!text_attr(no, "gen_ai.guardrail.verdict.reason").is_empty());

    // The audit log names the same trace and span for each decision.
    let audit = AuditLog::read_all(&fx.host.config().audit_file(), 1);
    let lines: Vec<_> = audit
        .iter()
        .filter(|r| r.kind == "call" && r.task.as_deref() == Some(record.id.as_str()))
        .collect();
    assert_eq!(lines.len(), 2, "{audit:#?}");
    for (line, span) in lines.iter().zip(&calls) {
        assert_eq!(line.trace_id.as_deref(), Some(record.trace_id.as_str()));
        assert_eq!(
            line.span_id.as_deref(),
            Some(span.span_context.span_id().to_string().as_str())
        );
        assert_eq!(
            line.jsonrpc_id.as_deref(),
            Some(text_attr(span, "jsonrpc.request.id").as_str()),
            "the audit line names the JSON-RPC request"
        );
    }
    assert_eq!(lines[0].decision, "allow");
    assert_eq!(lines[1].decision, "deny");
    client.cancel().await.unwrap();
}

/// In process (`Host::call`) the same spans appear, with `network.transport` `inproc`.
#[tokio::test]
async fn in_process_calls_are_traced_too() {
    let fx = Fixture::new();
    let task = fx.begin("agent-inproc", "in process");
    fx.host
        .call(&task.token, "fs_read", args(json!({"path": "docs/b.txt"})))
        .await
        .expect("allowed");
    let err = fx
        .host
        .call(&task.token, "fs_write", args(json!({"path": "docs/b.txt"})))
        .await
        .expect_err("writing outside /data/out/ is denied");
    assert!(matches!(err, InProcessError::Denied(_)), "{err:?}");
    assert_eq!(fx.writes.load(Ordering::SeqCst), 0);

    let spans = trace(&task.record.trace_id);
    let read = named(&spans, "tools/call fs_read");
    assert_eq!(text_attr(read, "network.transport"), "inproc");
    assert_eq!(text_attr(read, "capgate.decision"), "allow");
    assert_eq!(children(&spans, read).len(), 1);
    let write = named(&spans, "tools/call fs_write");
    assert_eq!(text_attr(write, "capgate.decision"), "deny");
    assert!(is_error(write));
    assert!(children(&spans, write).is_empty());
    assert!(!spans.iter().any(|s| s.name == "execute_tool fs_write"));
}

/// A caller's `_meta.traceparent` makes the call span the caller's child in the caller's trace,
/// linked to the task's span; a malformed one is ignored and the task span stays the parent.
#[tokio::test]
async fn caller_trace_context_is_followed_and_malformed_context_ignored() {
    let fx = Fixture::new();
    let (task, client) = fx.session("agent-traceparent", "follow the caller").await;
    let record = &task.record;

    let (caller_trace, caller_span) = new_trace_ids();
    let tp = format!("00-{caller_trace}-{caller_span}-01");
    let r = call(&client, "fs_read", "docs/c.txt", Some(&tp)).await;
    assert_eq!(r.is_error, Some(false), "{r:?}");

    let spans = trace(&caller_trace);
    let c = named(&spans, "tools/call fs_read");
    assert_eq!(c.span_kind, SpanKind::Server);
    assert_eq!(c.parent_span_id, SpanId::from_hex(&caller_span).unwrap());
    assert!(c.parent_span_is_remote);
    assert_eq!(text_attr(c, "capgate.task.id"), record.id);
    let links: Vec<_> = c.links.iter().collect();
    assert_eq!(links.len(), 1, "one link, to the task span: {links:?}");
    assert_eq!(
        links[0].span_context.trace_id(),
        TraceId::from_hex(&record.trace_id).unwrap()
    );
    assert_eq!(
        links[0].span_context.span_id(),
        SpanId::from_hex(&record.span_id).unwrap()
    );
    let exec = named(&spans, "execute_tool fs_read");
    assert_eq!(exec.parent_span_id, c.span_context.span_id());
    assert!(
        call_spans(&trace(&record.trace_id)).is_empty(),
        "the call is in the caller's trace, not the task's"
    );

    // Malformed: wrong length, upper-case hex, all-zero ids, a bad version. Each call works
    // and is parented on the task span, without a link.
    for bad in [
        "00-xyz-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "garbage",
    ] {
        let r = call(&client, "fs_read", "docs/d.txt", Some(bad)).await;
        assert_eq!(
            r.is_error,
            Some(false),
            "`{bad}` must not fail the call: {r:?}"
        );
    }
    let spans = trace(&record.trace_id);
    let calls = call_spans(&spans);
    assert_eq!(calls.len(), 5, "{spans:#?}");
    for c in calls {
        assert_eq!(c.parent_span_id, SpanId::from_hex(&record.span_id).unwrap());
        assert!(
            c.links.is_empty(),
            "no link when the task span is the parent"
        );
        assert_eq!(text_attr(c, "capgate.decision"), "allow");
    }
    client.cancel().await.unwrap();
}

/// Ending a task exports its span: the ids fixed at issuance, its real start, intent beside
/// grant beside action. The issuance decision is a span of the same trace.
#[tokio::test]
async fn an_ended_task_exports_its_summary_span() {
    let fx = Fixture::new();
    let before = SystemTime::now();
    let (task, client) = fx.session("agent-end", "summarize the docs").await;
    let record = &task.record;
    for path in ["docs/a.txt", "docs/b.txt"] {
        assert_eq!(
            call(&client, "fs_read", path, None).await.is_error,
            Some(false)
        );
    }
    assert_eq!(
        call(&client, "fs_read", "secret/x", None).await.is_error,
        Some(true)
    );
    client.cancel().await.unwrap();

    let issuance = named(&trace(&record.trace_id), "task issuance").clone();
    assert_eq!(
        issuance.parent_span_id,
        SpanId::from_hex(&record.span_id).unwrap()
    );
    assert_eq!(text_attr(&issuance, "capgate.decision"), "allow");
    assert_eq!(text_attr(&issuance, "capgate.task.id"), record.id);
    assert_eq!(text_attr(&issuance, "capgate.agent.id"), "agent-end");
    assert_eq!(text_attr(&issuance, "capgate.issuance.channel"), "http");
    assert!(!is_error(&issuance));
    assert!(
        !trace(&record.trace_id)
            .iter()
            .any(|s| s.name.starts_with("task summ")),
        "the task span waits for the task's end"
    );

    let ended = fx
        .host
        .end_task(&record.id, EndReason::Completed)
        .unwrap()
        .expect("ended now");
    let after = SystemTime::now();
    // The task span is built once the task's usage has settled; flushing waits for it.
    fx.host.telemetry().flush();
    let spans = trace(&record.trace_id);
    let t = named(&spans, "task summarize the docs");
    assert_unique_keys(t);
    assert_eq!(t.span_kind, SpanKind::Internal);
    assert_eq!(
        t.span_context.trace_id(),
        TraceId::from_hex(&record.trace_id).unwrap()
    );
    assert_eq!(
        t.span_context.span_id(),
        SpanId::from_hex(&record.span_id).unwrap()
    );
    assert_eq!(
        t.parent_span_id,
        SpanId::INVALID,
        "the task span is the trace's root"
    );
    // The stored creation time (whole seconds), not the time of export.
    assert_eq!(t.start_time, ended.created_at);
    assert!(t.start_time + Duration::from_secs(1) > before && t.start_time <= after);
    assert!(t.end_time <= after && t.end_time >= t.start_time);
    for c in call_spans(&spans) {
        assert!(
            t.start_time <= c.start_time && c.end_time <= t.end_time,
            "the task span covers its calls"
        );
    }

    assert_eq!(text_attr(t, "capgate.task.id"), record.id);
    assert_eq!(text_attr(t, "capgate.agent.id"), "agent-end");
    assert_eq!(text_attr(t, "capgate.tenant"), "acme");
    assert_eq!(text_attr(t, "capgate.intent.purpose"), "summarize the docs");
    assert_eq!(
        list_attr(t, "capgate.intent.tools"),
        ["fs_read", "fs_write"]
    );
    assert_eq!(
        list_attr(t, "capgate.intent.resources"),
        ["fs_read=/data/docs/", "fs_write=/data/out/"]
    );
    assert_eq!(list_attr(t, "capgate.grant.tools"), ["fs_read", "fs_write"]);
    assert_eq!(
        list_attr(t, "capgate.grant.resources"),
        ["fs_read=/data/docs/", "fs_write=/data/out/"]
    );
    assert_eq!(
        text_attr(t, "capgate.grant.expires_at"),
        capgate_core::time::rfc3339(record.grant.expires_at)
    );
    assert_eq!(list_attr(t, "capgate.action.tools"), ["fs_read"]);
    assert_eq!(list_attr(t, "capgate.action.unused_grants"), ["fs_write"]);
    assert_eq!(int_attr(t, "capgate.action.calls"), 3);
    assert_eq!(int_attr(t, "capgate.action.denied"), 1);
    assert_eq!(int_attr(t, "capgate.action.out_of_intent"), 1);
    assert_eq!(text_attr(t, "capgate.task.end_reason"), "completed");
    assert_eq!(text_attr(t, "capgate.intent.approved_by"), "tester");

    // Ending again exports nothing more.
    assert!(
        fx.host
            .end_task(&record.id, EndReason::Completed)
            .unwrap()
            .is_none()
    );
    fx.host.telemetry().flush();
    let again = trace(&record.trace_id);
    assert_eq!(
        again
            .iter()
            .filter(|s| s.name == "task summarize the docs")
            .count(),
        1
    );
}

/// A task that runs out of time is ended by the reaper, and its span says `expired`.
#[tokio::test]
async fn an_expired_task_exports_its_span_with_reason_expired() {
    let fx = Fixture::new();
    let token = fx.agent("agent-expire");
    let mut intent = fx.intent("a short task");
    intent.ttl = Some(Ttl::Seconds(1));
    let task = fx.issue(&token, intent).expect("issued");
    fx.host
        .call(&task.token, "fs_read", args(json!({"path": "docs/a.txt"})))
        .await
        .expect("allowed while live");

    // Expiry is checked in whole seconds: wait until the task is certainly past it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reaper = fx.host.spawn_reaper(Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(10);
    let span = loop {
        if let Some(s) = trace(&task.record.trace_id)
            .into_iter()
            .find(|s| s.name == "task a short task")
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the reaper never ended the task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    reaper.abort();
    assert_eq!(text_attr(&span, "capgate.task.end_reason"), "expired");
    assert_eq!(
        span.span_context.span_id(),
        SpanId::from_hex(&task.record.span_id).unwrap()
    );
    assert_eq!(int_attr(&span, "capgate.action.calls"), 1);
    assert_eq!(list_attr(&span, "capgate.action.tools"), ["fs_read"]);
    let stored = fx.host.ledger().task(&task.record.id).unwrap().unwrap();
    assert_eq!(stored.end_reason, Some(EndReason::Expired));

    // Ending revoked the task block: its token no longer gets past verification.
    let err = fx
        .host
        .call(&task.token, "fs_read", args(json!({"path": "docs/a.txt"})))
        .await
        .expect_err("expired");
    assert!(
        matches!(err, InProcessError::Credential(CredentialError::Token(_))),
        "{err:?}"
    );
}

/// A refused task request is a `task issuance` span of its own, in ERROR, naming the rule.
#[tokio::test]
async fn a_refused_issuance_is_an_error_span_naming_the_rule() {
    let fx = Fixture::new();
    let token = fx.agent("agent-refused");
    let mut intent = fx.intent("write without approval");
    intent.approved_by = None;
    let err = fx.issue(&token, intent).expect_err("write needs approval");
    assert_eq!(err.reason(), "approval-required");

    let spans: Vec<SpanData> = otel()
        .spans
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| {
            s.name == "task issuance"
                && attr(s, "capgate.agent.id").map(|v| v.as_str().into_owned())
                    == Some("agent-refused".into())
        })
        .collect();
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert_eq!(text_attr(s, "capgate.decision"), "deny");
    assert_eq!(text_attr(s, "capgate.deny.reason"), "approval-required");
    assert!(!text_attr(s, "capgate.issuance.rule").is_empty());
    assert!(attr(s, "capgate.task.id").is_none(), "no task exists");
    assert!(is_error(s));
}

/// A decision that cannot be audited is refused (fail closed, the default): no task is issued,
/// the tool does not run, the span is a denial naming `audit_unavailable`, with no execution
/// child.
#[tokio::test]
async fn an_unwritable_audit_log_denies_calls() {
    let fx = Fixture::with("", "fs_read", "fs_write");
    let task = fx.begin("agent-audit-full", "audit is full");
    // The same state, now with an audit log that cannot be written.
    let host = fx.reopen("[audit]\npath = \"/dev/full\"\n");
    let verified = host
        .verifier()
        .verify(&fx.agent("agent-audit-full"))
        .unwrap();
    let Err(refused) = host
        .issuer()
        .issue(&verified, fx.intent("unrecorded"), Channel::Http)
    else {
        panic!("an unrecorded issuance does not stand");
    };
    assert!(refused.to_string().contains("audit log"), "{refused}");
    let err = write_report(&host, &task.token).await.expect_err("refused");
    match err {
        InProcessError::Denied(d) => assert_eq!(d.reason, "audit_unavailable"),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(fx.writes.load(Ordering::SeqCst), 0, "the tool did not run");

    let spans = trace(&task.record.trace_id);
    let c = named(&spans, "tools/call fs_write");
    assert_unique_keys(c);
    assert_eq!(text_attr(c, "capgate.decision"), "deny");
    assert_eq!(text_attr(c, "capgate.deny.reason"), "audit_unavailable");
    assert!(is_error(c));
    assert!(children(&spans, c).is_empty());
}

/// With `[audit] fail_closed = false` the same unwritable log lets calls through.
#[tokio::test]
async fn fail_open_audit_lets_calls_run() {
    let fx = Fixture::with(
        "[audit]\npath = \"/dev/full\"\nfail_closed = false\n",
        "fs_read",
        "fs_write",
    );
    let task = fx.begin("agent-audit-open", "audit may fail");
    write_report(&fx.host, &task.token)
        .await
        .expect("fail-open runs the call");
    assert_eq!(fx.writes.load(Ordering::SeqCst), 1);
}

/// The metrics: the MCP conventions' duration histogram (seconds, their buckets), the guard's
/// decision counter by decision and tool, and the guard's duration.
#[tokio::test]
async fn metrics_follow_the_conventions() {
    let fx = Fixture::with("", "m_read", "m_write");
    let task = fx.begin("agent-metrics", "measure");
    for path in ["docs/1", "docs/2"] {
        fx.host
            .call(&task.token, "m_read", args(json!({"path": path})))
            .await
            .expect("allowed");
    }
    fx.host
        .call(&task.token, "m_read", args(json!({"path": "secret"})))
        .await
        .expect_err("denied");
    otel().providers.flush();

    let exported = otel().metrics.get_finished_metrics().unwrap();
    // Cumulative temporality: the last export holds every count so far.
    let last = exported.last().expect("metrics were exported");
    let metrics: Vec<_> = last.scope_metrics().flat_map(|s| s.metrics()).collect();
    let find = |name: &str| {
        *metrics
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no metric `{name}`"))
    };
    fn is_tool<'a>(mut attrs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> bool {
        attrs.any(|kv| kv.key.as_str() == "gen_ai.tool.name" && kv.value.as_str() == "m_read")
    }

    let duration = find("mcp.server.operation.duration");
    assert_eq!(duration.unit(), "s");
    let AggregatedMetrics::F64(MetricData::Histogram(h)) = duration.data() else {
        panic!("mcp.server.operation.duration is not an f64 histogram");
    };
    let points: Vec<_> = h
        .data_points()
        .filter(|p| is_tool(p.attributes()))
        .collect();
    assert_eq!(points.iter().map(|p| p.count()).sum::<u64>(), 3);
    for p in &points {
        assert_eq!(
            p.bounds().collect::<Vec<_>>(),
            [
                0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0
            ]
        );
        assert!(p.attributes().any(|kv| kv.key.as_str() == "mcp.method.name"
            && kv.value.as_str() == "tools/call"));
    }
    let errors: u64 = points
        .iter()
        .filter(|p| {
            p.attributes()
                .any(|kv| kv.key.as_str() == "error.type" && kv.value.as_str() == "tool_error")
        })
        .map(|p| p.count())
        .sum();
    assert_eq!(errors, 1, "the denial is typed tool_error");

    let decisions = find("capgate.guard.decisions");
    let AggregatedMetrics::U64(MetricData::Sum(sum)) = decisions.data() else {
        panic!("capgate.guard.decisions is not a u64 counter");
    };
    let count = |decision: &str| -> u64 {
        sum.data_points()
            .filter(|p| is_tool(p.attributes()))
            .filter(|p| {
                p.attributes().any(|kv| {
                    kv.key.as_str() == "capgate.decision" && kv.value.as_str() == decision
                })
            })
            .map(|p| p.value())
            .sum()
    };
    assert_eq!(count("allow"), 2);
    assert_eq!(count("deny"), 1);

    let guard = find("capgate.guard.duration");
    assert_eq!(guard.unit(), "s");
    let AggregatedMetrics::F64(MetricData::Histogram(g)) = guard.data() else {
        panic!("capgate.guard.duration is not an f64 histogram");
    };
    assert_eq!(
        g.data_points()
            .filter(|p| is_tool(p.attributes()))
            .map(|p| p.count())
            .sum::<u64>(),
        3
    );
}

/// An anomaly rule that fires revokes the task: the denial's span and the task span say which
/// rule, and the task span's end reason is `revoked`.
#[tokio::test]
async fn an_anomaly_revocation_is_on_the_task_span() {
    let fx = Fixture::with(
        "[anomaly]\nrevoke_after_denials = 2\nrevoke_after_out_of_intent = 0\n",
        "fs_read",
        "fs_write",
    );
    let (task, client) = fx.session("agent-probe", "probe the secrets").await;
    let first = call(&client, "fs_read", "secret/a.pem", None).await;
    assert!(denial_of(&first).get("task_revoked").is_none());
    let second = call(&client, "fs_read", "secret/b.pem", None).await;
    assert_eq!(
        denial_of(&second)["task_revoked"]["revoked_by"],
        "anomaly:revoke_after_denials"
    );
    assert_eq!(fx.reads.load(Ordering::SeqCst), 0, "nothing was read");
    client.cancel().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = trace(&task.record.trace_id);
        if spans.iter().any(|s| s.name == "task probe the secrets") {
            break spans;
        }
        assert!(Instant::now() < deadline, "no task span: {spans:#?}");
        fx.host.telemetry().flush();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let task_span = named(&spans, "task probe the secrets");
    assert_eq!(text_attr(task_span, "capgate.task.end_reason"), "revoked");
    assert_eq!(
        text_attr(task_span, "capgate.task.revoked_by"),
        "anomaly:revoke_after_denials"
    );
    assert_eq!(int_attr(task_span, "capgate.action.denied"), 2);
    let calls = call_spans(&spans);
    assert_eq!(
        text_attr(calls[1], "capgate.task.revoked_by"),
        "anomaly:revoke_after_denials"
    );
    let stored = fx.host.ledger().task(&task.record.id).unwrap().unwrap();
    assert_eq!(
        stored.revoked_by.as_deref(),
        Some("anomaly:revoke_after_denials")
    );
}

/// A 2026-07-28 client: the span carries the protocol version, the JSON-RPC id and the model's
/// tool call id from `_meta`, and no `mcp.session.id` (that revision has no sessions); the
/// guardrail verdict names the tool call it is about.
#[tokio::test]
async fn a_2026_07_28_call_follows_the_current_conventions() {
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _, ServiceExt as _};
    let fx = Fixture::new();
    let task = fx.begin("agent-2026", "the new protocol");
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let session = fx
        .host
        .session(capgate_authz::Transport::Stdio, Some(task.token.clone()));
    tokio::spawn(async move {
        if let Ok(server) = session.serve(server_io).await {
            let _ = server.waiting().await;
        }
    });
    let client = ()
        .serve_with_lifecycle(
            client_io,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("discover");
    let mut params =
        CallToolRequestParams::new("fs_read").with_arguments(args(json!({"path": "docs/a.txt"})));
    params
        .meta
        .get_or_insert_with(Default::default)
        .insert("gen_ai.tool.call.id".into(), json!("call_7f3a"));
    let r = client.call_tool(params).await.expect("answered");
    assert_eq!(r.is_error, Some(false), "{r:?}");
    client.cancel().await.unwrap();

    let spans = trace(&task.record.trace_id);
    let c = named(&spans, "tools/call fs_read");
    assert_unique_keys(c);
    assert_eq!(text_attr(c, "mcp.protocol.version"), "2026-07-28");
    assert!(attr(c, "mcp.session.id").is_none());
    assert_eq!(text_attr(c, "gen_ai.tool.call.id"), "call_7f3a");
    assert!(!text_attr(c, "jsonrpc.request.id").is_empty());
    assert_eq!(
        text_attr(guardrail(&spans, c), "gen_ai.guardrail.target.id"),
        "call_7f3a"
    );
    let audit = AuditLog::read_all(&fx.host.config().audit_file(), 1);
    let line = audit
        .iter()
        .find(|r| r.kind == "call" && r.task.as_deref() == Some(task.record.id.as_str()))
        .expect("the call's audit line");
    assert_eq!(
        line.jsonrpc_id.as_deref(),
        Some(text_attr(c, "jsonrpc.request.id").as_str())
    );
    assert_eq!(
        line.span_id.as_deref(),
        Some(c.span_context.span_id().to_string().as_str())
    );
}

fn denial_of(r: &CallToolResult) -> &Value {
    assert_eq!(r.is_error, Some(true), "{r:?}");
    &r.structured_content.as_ref().expect("structured")["capgate"]
}
