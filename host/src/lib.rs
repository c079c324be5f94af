//! capgate-host: an MCP server that hosts the tools LLM agents call, and guards every call with a
//! Biscuit capability attenuated for one task.
//!
//! A request flows one way: [`transport`] → [`session`] → [`guard`] → tool (through
//! [`registry::dispatch`], the only door), with [`issuance`] beside it minting task tokens and
//! [`telemetry`] observing. [`capability`] owns the token vocabulary, [`store`] and [`ledger`]
//! keep tasks and revocations, [`policy`] parses the Datalog the operator ships.

pub mod capability;
pub mod config;
pub mod error;
pub mod guard;
pub mod host;
pub mod issuance;
pub mod ledger;
pub mod policy;
pub mod registry;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod tool;
pub mod transport;

pub use config::Config;
pub use error::Error;
pub use host::{Host, HostBuilder, InProcessError};
pub use registry::Registry;
pub use tool::{
    Arguments, Content, DynamicTool, Operation, Resource, Tool, ToolContext, ToolError, ToolFuture,
    ToolInput, ToolOutput, ToolSpec, TypedTool,
};

/// Installs ring as the process's TLS crypto provider (capgate's HTTP clients are built without
/// a bundled one). Idempotent; call it before building any HTTP client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Re-exports for tool authors who need the MCP model types.
pub use rmcp;
