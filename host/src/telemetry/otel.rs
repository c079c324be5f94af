//! OpenTelemetry plumbing: exporters from the standard `OTEL_*` variables (or config), the
//! providers, and the id generator that lets a task's root span keep the ids fixed at issuance.
//!
//! Invariant: with no endpoint configured, no exporter exists and nothing is sent; with one,
//! export runs on the batch processor's own thread with a bounded queue, so a collector that is
//! down or slow drops spans rather than blocking a call.

use std::cell::Cell;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider,
    SpanExporter,
};

use crate::config::TelemetryConfig;
use crate::error::Error;

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

/// Runs `f` with the next span built on this thread taking the given ids.
pub fn with_fixed_ids<R>(trace: TraceId, span: SpanId, f: impl FnOnce() -> R) -> R {
    NEXT_IDS.with(|c| c.set(Some((trace, span))));
    let r = f();
    NEXT_IDS.with(|c| c.set(None));
    r
}

/// The OpenTelemetry providers of a running capgate.
#[derive(Clone, Default)]
pub struct Providers {
    /// Traces; `None` when nothing is exported.
    pub tracer: Option<SdkTracerProvider>,
    /// Metrics; `None` when nothing is exported.
    pub meter: Option<SdkMeterProvider>,
    /// Where spans go, for the startup message.
    pub description: String,
}

impl Providers {
    /// No export at all.
    pub fn none() -> Self {
        Providers {
            tracer: None,
            meter: None,
            description: "no OTLP endpoint configured; traces are not exported".into(),
        }
    }

    /// Exports spans to `exporter` synchronously (for tests with the in-memory exporter).
    pub fn with_span_exporter(exporter: impl SpanExporter + 'static) -> Self {
        let tracer = SdkTracerProvider::builder()
            .with_id_generator(TaskIdGenerator::default())
            .with_resource(resource(None))
            .with_simple_exporter(exporter)
            .build();
        Providers {
            tracer: Some(tracer),
            meter: None,
            description: "test exporter".into(),
        }
    }

    /// Builds exporters from `OTEL_EXPORTER_OTLP_*` (which win) and `[telemetry]`. Must run
    /// inside a Tokio runtime (the gRPC client needs one).
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
        let err = |e: opentelemetry_otlp::ExporterBuildError| Error::Telemetry(e.to_string());

        // An endpoint from capgate.toml is passed explicitly; one from the environment is left to
        // the exporter, which appends the signal path (`/v1/traces`) for HTTP as the spec says.
        let explicit = if env("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() && traces_endpoint.is_none()
        {
            endpoint.clone()
        } else {
            None
        };
        let span_exporter = if grpc {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(Duration::from_secs(5));
            if let Some(e) = &explicit {
                b = b.with_endpoint(e.clone());
            }
            b.build().map_err(err)?
        } else {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(Duration::from_secs(5));
            if let Some(e) = &explicit {
                b = b.with_endpoint(format!("{}/v1/traces", e.trim_end_matches('/')));
            }
            b.build().map_err(err)?
        };
        let metric_exporter = if grpc {
            let mut b = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_timeout(Duration::from_secs(5));
            if let Some(e) = &explicit {
                b = b.with_endpoint(e.clone());
            }
            b.build().map_err(err)?
        } else {
            let mut b = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(Duration::from_secs(5));
            if let Some(e) = &explicit {
                b = b.with_endpoint(format!("{}/v1/metrics", e.trim_end_matches('/')));
            }
            b.build().map_err(err)?
        };
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
        })
    }

    /// Exports what is queued and stops the exporters. Blocks; call it off the async threads.
    pub fn shutdown(&self) {
        if let Some(t) = &self.tracer {
            let _ = t.force_flush();
            let _ = t.shutdown();
        }
        if let Some(m) = &self.meter {
            let _ = m.force_flush();
            let _ = m.shutdown();
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
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("capgate"))
            .with_filter(Targets::new().with_target("capgate::call", LevelFilter::INFO))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
}
