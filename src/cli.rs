//! The command line: what an operator types.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// capgate: an MCP server that hosts agent tools behind per-task Biscuit capabilities.
#[derive(Debug, Parser)]
#[command(name = "capgate", version, about, long_about = None)]
pub struct Cli {
    /// Config file. Default: ./capgate.toml when it exists, else the embedded default.
    #[arg(long, global = true, env = "CAPGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where the root key, task store and audit log live (overrides `state_dir`).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over stdio or streamable HTTP.
    Serve(ServeArgs),
    /// Manage the root key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Mint and inspect agent tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Begin, end and look at tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Check the policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Prepare the task store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Look at the upstream MCP servers and accept their changed tool definitions.
    #[command(subcommand)]
    Upstream(UpstreamCommand),
}

/// `capgate upstream ...`.
#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// The configured upstreams, the names they host, and each tool's pin: `pinned`, or
    /// `CHANGED` (held back) when the definition a capgate listed last differs from its pin.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept the definitions a capgate listed last for an upstream's tools as their pins, so
    /// the tools held back are served again.
    Pin {
        /// The upstream's name.
        name: String,
        /// Only this tool (as the upstream names it).
        #[arg(long)]
        tool: Option<String>,
    },
}

/// `capgate store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Apply the schema migrations this capgate knows to the configured store (`serve` applies
    /// them too; run this ahead of a rollout so that replicas start on a ready schema). Refuses
    /// a schema newer than this capgate knows.
    Migrate,
}

/// `capgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve one client on stdin/stdout; its token comes from CAPGATE_TOKEN.
    #[arg(long, conflicts_with = "http")]
    pub stdio: bool,

    /// Serve streamable HTTP on this address (endpoint /mcp); port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,

    /// Confine the filesystem tools to this directory (overrides `[tools.fs] root`).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// DEVELOPMENT ONLY, loopback only: treat HTTP requests without `Authorization` as
    /// presenting the token in FILE (for test suites that cannot send headers).
    #[arg(long, value_name = "FILE")]
    pub dev_headerless_token: Option<PathBuf>,
}

/// `capgate keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new Ed25519 root key (mode 0600) and print its public key.
    Init {
        /// Directory for `root.key` (default: the state directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Replace an existing key. Every token it signed stops verifying.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key of the configured root key.
    Show,
}

/// `capgate token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint an agent token (printed on stdout).
    Mint {
        /// The agent's id.
        #[arg(long)]
        agent: String,
        /// The tenant it works for.
        #[arg(long)]
        tenant: String,
        /// A tool the agent may ever use (repeatable).
        #[arg(long = "tool", value_name = "NAME", required = true)]
        tools: Vec<String>,
        /// Limit a tool to resources under PREFIX (repeatable): `fs_read=docs/`.
        #[arg(long = "resource", value_name = "TOOL=PREFIX")]
        resources: Vec<String>,
        /// Lifetime of the token, e.g. `30d`, `12h`; `never` for no expiry. A day by default:
        /// an agent token is a standing secret (prefer workload identity, `[[identity.jwt]]`).
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Mint an approval for a human approver (printed on stdout). A task request over HTTP
    /// presents it in the `Capgate-Approval` header, which spends it (one approval, one
    /// request); it becomes the task's `approved_by`. An agent cannot approve its own task:
    /// `approved_by` in a request body is refused.
    Approval {
        /// Who approves (becomes `approved_by`).
        #[arg(long = "by", value_name = "NAME")]
        by: String,
        /// Only this agent's task requests may present it.
        #[arg(long)]
        agent: Option<String>,
        /// Only requests of this tenant's agents may present it.
        #[arg(long)]
        tenant: Option<String>,
        /// How long the approval stays valid.
        #[arg(long, default_value = "10m")]
        ttl: String,
    },
    /// Revoke a token's authority block: the token, every task issued from it and every token
    /// derived from those stop working at once, across restarts.
    Revoke {
        /// The token (`-` reads it from stdin).
        token: String,
        /// Why, for the record.
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
    },
    /// Show every block's Datalog, the expiry and revocation ids, and whether the token
    /// verifies against the root key.
    Inspect {
        /// The token (`-` reads it from stdin).
        token: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `capgate task ...`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Ask for a task; prints the task token on stdout.
    Begin(Box<TaskBeginArgs>),
    /// End a task: its access is revoked, with every token derived from it.
    End {
        /// Task id.
        id: String,
    },
    /// Intent versus action for one task.
    Show {
        /// Task id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recent tasks.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// `capgate task begin`.
#[derive(Debug, Args)]
pub struct TaskBeginArgs {
    /// The agent token (default: CAPGATE_TOKEN).
    #[arg(long, env = "CAPGATE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Why the task exists.
    #[arg(long)]
    pub purpose: String,
    /// A tool the task needs (repeatable).
    #[arg(long = "tool", value_name = "NAME", required = true)]
    pub tools: Vec<String>,
    /// Resources for a tool (repeatable): `fs_read=docs/`.
    #[arg(long = "resource", value_name = "TOOL=PREFIX")]
    pub resources: Vec<String>,
    /// Lifetime, e.g. `15m`.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Who the task acts for.
    #[arg(long)]
    pub on_behalf_of: Option<String>,
    /// Who approved its side effects.
    #[arg(long)]
    pub approved_by: Option<String>,
    /// Budget: the most calls the task may make in all.
    #[arg(long, value_name = "N")]
    pub budget_calls: Option<u64>,
    /// Budget: the most calls of one tool (repeatable): `fs_read=20`.
    #[arg(long = "budget-tool", value_name = "TOOL=N")]
    pub budget_tools: Vec<String>,
    /// Budget: the most calls within any 60 seconds.
    #[arg(long, value_name = "N")]
    pub budget_per_minute: Option<u64>,
    /// Print JSON instead of the bare token.
    #[arg(long)]
    pub json: bool,
}

/// `capgate policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse every policy; report errors (file:line) and vocabulary warnings.
    Check {
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
}

/// `capgate audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain, across its rotated files, and the root key's
    /// signature on every checkpoint; name the first line changed, removed or inserted.
    /// Exit status: 0 intact, 2 broken or not anchored by a signed checkpoint, 1 unreadable.
    Verify {
        /// The log (default: the configured one); its rotations FILE.1, FILE.2, ... are read too.
        file: Option<PathBuf>,
        /// The root public key (`ed25519/<hex>`, as `capgate keys show` prints it). Default:
        /// the configured root key's; give it to verify where the private key is not.
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
