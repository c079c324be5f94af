//! Real OTLP from the real binary: `capgate serve`, configured only by the standard
//! `OTEL_EXPORTER_OTLP_*` variables, exports over HTTP/protobuf and over gRPC to a receiver in
//! this test that decodes the wire format (the opentelemetry-proto messages); a task's spans
//! (issuance, calls, executions, and the task span at its end) arrive in one trace. A collector
//! that is down or never answers costs the calls nothing: each still answers quickly and is
//! audited exactly once.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use capgate_testkit::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

/// A decoded span and the `service.name` of the resource it came with.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

/// What the receiver has decoded so far.
#[derive(Default)]
struct Inbox {
    spans: Mutex<Vec<Got>>,
    metrics: Mutex<BTreeSet<String>>,
    /// Requests whose body was not the protobuf the protocol requires.
    rejected: Mutex<Vec<String>>,
}

impl Inbox {
    fn traces(&self, req: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| string(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn metrics(&self, req: ExportMetricsServiceRequest) {
        let mut names = self.metrics.lock().unwrap();
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                names.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
    }
}

/// An OTLP receiver on its own thread and runtime, so the test's blocking calls never stall it.
struct Receiver {
    endpoint: String,
    inbox: Arc<Inbox>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    fn env(self) -> &'static str {
        match self {
            Protocol::Http => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

impl Receiver {
    fn start(protocol: Protocol) -> Self {
        let inbox = Arc::new(Inbox::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
        let served = Arc::clone(&inbox);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let shutdown = async {
                    let _ = stop_rx.await;
                };
                match protocol {
                    Protocol::Http => {
                        let app = axum::Router::new()
                            .route("/v1/traces", axum::routing::post(http_traces))
                            .route("/v1/metrics", axum::routing::post(http_metrics))
                            .with_state(served);
                        axum::serve(listener, app)
                            .with_graceful_shutdown(shutdown)
                            .await
                            .unwrap();
                    }
                    Protocol::Grpc => {
                        let svc = Grpc(served);
                        tonic::transport::Server::builder()
                            .add_service(TraceServiceServer::new(svc.clone()))
                            .add_service(MetricsServiceServer::new(svc))
                            .serve_with_incoming_shutdown(
                                tonic::transport::server::TcpIncoming::from(listener),
                                shutdown,
                            )
                            .await
                            .unwrap();
                    }
                }
            });
            // Dropping the runtime here closes every connection the exporter still holds.
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Receiver {
            endpoint: format!("http://{addr}"),
            inbox,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops serving and closes the port: the collector is down from here on.
    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn spans(&self) -> Vec<Got> {
        self.inbox.spans.lock().unwrap().clone()
    }

    fn metric_names(&self) -> BTreeSet<String> {
        self.inbox.metrics.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans received, returning them.
    fn wait_spans(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received: {:#?}",
                spans.iter().map(|g| &g.span.name).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_all_protobuf(&self) {
        let rejected = self.inbox.rejected.lock().unwrap();
        assert!(rejected.is_empty(), "undecodable requests: {rejected:?}");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// OTLP/HTTP requires `application/x-protobuf` bodies (capgate sends no JSON).
fn protobuf_body(inbox: &Inbox, headers: &HeaderMap) -> bool {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/x-protobuf" {
        inbox
            .rejected
            .lock()
            .unwrap()
            .push(format!("content-type `{ct}`"));
        return false;
    }
    true
}

fn protobuf_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
}

/// One OTLP/HTTP export: a protobuf `Req` the inbox `take`s, answered by an empty protobuf
/// `Resp`; anything else is recorded as rejected.
fn http_export<Req: Message + Default, Resp: Message + Default>(
    inbox: &Inbox,
    headers: &HeaderMap,
    body: Bytes,
    take: impl FnOnce(&Inbox, Req),
) -> Response {
    if !protobuf_body(inbox, headers) {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    match Req::decode(body) {
        Ok(req) => {
            take(inbox, req);
            protobuf_response(Resp::default().encode_to_vec())
        }
        Err(e) => {
            inbox.rejected.lock().unwrap().push(e.to_string());
            StatusCode::BAD_REQUEST.into_response()
        }
    }
}

async fn http_traces(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> Response {
    http_export::<_, ExportTraceServiceResponse>(&inbox, &headers, body, Inbox::traces)
}

async fn http_metrics(
    State(inbox): State<Arc<Inbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    http_export::<_, ExportMetricsServiceResponse>(&inbox, &headers, body, Inbox::metrics)
}

#[derive(Clone)]
struct Grpc(Arc<Inbox>);

/// Implements an OTLP gRPC collector service for [`Grpc`]: each export goes to the inbox's
/// `take` and is answered empty. (The services differ only in their message types.)
macro_rules! grpc_export {
    ($service:ident, $req:ty, $resp:ty, $take:ident) => {
        #[tonic::async_trait]
        impl $service for Grpc {
            async fn export(
                &self,
                request: tonic::Request<$req>,
            ) -> Result<tonic::Response<$resp>, tonic::Status> {
                self.0.$take(request.into_inner());
                Ok(tonic::Response::new(<$resp>::default()))
            }
        }
    };
}

grpc_export!(
    TraceService,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
    traces
);
grpc_export!(
    MetricsService,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
    metrics
);

fn string(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            Some(any_value::Value::IntValue(i)) => Some(i.to_string()),
            Some(any_value::Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        })
}

fn attr(span: &Span, key: &str) -> String {
    string(&span.attributes, key).unwrap_or_else(|| panic!("span `{}` has no `{key}`", span.name))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn in_trace<'a>(spans: &'a [Got], trace_id: &str) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|g| hex(&g.span.trace_id) == trace_id)
        .collect()
}

fn one<'a>(spans: &[&'a Got], name: &str) -> &'a Span {
    let found: Vec<&&Got> = spans.iter().filter(|g| g.span.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` expected: {spans:#?}");
    &found[0].span
}

/// A caller's own W3C trace id and span id, distinct per call of this function.
fn caller_ids() -> (String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    (
        format!(
            "{:032x}",
            nanos ^ (u128::from(std::process::id()) << 64) ^ u128::from(n)
        ),
        format!("{:016x}", (u64::from(std::process::id()) << 32) | n),
    )
}

/// `capgate serve --http` exporting to `endpoint` over `protocol`.
fn serve(cg: &Capgate, protocol: Protocol, endpoint: &str) -> Server {
    cg.serve_http_with(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env()),
            ("OTEL_SERVICE_NAME", "capgate-e2e"),
        ],
    )
}

/// `POST /v1/tasks` for a task of `purpose` that reads `acme/`; returns (task id, task token,
/// trace id).
async fn begin_http(server: &Server, agent: &str, purpose: &str) -> (String, String, String) {
    let intent =
        json!({"purpose": purpose, "tools": ["fs_read"], "resources": {"fs_read": ["acme/"]}});
    let resp = server.post_task(agent, None, &intent).await;
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let v: Value = resp.json().await.unwrap();
    (
        v["task_id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
        v["trace_id"].as_str().unwrap().to_owned(),
    )
}

/// Reads `path`, which must succeed, then pauses 20 ms (a steady trickle of calls); how long
/// the call took.
async fn timed_read(client: &Client, path: &str) -> Duration {
    let started = Instant::now();
    call_ok(client, "fs_read", json!({"path": path})).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(20)).await;
    took
}

/// A task's whole life over real OTLP: issued over HTTP, one allowed and one denied call, ended;
/// every span in the task's trace, parented as the design says.
async fn one_trace_per_task(protocol: Protocol, end_with_cli: bool) {
    let receiver = Receiver::start(protocol);
    let cg = Capgate::new();
    let agent = cg.mint("agent-otlp", "acme", &["fs_read"], &[]);
    let server = serve(&cg, protocol, &receiver.endpoint);
    assert!(
        server.stderr.lock().unwrap().contains(protocol.env()),
        "the startup line names the protocol: {}",
        server.stderr.lock().unwrap()
    );
    let (task_id, task_token, trace_id) = begin_http(&server, &agent, "otlp e2e").await;

    let client = server.client(&task_token).await;
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    let secret = json!({"path": "globex/plans/secret-plan.txt"});
    call_denied(&client, "fs_read", secret).await;
    client.cancel().await.unwrap();

    // A caller that sends W3C trace context in the HTTP `traceparent` header (no `_meta`):
    // its call joins the caller's trace.
    let (caller_trace, caller_span) = caller_ids();
    let cfg = StreamableHttpClientTransportConfig::with_uri(server.url())
        .auth_header(task_token.clone())
        .custom_headers(HashMap::from([(
            HeaderName::from_static("traceparent"),
            HeaderValue::from_str(&format!("00-{caller_trace}-{caller_span}-01")).unwrap(),
        )]));
    let traced = ().serve(StreamableHttpClientTransport::from_config(cfg)).await.unwrap();
    call_ok(&traced, "fs_read", json!({"path": "acme/docs/notes.md"})).await;
    traced.cancel().await.unwrap();

    if end_with_cli {
        // The CLI is another process: it exports the task span itself before it exits.
        let out = cg
            .cmd()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.env())
            .env("OTEL_SERVICE_NAME", "capgate-e2e")
            .args(["task", "end", &task_id])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        let resp = server.task_request(Method::DELETE, &task_id, &agent).await;
        assert_eq!(resp.status(), 200);
    }

    receiver.wait_spans("the task's spans", |spans| {
        let t = in_trace(spans, &trace_id);
        t.iter().any(|g| g.span.name == "task otlp e2e")
            && t.iter().any(|g| g.span.name == "task issuance")
            && t.iter()
                .filter(|g| g.span.name == "tools/call fs_read")
                .count()
                == 2
            && t.iter().any(|g| g.span.name == "execute_tool fs_read")
    });
    let all = receiver.wait_spans("the caller's call", |spans| {
        in_trace(spans, &caller_trace)
            .iter()
            .any(|g| g.span.name == "execute_tool fs_read")
    });
    let spans = in_trace(&all, &trace_id);
    assert!(
        spans.iter().all(|g| g.service == "capgate-e2e"),
        "{spans:#?}"
    );

    let task = one(&spans, "task otlp e2e");
    assert!(task.parent_span_id.is_empty(), "the task span is the root");
    assert_eq!(task.kind, SpanKind::Internal as i32);
    assert_eq!(attr(task, "capgate.task.id"), task_id);
    assert_eq!(attr(task, "capgate.task.end_reason"), "completed");
    // Two calls from the first client, one from the caller with trace context.
    assert_eq!(attr(task, "capgate.action.calls"), "3");
    assert_eq!(attr(task, "capgate.action.denied"), "1");

    let issuance = one(&spans, "task issuance");
    assert_eq!(issuance.parent_span_id, task.span_id);
    assert_eq!(attr(issuance, "capgate.decision"), "allow");

    let calls: Vec<&Span> = spans
        .iter()
        .map(|g| &g.span)
        .filter(|s| s.name == "tools/call fs_read")
        .collect();
    for c in &calls {
        assert_eq!(c.kind, SpanKind::Server as i32);
        assert_eq!(
            c.parent_span_id, task.span_id,
            "calls are children of the task span"
        );
        assert_eq!(attr(c, "network.transport"), "tcp");
        assert_eq!(
            attr(c, "mcp.session.id").len(),
            36,
            "streamable HTTP has sessions: the call span names its own"
        );
        assert_eq!(attr(c, "capgate.task.id"), task_id);
        assert!(task.start_time_unix_nano <= c.start_time_unix_nano);
        assert!(c.end_time_unix_nano <= task.end_time_unix_nano);
    }
    let allowed = calls
        .iter()
        .find(|c| attr(c, "capgate.decision") == "allow")
        .expect("the allowed call");
    let denied = calls
        .iter()
        .find(|c| attr(c, "capgate.decision") == "deny")
        .expect("the denied call");
    assert_eq!(
        denied.status.as_ref().map(|s| s.code),
        Some(SpanStatus::Error as i32)
    );
    let exec = one(&spans, "execute_tool fs_read");
    assert_eq!(exec.parent_span_id, allowed.span_id);
    assert_eq!(exec.kind, SpanKind::Internal as i32);
    assert!(
        !spans
            .iter()
            .any(|g| g.span.parent_span_id == denied.span_id
                && g.span.name != "run_guardrail capgate"),
        "nothing ran under the denied call"
    );

    // The header's call: the caller's child in the caller's trace, linked to the task span.
    let caller = in_trace(&all, &caller_trace);
    let c = one(&caller, "tools/call fs_read");
    assert_eq!(hex(&c.parent_span_id), caller_span);
    assert_eq!(attr(c, "capgate.task.id"), task_id);
    assert_eq!(c.links.len(), 1, "{:?}", c.links);
    assert_eq!(hex(&c.links[0].trace_id), trace_id);
    assert_eq!(c.links[0].span_id, task.span_id);
    assert_eq!(
        one(&caller, "execute_tool fs_read").parent_span_id,
        c.span_id
    );

    // Metrics are exported every 10 s and on shutdown: stopping flushes them.
    let status = server.stop();
    assert!(status.success(), "clean shutdown: {status:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = [
        "mcp.server.operation.duration",
        "capgate.guard.decisions",
        "capgate.guard.duration",
    ];
    loop {
        let names = receiver.metric_names();
        if wanted.iter().all(|w| names.contains(*w)) {
            break;
        }
        assert!(Instant::now() < deadline, "metrics received: {names:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    receiver.assert_all_protobuf();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_puts_a_task_in_one_trace() {
    one_trace_per_task(Protocol::Http, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_puts_a_task_in_one_trace_even_when_the_cli_ends_it() {
    one_trace_per_task(Protocol::Grpc, true).await;
}

/// Calls with the collector gone after some export: each still answers quickly, and the audit
/// log holds exactly one line per call.
async fn collector_goes_down_mid_run(protocol: Protocol) {
    let mut receiver = Receiver::start(protocol);
    let cg = Capgate::new();
    let agent = cg.mint("agent-down", "acme", &["fs_read"], &[]);
    let server = serve(&cg, protocol, &receiver.endpoint);
    let (task_id, task_token, trace_id) = begin_http(&server, &agent, "collector outage").await;
    let client = server.client(&task_token).await;
    let mut calls = 0;
    for _ in 0..5 {
        call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
        calls += 1;
    }
    // Export works before the outage.
    receiver.wait_spans("the first calls", |spans| {
        in_trace(spans, &trace_id)
            .iter()
            .filter(|g| g.span.name == "tools/call fs_read")
            .count()
            == 5
    });
    receiver.stop();

    // Long enough for several batch exports (every 500 ms) to hit the dead endpoint.
    let outage = Instant::now();
    let mut slowest = Duration::ZERO;
    while outage.elapsed() < Duration::from_secs(3) || calls < 25 {
        slowest = slowest.max(timed_read(&client, "acme/docs/notes.md").await);
        calls += 1;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a call waited {slowest:?} while the collector was down"
    );
    client.cancel().await.unwrap();

    let lines = cg.audited_calls(&task_id);
    assert_eq!(lines.len(), calls, "one audit line per call");
    assert!(lines.iter().all(|l| l["decision"] == "allow"));
    assert!(lines.iter().all(|l| l["trace_id"] == trace_id.as_str()));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_collector_outage_neither_blocks_nor_loses_a_call() {
    collector_goes_down_mid_run(Protocol::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_collector_outage_neither_blocks_nor_loses_a_call() {
    collector_goes_down_mid_run(Protocol::Grpc).await;
}

/// A collector that accepts connections and never answers (the slow case): the exporter waits
/// on its own thread, and calls do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_does_not_slow_calls() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accept and hold every connection, reading nothing and answering nothing.
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let cg = Capgate::new();
    let agent = cg.mint("agent-slow", "acme", &["fs_read"], &[]);
    let server = serve(&cg, Protocol::Http, &endpoint);
    let (task_id, task_token, _) = begin_http(&server, &agent, "slow collector").await;
    let client = server.client(&task_token).await;
    let begun = Instant::now();
    let mut calls = 0;
    let mut slowest = Duration::ZERO;
    while begun.elapsed() < Duration::from_secs(3) {
        slowest = slowest.max(timed_read(&client, "acme/docs/readme.txt").await);
        calls += 1;
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "the exporter did connect to the silent collector"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a call waited {slowest:?} on a silent collector"
    );
    client.cancel().await.unwrap();
    assert_eq!(cg.audited_calls(&task_id).len(), calls);
    // Dropping the server kills it; its shutdown would wait for the silent collector.
    drop(server);
}
