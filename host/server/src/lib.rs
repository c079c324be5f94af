//! capgate-server: capgate as a running MCP server.
//!
//! A request flows one way: [`transport`] → [`session`] → [`pipeline`] → the door
//! ([`capgate_core::door`]: prepare, the guard from capgate-authz, the audit log, dispatch) →
//! tool; [`answer`] turns every outcome into what the client reads; [`telemetry`] observes and
//! keeps the audit log; [`ledger`] and [`store`] keep tasks and revocations; [`config`] is the
//! validated `capgate.toml`; [`host`] wires it all from one config.
//!
//! Invariant: the [`Host`] builds exactly one door, and nothing in this crate holds a tool
//! outside it.

pub mod answer;
pub mod config;
pub mod error;
pub mod host;
pub mod identity;
pub mod ledger;
pub mod pipeline;
pub mod session;
mod shared;
pub mod store;
pub mod telemetry;
pub mod transport;

pub use config::Config;
pub use error::Error;
pub use host::{Host, HostBuilder, InProcessError};

/// Installs ring as the process's TLS crypto provider (capgate's HTTP clients are built without
/// a bundled one). Idempotent; call it before building any HTTP client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Re-exports for those who need the MCP model types.
pub use rmcp;
