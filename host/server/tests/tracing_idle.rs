//! With no exporter configured, the process-wide subscriber must not build spans nobody reads:
//! a call span or a dependency's span would otherwise be allocated, entered and exited on every
//! call (13.6k instructions per call, BENCHMARKS.md "Where a guarded call's cost goes").
//!
//! Its own test binary: the subscriber is global to the process.

use capgate_server::telemetry::Providers;
use capgate_server::telemetry::otel::install_tracing;

#[test]
fn without_an_exporter_no_span_is_built() {
    // The default filter applies only when CAPGATE_LOG is unset.
    assert!(
        std::env::var_os("CAPGATE_LOG").is_none(),
        "run without CAPGATE_LOG"
    );
    install_tracing(&Providers::none());
    let call = tracing::info_span!(target: "capgate::call", "tools/call");
    assert!(
        call.is_disabled(),
        "capgate's call span is built with no exporter"
    );
    let dependency = tracing::info_span!(target: "rmcp::service", "serve_inner");
    assert!(
        dependency.is_disabled(),
        "a dependency's info span is built although only warnings are logged"
    );
    // What is logged still is: capgate's own info events reach the fmt layer.
    assert!(tracing::enabled!(target: "capgate", tracing::Level::INFO));
}
