//! Transports: how requests reach a session. stdio (one client, the parent process) and
//! streamable HTTP (`/mcp`, plus the task API under `/v1/tasks`).
//!
//! Invariant: on HTTP nothing reaches MCP processing or the task API before the `Host` and
//! `Origin` headers are checked (DNS rebinding) and the bearer token is verified, unrevoked and
//! unexpired; a request that fails any of these gets its 4xx (or 503, when capgate cannot tell)
//! here.

pub mod http;
pub mod stdio;

pub use http::{HttpOptions, serve_http};
pub use stdio::serve_stdio;
