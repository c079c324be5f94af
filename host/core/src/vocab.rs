//! The Biscuit vocabulary of `../shared/DESIGN.md`: one constant per fact name, used alike by the
//! token builders, the guard's and the issuer's facts, and the policy lint.
//!
//! Invariant: a fact name is spelled here and nowhere else; the lists at the bottom are what the
//! lint accepts in each kind of policy, so a predicate outside them is flagged.

/// `agent($id)`: who the token speaks for (authority block).
pub const AGENT: &str = "agent";
/// `tenant($t)`: the tenant the agent works for (authority block).
pub const TENANT: &str = "tenant";
/// `right($tool)`: a tool the agent may ever use (authority block).
pub const RIGHT: &str = "right";
/// `resource_prefix($tool, $prefix)`: where the agent may use a tool (authority block).
pub const RESOURCE_PREFIX: &str = "resource_prefix";
/// `task($id)`: in a task block, the task's id; at a call, present when the token carries a
/// live task's block.
pub const TASK: &str = "task";
/// `granted_prefix($tool, $prefix)`: what a task block grants.
pub const GRANTED_PREFIX: &str = "granted_prefix";

/// `workload($issuer, $subject)`: in an authority block capgate minted for a workload JWT, who
/// vouched for the agent.
pub const WORKLOAD: &str = "workload";
/// `holder_key($jkt)`: in a task block, the thumbprint of the key the task token is bound to
/// (DPoP); the block checks `dpop_jkt($k), holder_key($k)`.
pub const HOLDER_KEY: &str = "holder_key";
/// `dpop_jkt($jkt)`: at a call, the thumbprint of the key whose fresh DPoP proof came with it.
pub const DPOP_JKT: &str = "dpop_jkt";

/// `budget_calls($n)`: in a task block (or a later one), the most calls the task may make.
pub const BUDGET_CALLS: &str = "budget_calls";
/// `budget_tool($tool, $n)`: the most calls of one tool.
pub const BUDGET_TOOL: &str = "budget_tool";
/// `budget_per_minute($n)`: the most calls within any 60 seconds.
pub const BUDGET_PER_MINUTE: &str = "budget_per_minute";

/// `approver($name)`: the human an approval token speaks for.
pub const APPROVER: &str = "approver";
/// `approves_agent($id)`: the only agent an approval serves.
pub const APPROVES_AGENT: &str = "approves_agent";
/// `approves_tenant($t)`: the only tenant an approval serves.
pub const APPROVES_TENANT: &str = "approves_tenant";

/// `time($now)`.
pub const TIME: &str = "time";
/// `tool($name)`.
pub const TOOL: &str = "tool";
/// `operation($op)`: `read | write | execute | network`.
pub const OPERATION: &str = "operation";
/// `resource($r)`: the canonical resource (at issuance: the requested prefix).
pub const RESOURCE: &str = "resource";
/// `arg($name, $value)`: one per scalar argument.
pub const ARG: &str = "arg";
/// `transport($kind)`.
pub const TRANSPORT: &str = "transport";
/// `session($id)`.
pub const SESSION: &str = "session";
/// `tenant_prefix($tenant, $prefix)`: from `[tenants]`.
pub const TENANT_PREFIX: &str = "tenant_prefix";

/// `tool_tenant_prefix($tool, $tenant, $prefix)`: a tenant's prefix as one tool spells its
/// resources (issuance).
pub const TOOL_TENANT_PREFIX: &str = "tool_tenant_prefix";
/// `request_tenant($t)`: the tenant a task request acts for.
pub const REQUEST_TENANT: &str = "request_tenant";
/// `request_ttl($seconds)`.
pub const REQUEST_TTL: &str = "request_ttl";
/// `max_ttl($seconds)`: `[policy] max_task_ttl`.
pub const MAX_TTL: &str = "max_ttl";
/// `purpose($text)`.
pub const PURPOSE: &str = "purpose";
/// `on_behalf_of($who)`.
pub const ON_BEHALF_OF: &str = "on_behalf_of";
/// `approved_by($who)`: present only when a human approved.
pub const APPROVED_BY: &str = "approved_by";

/// Facts a token may carry (authority block and task blocks).
pub const TOKEN_FACTS: &[&str] = &[
    AGENT,
    TENANT,
    RIGHT,
    RESOURCE_PREFIX,
    TASK,
    GRANTED_PREFIX,
    BUDGET_CALLS,
    BUDGET_TOOL,
    BUDGET_PER_MINUTE,
    WORKLOAD,
    HOLDER_KEY,
];

/// Facts the guard supplies at every call.
pub const INVOCATION_FACTS: &[&str] = &[
    TIME,
    TOOL,
    OPERATION,
    RESOURCE,
    ARG,
    TRANSPORT,
    SESSION,
    TASK,
    TENANT_PREFIX,
    DPOP_JKT,
];

/// Facts issuance supplies for each requested (tool, resource prefix).
pub const ISSUANCE_FACTS: &[&str] = &[
    TIME,
    TOOL,
    OPERATION,
    RESOURCE,
    TRANSPORT,
    TENANT_PREFIX,
    TOOL_TENANT_PREFIX,
    REQUEST_TENANT,
    REQUEST_TTL,
    MAX_TTL,
    PURPOSE,
    ON_BEHALF_OF,
    APPROVED_BY,
    BUDGET_CALLS,
    BUDGET_TOOL,
    BUDGET_PER_MINUTE,
];
