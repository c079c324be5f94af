//! capgate-testkit: the fixtures capgate's tests and benchmarks share, so that no test file
//! sets up an installation, a token or a client of its own.
//!
//! * [`install`]: a scratch installation driven through the real `capgate` binary (CLI, stdio,
//!   HTTP);
//! * [`server`]: a running `capgate serve --http`, and a plain HTTP origin that counts requests;
//! * [`client`]: MCP client helpers (calls, results, denials, offline attenuation);
//! * [`inproc`]: an in-process host over a scratch state directory, its tokens and tasks, and
//!   an rmcp client over an in-memory pipe;
//! * [`tools`]: small tools whose runs are counted, to prove a refused call ran nothing;
//! * [`faults`]: a store that fails on demand.
//!
//! Invariant: every fixture builds capgate the way an operator would (a `capgate.toml`, a root
//! key file, tokens minted with capgate's own functions), never a shortcut around the guard.
#![allow(missing_docs, unreachable_pub)]

pub mod client;
pub mod faults;
pub mod fuzz;
pub mod inproc;
pub mod install;
pub mod postgres;
pub mod server;
pub mod tools;

pub use client::*;
pub use install::{Capgate, capgate_bin, example_bin, pip_target};
pub use postgres::Postgres;
pub use server::{Origin, RawSession, Server};

/// The test process's HTTP clients (reqwest, rmcp's client) use rustls with ring, the provider
/// capgate ships; it must be installed once before any client is built.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
