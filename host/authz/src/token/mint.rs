//! Minting: agent tokens and approvals (authority blocks signed by the root key) and task
//! blocks (appended to a verified agent token at issuance), in the vocabulary of
//! [`capgate_core::vocab`].
//!
//! Invariant: an agent token's authority block holds exactly one `agent` and one `tenant`, and
//! at least one `resource_prefix` per right (`""` when the operator put no limit on a tool), so
//! policies never need negation; a task block names only tools and prefixes issuance allowed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use biscuit_auth::Biscuit;
use biscuit_auth::builder::{self, BlockBuilder, Fact};
use biscuit_auth::builder_ext::BuilderExt;
use capgate_core::task::{Budget, TaskGrant};
use capgate_core::time::date_time;
use capgate_core::vocab;

use super::{RootKey, TokenError, VerifiedToken};

/// What an operator grants an agent when minting its token.
#[derive(Debug, Clone, Default)]
pub struct AgentGrant {
    /// The agent's id.
    pub agent: String,
    /// The tenant it works for.
    pub tenant: String,
    /// Tools it may ever use.
    pub rights: Vec<String>,
    /// Per-tool resource prefixes, already canonical. A right with none is unrestricted.
    pub prefixes: BTreeMap<String, Vec<String>>,
    /// Lifetime of the agent token.
    pub ttl: Option<Duration>,
    /// `(issuer, subject)` of the workload JWT this token was minted for, when it was.
    pub workload: Option<(String, String)>,
}

/// Mints an agent token: an authority block in the shared vocabulary, signed by the root key.
pub fn mint_agent_token(root: &RootKey, grant: &AgentGrant) -> Result<Biscuit, TokenError> {
    if grant.agent.is_empty() || grant.tenant.is_empty() {
        return Err(TokenError::Invalid(
            "agent and tenant must be non-empty".into(),
        ));
    }
    if grant.rights.is_empty() {
        return Err(TokenError::Invalid(
            "an agent token needs at least one right (--tool)".into(),
        ));
    }
    for tool in grant.prefixes.keys() {
        if !grant.rights.contains(tool) {
            return Err(TokenError::Invalid(format!(
                "resource prefix given for `{tool}`, which is not among the rights; add --tool {tool}"
            )));
        }
    }
    let mut b = Biscuit::builder()
        .fact(fact1(vocab::AGENT, &grant.agent))
        .map_err(TokenError::Build)?
        .fact(fact1(vocab::TENANT, &grant.tenant))
        .map_err(TokenError::Build)?;
    if let Some((issuer, subject)) = &grant.workload {
        b = b
            .fact(fact2(vocab::WORKLOAD, issuer, subject))
            .map_err(TokenError::Build)?;
    }
    let rights: BTreeSet<&String> = grant.rights.iter().collect();
    for tool in rights {
        b = b
            .fact(fact1(vocab::RIGHT, tool))
            .map_err(TokenError::Build)?;
        let prefixes = grant.prefixes.get(tool.as_str()).filter(|p| !p.is_empty());
        match prefixes {
            Some(list) => {
                for p in list {
                    b = b
                        .fact(fact2(vocab::RESOURCE_PREFIX, tool, p))
                        .map_err(TokenError::Build)?;
                }
            }
            None => {
                // The empty prefix: every resource of this tool. Written out so that a policy
                // can rely on every right having at least one prefix.
                b = b
                    .fact(fact2(vocab::RESOURCE_PREFIX, tool, ""))
                    .map_err(TokenError::Build)?;
            }
        }
    }
    if let Some(ttl) = grant.ttl {
        let until = SystemTime::now()
            .checked_add(ttl)
            .filter(|t| *t <= date_time(u64::MAX))
            .ok_or_else(|| {
                TokenError::Invalid(format!("a ttl of {ttl:?} is past the year 9999"))
            })?;
        b = b.check_expiration_date(until);
    }
    b.build(root.keypair()).map_err(TokenError::Build)
}

/// Mints an approval: a token, signed by the root key, saying that the human `by` approved
/// side effects of one task request — of the agent and tenant in `scope` when given — made
/// within `ttl` from now. A task request over HTTP presents it in the `Capgate-Approval` header
/// to satisfy `approved_by`, which spends it; an agent cannot assert approval by itself. Its
/// authority block holds `approver($by)`, optional `approves_agent($a)` / `approves_tenant($t)`
/// and an expiry check; it carries no `agent` fact, so it can never be used as an agent token,
/// nor an agent token as an approval.
pub fn mint_approval(
    root: &RootKey,
    by: &str,
    scope: &ApprovalScope,
    ttl: Duration,
) -> Result<Biscuit, TokenError> {
    if by.trim().is_empty() {
        return Err(TokenError::Invalid(
            "the approver's name must be non-empty".into(),
        ));
    }
    let mut b = Biscuit::builder()
        .fact(fact1(vocab::APPROVER, by))
        .map_err(TokenError::Build)?;
    if let Some(agent) = &scope.agent {
        b = b
            .fact(fact1(vocab::APPROVES_AGENT, agent))
            .map_err(TokenError::Build)?;
    }
    if let Some(tenant) = &scope.tenant {
        b = b
            .fact(fact1(vocab::APPROVES_TENANT, tenant))
            .map_err(TokenError::Build)?;
    }
    let until = SystemTime::now()
        .checked_add(ttl)
        .filter(|t| *t <= date_time(u64::MAX))
        .ok_or_else(|| TokenError::Invalid(format!("a ttl of {ttl:?} is past the year 9999")))?;
    b = b.check_expiration_date(until);
    b.build(root.keypair()).map_err(TokenError::Build)
}

/// Whose requests an approval may serve; `None` = any.
#[derive(Debug, Clone, Default)]
pub struct ApprovalScope {
    /// Only this agent's requests.
    pub agent: Option<String>,
    /// Only requests of agents of this tenant.
    pub tenant: Option<String>,
}

/// Appends the task block to a verified agent token. The result is the task token; the
/// revocation id of the new (last) block is the task's identity.
pub fn append_task_block(agent: &VerifiedToken, grant: &TaskGrant) -> Result<Biscuit, TokenError> {
    agent
        .biscuit
        .append(task_block(grant)?)
        .map_err(TokenError::Build)
}

/// The task block, on its own.
pub fn task_block(grant: &TaskGrant) -> Result<BlockBuilder, TokenError> {
    if grant.tools.is_empty() {
        return Err(TokenError::Invalid(
            "a task must be granted at least one tool".into(),
        ));
    }
    let mut b = BlockBuilder::new()
        .fact(fact1(vocab::TASK, &grant.task_id))
        .map_err(TokenError::Build)?;
    let mut names = BTreeSet::new();
    for (tool, prefixes) in &grant.tools {
        names.insert(builder::string(tool));
        for p in prefixes {
            b = b
                .fact(fact2(vocab::GRANTED_PREFIX, tool, p))
                .map_err(TokenError::Build)?;
        }
    }
    if let Some(budget) = &grant.budget {
        for fact in budget_facts(budget) {
            b = b.fact(fact).map_err(TokenError::Build)?;
        }
    }
    // Holder binding (DPoP): the token works only beside a fresh proof made with this key,
    // whose thumbprint the guard supplies as `dpop_jkt`. A derived token keeps this block, so
    // it stays bound.
    if let Some(jkt) = &grant.holder {
        b = b
            .fact(fact1(vocab::HOLDER_KEY, jkt))
            .map_err(TokenError::Build)?
            .code(format!(
                "check if {}($k), {}($k);",
                vocab::DPOP_JKT,
                vocab::HOLDER_KEY
            ))
            .map_err(TokenError::Build)?;
    }
    let mut params = HashMap::new();
    params.insert("tools".to_owned(), builder::set(names));
    // The called tool is granted, and the resource is covered by a prefix granted *for that
    // tool* (so a prefix granted for one tool does not open another): below a prefix ending in
    // `/`, or exactly a prefix that does not.
    let checks = format!(
        "check if {tool}($t), {{tools}}.contains($t);\n\
         check if {tool}($t), {resource}($r), {granted}($t, $p), {covers};",
        tool = vocab::TOOL,
        resource = vocab::RESOURCE,
        granted = vocab::GRANTED_PREFIX,
        covers = capgate_core::task::COVERS_DATALOG,
    );
    b = b
        .code_with_params(&checks, params, HashMap::new())
        .map_err(TokenError::Build)?;
    Ok(b.check_expiration_date(grant.expires_at))
}

/// A budget as facts: `budget_calls($n)`, `budget_tool($tool, $n)`, `budget_per_minute($n)`.
/// The guard takes the lowest value any block names, so a block a sub-agent appends with these
/// facts can only lower them.
pub fn budget_facts(budget: &Budget) -> Vec<Fact> {
    let int = |n: u64| builder::int(i64::try_from(n).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    if let Some(n) = budget.calls {
        out.push(builder::fact(vocab::BUDGET_CALLS, &[int(n)]));
    }
    for (tool, n) in &budget.per_tool {
        out.push(builder::fact(
            vocab::BUDGET_TOOL,
            &[builder::string(tool), int(*n)],
        ));
    }
    if let Some(n) = budget.per_minute {
        out.push(builder::fact(vocab::BUDGET_PER_MINUTE, &[int(n)]));
    }
    out
}

fn fact1(name: &str, a: &str) -> Fact {
    builder::fact(name, &[builder::string(a)])
}

fn fact2(name: &str, a: &str, b: &str) -> Fact {
    builder::fact(name, &[builder::string(a), builder::string(b)])
}
