//! OpenTelemetry plumbing: exporters from the standard `OTEL_*` variables (or config), the
//! providers, and the id generator that lets a task's root span keep the ids fixed at issuance.
//!
//! Invariant: with no endpoint configured, no exporter exists and nothing is sent; with one,
//! export runs on the batch processor's own thread with a bounded queue, so a collector that is
//! down or slow drops spans rather than blocking a call. The gRPC exporters' connections live on
//! a runtime owned by [`Providers`], so export works from any caller (an async server, a CLI
//! whose runtime is never driven) until the providers are shut down.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider,
};

use crate::config::TelemetryConfig;
use crate::error::Error;

/// Export timeout when the `OTEL_EXPORTER_OTLP_*TIMEOUT` variables do not set one.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except when [`with_fixed_ids`] asks for specific ones on this thread: a task's
/// root span is exported when the task ends, but its ids were fixed (and handed to every call
/// span as parent) when the task began.
#[derive(Debug, Default)]
pub struct TaskIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for TaskIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.with(|c| c.get()) {
            Some((t, _)) => t,
            None => self.random.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        // Read, not taken: the SDK asks for the span id before the trace id. The slot is
        // cleared by `with_fixed_ids` once the span is built.
        match NEXT_IDS.with(|c| c.get()) {
            Some((_, s)) => s,
            None => self.random.new_span_id(),
        }
    }
}

/// Runs `f` with the spans built on this thread during `f` taking the given ids (build exactly
/// one). Only spans of a provider built with [`TaskIdGenerator`] obey.
pub fn with_fixed_ids<R>(trace: TraceId, span: SpanId, f: impl FnOnce() -> R) -> R {
    /// Clears the slot even if `f` panics, so no later span on this thread reuses the ids.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            NEXT_IDS.with(|c| c.set(None));
        }
    }
    NEXT_IDS.with(|c| c.set(Some((trace, span))));
    let _reset = Reset;
    f()
}

/// Longest a stop waits for the OTLP exporters to hand over what is queued.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The OpenTelemetry providers of a running capgate.
#[derive(Clone, Default)]
pub struct Providers {
    /// Traces; `None` when nothing is exported.
    pub tracer: Option<SdkTracerProvider>,
    /// Metrics; `None` when nothing is exported.
    pub meter: Option<SdkMeterProvider>,
    /// Where spans go, for the startup message.
    pub description: String,
    /// Keeps the gRPC exporters' runtime alive; declared last so the providers (which flush on
    /// their last drop) go first.
    _grpc_runtime: Option<Arc<GrpcRuntime>>,
}

/// The runtime the gRPC exporters' connections run on. tonic spawns its connection worker onto
/// the runtime current when the exporter is built, while the batch processor and the periodic
/// reader export from plain threads: borrowing the caller's runtime would stall export whenever
/// that runtime is not being driven (`capgate task end` never drives its own), and end it when
/// the caller's runtime stops, possibly before the final flush.
struct GrpcRuntime(Option<tokio::runtime::Runtime>);

impl Drop for GrpcRuntime {
    fn drop(&mut self) {
        // A plain drop blocks, which panics on an async thread, and providers may well be
        // dropped on one. Pending export was flushed by `Providers::shutdown`.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Providers {
    /// No export at all.
    pub fn none() -> Self {
        Providers {
            tracer: None,
            meter: None,
            description: "no OTLP endpoint configured; traces are not exported".into(),
            _grpc_runtime: None,
        }
    }

    /// Exports spans to `exporter` synchronously (for tests with the in-memory exporter).
    #[cfg(feature = "test-util")]
    pub fn with_span_exporter(
        exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static,
    ) -> Self {
        let tracer = SdkTracerProvider::builder()
            .with_id_generator(TaskIdGenerator::default())
            .with_resource(resource(None))
            .with_simple_exporter(exporter)
            .build();
        Providers {
            tracer: Some(tracer),
            meter: None,
            description: "test exporter".into(),
            _grpc_runtime: None,
        }
    }

    /// Also collects metrics into `exporter`, read when [`Providers::flush`] runs (for tests with
    /// the in-memory metric exporter).
    #[cfg(feature = "test-util")]
    pub fn with_metric_exporter(
        mut self,
        exporter: impl opentelemetry_sdk::metrics::exporter::PushMetricExporter,
    ) -> Self {
        let meter = SdkMeterProvider::builder()
            .with_resource(resource(None))
            .with_reader(PeriodicReader::builder(exporter).build())
            .build();
        self.meter = Some(meter);
        self
    }

    /// Builds exporters from `OTEL_EXPORTER_OTLP_*` (which win) and `[telemetry]`. Needs no
    /// runtime of the caller's: gRPC export gets one of its own.
    pub fn from_env(config: &TelemetryConfig) -> Result<Self, Error> {
        crate::install_crypto_provider();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let traces_endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| config.otlp_endpoint.clone());
        if traces_endpoint.is_none() && endpoint.is_none() {
            return Ok(Self::none());
        }
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .or_else(|| config.otlp_protocol.clone())
            .unwrap_or_else(|| "http/protobuf".into());
        let grpc = match protocol.as_str() {
            "grpc" => true,
            "http/protobuf" => false,
            other => {
                return Err(Error::Telemetry(format!(
                    "OTLP protocol `{other}` is not supported; use `grpc` or `http/protobuf`"
                )));
            }
        };
        let err = Error::Exporter;

        // An endpoint from capgate.toml is passed explicitly; one from the environment is left to
        // the exporter, which appends the signal path (`/v1/traces`) for HTTP as the spec says.
        let explicit = if env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() && traces_endpoint.is_none()
        {
            endpoint.clone()
        } else {
            None
        };
        // capgate's own default timeout is short so that shutdown with a dead collector stays
        // quick; the standard variables still win when set (a programmatic timeout would
        // override them).
        let timeout = |signal: &str| {
            if env(signal).is_some() || env("OTEL_EXPORTER_OTLP_TIMEOUT").is_some() {
                None
            } else {
                Some(EXPORT_TIMEOUT)
            }
        };
        let traces_timeout = timeout("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT");
        let metrics_timeout = timeout("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT");
        let grpc_runtime = if grpc {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("capgate-otlp")
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting the OTLP export runtime", e))?;
            Some(Arc::new(GrpcRuntime(Some(rt))))
        } else {
            None
        };
        // The tonic channels are built (and spawn their workers) inside the export runtime.
        let in_export_runtime = grpc_runtime
            .as_ref()
            .and_then(|r| r.0.as_ref())
            .map(|rt| rt.enter());
        let span_exporter = if grpc {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(t) = traces_timeout {
                b = b.with_timeout(t);
            }
            if let Some(e) = &explicit {
                b = b.with_endpoint(e.clone());
            }
            b.build().map_err(err)?
        } else {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(t) = traces_timeout {
                b = b.with_timeout(t);
            }
            if let Some(e) = &explicit {
                b = b.with_endpoint(format!("{}/v1/traces", e.trim_end_matches('/')));
            }
            b.build().map_err(err)?
        };
        let metric_exporter = if grpc {
            let mut b = opentelemetry_otlp::MetricExporter::builder().with_tonic();
            if let Some(t) = metrics_timeout {
                b = b.with_timeout(t);
            }
            if let Some(e) = &explicit {
                b = b.with_endpoint(e.clone());
            }
            b.build().map_err(err)?
        } else {
            let mut b = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(t) = metrics_timeout {
                b = b.with_timeout(t);
            }
            if let Some(e) = &explicit {
                b = b.with_endpoint(format!("{}/v1/metrics", e.trim_end_matches('/')));
            }
            b.build().map_err(err)?
        };
        drop(in_export_runtime);
        let resource = resource(config.service_name.as_deref());
        let processor = BatchSpanProcessor::builder(span_exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(8192)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let tracer = SdkTracerProvider::builder()
            .with_id_generator(TaskIdGenerator::default())
            .with_resource(resource.clone())
            .with_span_processor(processor)
            .build();
        let reader = PeriodicReader::builder(metric_exporter)
            .with_interval(Duration::from_secs(10))
            .build();
        let meter = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        let shown = traces_endpoint.or(endpoint).unwrap_or_default();
        Ok(Providers {
            tracer: Some(tracer),
            meter: Some(meter),
            description: format!("exporting traces and metrics over OTLP ({protocol}) to {shown}"),
            _grpc_runtime: grpc_runtime,
        })
    }

    /// Exports what is queued and stops the exporters, for at most [`SHUTDOWN_GRACE`]: a
    /// collector that accepts and never answers must not keep capgate from stopping (what it
    /// did not take is dropped, and said so). Blocks; call it off the async threads.
    pub fn shutdown(&self) {
        if self.tracer.is_none() && self.meter.is_none() {
            return;
        }
        let (tracer, meter) = (self.tracer.clone(), self.meter.clone());
        let (done, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("capgate-otlp-shutdown".into())
            .spawn(move || {
                if let Some(t) = &tracer {
                    let _ = t.force_flush();
                    let _ = t.shutdown();
                }
                if let Some(m) = &meter {
                    let _ = m.force_flush();
                    let _ = m.shutdown();
                }
                let _ = done.send(());
            });
        if spawned.is_err() || wait.recv_timeout(SHUTDOWN_GRACE).is_err() {
            tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "the OTLP endpoint did not take the last spans and metrics in time; they are dropped"
            );
        }
    }

    /// Exports what is queued.
    pub fn flush(&self) {
        if let Some(t) = &self.tracer {
            let _ = t.force_flush();
        }
        if let Some(m) = &self.meter {
            let _ = m.force_flush();
        }
    }
}

/// The resource: `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` win, then config, then
/// `capgate`.
fn resource(service_name: Option<&str>) -> Resource {
    let from_env = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .ok()
            .is_some_and(|v| v.contains("service.name="));
    let b = Resource::builder();
    if from_env {
        b.build()
    } else {
        b.with_service_name(service_name.unwrap_or("capgate").to_owned())
            .build()
    }
}

/// Installs the process-wide `tracing` subscriber: human logs on stderr (filter from
/// `CAPGATE_LOG`, default `warn,capgate=info`), and, when `providers` export traces, the
/// OpenTelemetry layer for capgate's call spans. stdout is left alone: over stdio it carries MCP.
pub fn install_tracing(providers: &Providers) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let fmt_filter = EnvFilter::try_from_env("CAPGATE_LOG").unwrap_or_else(|_| {
        EnvFilter::new("warn,capgate=info,capgate_host=info,capgate::call=off")
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(fmt_filter);
    let otel = providers.tracer.as_ref().map(|p| {
        // A call span describes the call, not capgate's source: no code location, thread,
        // `tracing` target or busy/idle timings (none of them in any semantic convention).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("capgate"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target("capgate::call", LevelFilter::INFO))
    });
    // Not `.with(Option<layer>)`: an absent optional layer declares interest in every callsite,
    // which switches off the global level hint, so every span of every crate (capgate's call
    // spans, rmcp's) would be built and entered on every call only to be dropped.
    let _ = match otel {
        Some(otel) => tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init(),
        None => tracing_subscriber::registry().with(fmt).try_init(),
    };
}
