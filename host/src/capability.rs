//! Capabilities: the root key, agent tokens, task blocks, and tokens verified against the key.
//!
//! This module owns the Biscuit vocabulary of `../shared/DESIGN.md`:
//!
//! * an agent token's authority block holds `agent($id)`, `tenant($t)`, one `right($tool)` per
//!   tool, at least one `resource_prefix($tool, $prefix)` per right (the empty prefix `""` when
//!   the operator put no limit on a tool's resources) and an expiry check;
//! * a task block holds `task($id)`, one `granted_prefix($tool, $prefix)` per granted tool and
//!   prefix, a check that the called tool is granted, a check that the resource sits under a
//!   prefix granted *for that tool*, and the task's expiry.
//!
//! Invariant: the only way to obtain a [`VerifiedToken`] is [`Verifier::verify`], which checks
//! every block's signature against the root public key. Unverified bytes never reach an
//! authorizer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{self, BlockBuilder, Fact, Term};
use biscuit_auth::builder_ext::BuilderExt;
use biscuit_auth::{
    AuthorizerBuilder, AuthorizerLimits, Biscuit, KeyPair, PrivateKey, PublicKey, UnverifiedBiscuit,
};

use crate::error::Error;

/// Largest token accepted, in characters of base64. Real task tokens are well under 4 KiB;
/// anything near this size is an attack or a mistake, refused before parsing.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why a token was refused or could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was presented.
    #[error(
        "no token presented: send `Authorization: Bearer <token>` (HTTP) or set CAPGATE_TOKEN (stdio)"
    )]
    Missing,
    /// The token is larger than [`MAX_TOKEN_LEN`].
    #[error("token is {0} bytes, over the {MAX_TOKEN_LEN}-byte limit")]
    TooLarge(usize),
    /// Not base64, not a Biscuit, or truncated.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// A signature does not verify against capgate's root key (forged, altered, or issued by
    /// another root key).
    #[error("token signature does not verify against this server's root key ({0})")]
    BadSignature(String),
    /// The token verifies but lacks the facts capgate needs.
    #[error("token lacks {0}; mint agent tokens with `capgate token mint`")]
    MissingFact(&'static str),
    /// Evaluating the token's own Datalog exceeds the run limits: it can never be authorized.
    #[error(
        "token's Datalog exceeds the run limits ([guard] max_facts, max_iterations, max_time): {0}"
    )]
    TooComplex(String),
    /// The token's expiry has passed.
    #[error("token expired at {0}")]
    Expired(String),
    /// One of the token's blocks has been revoked (its task ended or expired).
    #[error("token revoked: block {block} (revocation id {id}) was revoked{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Revoked {
        /// Index of the revoked block.
        block: usize,
        /// Its revocation id, hex.
        id: String,
        /// Why it was revoked.
        reason: Option<String>,
    },
    /// A token could not be built.
    #[error("cannot build token: {0}")]
    Build(String),
    /// Presented as an approval, the token is not a valid one for this request.
    #[error(
        "not a valid approval: {0}; the operator mints approvals with `capgate token approval --by NAME [--agent ID]`"
    )]
    NotApproval(String),
}

impl TokenError {
    /// A short, stable name for telemetry (`capgate.deny.reason`).
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::TooLarge(_) => "token_too_large",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::BadSignature(_) => "token_bad_signature",
            TokenError::MissingFact(_) => "token_missing_fact",
            TokenError::TooComplex(_) => "run_limit",
            TokenError::Expired(_) => "token_expired",
            TokenError::Revoked { .. } => "token_revoked",
            TokenError::Build(_) => "token_build",
            TokenError::NotApproval(_) => "approval_invalid",
        }
    }
}

fn build_err(e: impl std::fmt::Display) -> TokenError {
    TokenError::Build(e.to_string())
}

/// The root key pair: signs agent tokens. Its public half verifies every token.
pub struct RootKey {
    keypair: KeyPair,
}

impl RootKey {
    /// A fresh Ed25519 key.
    pub fn generate() -> Self {
        RootKey {
            keypair: KeyPair::new(),
        }
    }

    /// Reads a key file written by [`RootKey::write`] (`ed25519-private/<hex>`).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Key {
            path: path.to_path_buf(),
            message: format!("cannot read it ({e}); create one with `capgate keys init`"),
        })?;
        let private: PrivateKey = text.trim().parse().map_err(|e| Error::Key {
            path: path.to_path_buf(),
            message: format!("not a Biscuit private key (expected `ed25519-private/<hex>`): {e}"),
        })?;
        Ok(RootKey {
            keypair: KeyPair::from(&private),
        })
    }

    /// Writes the private key with mode 0600. Refuses to replace an existing file unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), Error> {
        let key_err = |message: String| Error::Key {
            path: path.to_path_buf(),
            message,
        };
        if path.exists() && !force {
            return Err(key_err(
                "already exists; refusing to overwrite a root key (every token it signed would stop verifying). Pass --force to replace it".into(),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| key_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let text = format!("{}\n", self.keypair.private().to_prefixed_string());
        // Write to a temporary file created 0600, then rename, so the key is never readable by
        // others, not even for a moment, and a crash never leaves half a key.
        let tmp = path.with_extension("key.tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(&tmp)
                .map_err(|e| key_err(format!("cannot create {}: {e}", tmp.display())))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| key_err(format!("cannot restrict permissions: {e}")))?;
            }
            f.write_all(text.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| key_err(format!("cannot write: {e}")))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| key_err(format!("cannot move into place: {e}")))
    }

    /// Loads the key at `path`, creating it when missing. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), Error> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate();
        key.write(path, false)?;
        Ok((key, true))
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.keypair.public()
    }

    /// The public key in Biscuit's text form, `ed25519/<hex>`.
    pub fn public_text(&self) -> String {
        self.keypair.public().to_string()
    }

    pub(crate) fn keypair(&self) -> &KeyPair {
        &self.keypair
    }
}

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
}

/// Mints an agent token: an authority block in the shared vocabulary, signed by the root key.
pub fn mint_agent_token(root: &RootKey, grant: &AgentGrant) -> Result<Biscuit, TokenError> {
    if grant.agent.is_empty() || grant.tenant.is_empty() {
        return Err(TokenError::Build(
            "agent and tenant must be non-empty".into(),
        ));
    }
    if grant.rights.is_empty() {
        return Err(TokenError::Build(
            "an agent token needs at least one right (--tool)".into(),
        ));
    }
    for tool in grant.prefixes.keys() {
        if !grant.rights.contains(tool) {
            return Err(TokenError::Build(format!(
                "resource prefix given for `{tool}`, which is not among the rights; add --tool {tool}"
            )));
        }
    }
    let mut b = Biscuit::builder()
        .fact(fact1("agent", &grant.agent))
        .map_err(build_err)?
        .fact(fact1("tenant", &grant.tenant))
        .map_err(build_err)?;
    let rights: BTreeSet<&String> = grant.rights.iter().collect();
    for tool in rights {
        b = b.fact(fact1("right", tool)).map_err(build_err)?;
        let prefixes = grant.prefixes.get(tool.as_str()).filter(|p| !p.is_empty());
        match prefixes {
            Some(list) => {
                for p in list {
                    b = b
                        .fact(fact2("resource_prefix", tool, p))
                        .map_err(build_err)?;
                }
            }
            None => {
                // The empty prefix: every resource of this tool. Written out so that a policy
                // can rely on every right having at least one prefix.
                b = b
                    .fact(fact2("resource_prefix", tool, ""))
                    .map_err(build_err)?;
            }
        }
    }
    if let Some(ttl) = grant.ttl {
        let until = SystemTime::now()
            .checked_add(ttl)
            .filter(|t| *t <= date_time(u64::MAX))
            .ok_or_else(|| build_err(format!("a ttl of {ttl:?} is past the year 9999")))?;
        b = b.check_expiration_date(until);
    }
    b.build(root.keypair()).map_err(build_err)
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
        return Err(TokenError::Build(
            "the approver's name must be non-empty".into(),
        ));
    }
    let mut b = Biscuit::builder()
        .fact(fact1("approver", by))
        .map_err(build_err)?;
    if let Some(agent) = &scope.agent {
        b = b.fact(fact1("approves_agent", agent)).map_err(build_err)?;
    }
    if let Some(tenant) = &scope.tenant {
        b = b
            .fact(fact1("approves_tenant", tenant))
            .map_err(build_err)?;
    }
    let until = SystemTime::now()
        .checked_add(ttl)
        .filter(|t| *t <= date_time(u64::MAX))
        .ok_or_else(|| build_err(format!("a ttl of {ttl:?} is past the year 9999")))?;
    b = b.check_expiration_date(until);
    b.build(root.keypair()).map_err(build_err)
}

/// Whose requests an approval may serve; `None` = any.
#[derive(Debug, Clone, Default)]
pub struct ApprovalScope {
    /// Only this agent's requests.
    pub agent: Option<String>,
    /// Only requests of agents of this tenant.
    pub tenant: Option<String>,
}

/// A verified approval.
#[derive(Debug, Clone)]
pub struct Approval {
    /// Who approved (the `approver` fact of the authority block).
    pub by: String,
    /// The approval token's revocation ids, hex; a revoked approval is refused.
    pub revocation_ids: Vec<String>,
}

/// What issuance granted a task: the block appended to the agent token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskGrant {
    /// The task's id.
    pub task_id: String,
    /// Granted tools with their canonical resource prefixes (`""` = all of the tool's resources).
    pub tools: BTreeMap<String, Vec<String>>,
    /// When the task's access ends.
    #[serde(with = "unix_seconds")]
    pub expires_at: SystemTime,
}

/// Appends the task block to a verified agent token. The result is the task token; the
/// revocation id of the new (last) block is the task's identity.
pub fn append_task_block(agent: &VerifiedToken, grant: &TaskGrant) -> Result<Biscuit, TokenError> {
    agent.biscuit.append(task_block(grant)?).map_err(build_err)
}

/// The task block, on its own.
pub fn task_block(grant: &TaskGrant) -> Result<BlockBuilder, TokenError> {
    if grant.tools.is_empty() {
        return Err(TokenError::Build(
            "a task must be granted at least one tool".into(),
        ));
    }
    let mut b = BlockBuilder::new()
        .fact(fact1("task", &grant.task_id))
        .map_err(build_err)?;
    let mut names = BTreeSet::new();
    for (tool, prefixes) in &grant.tools {
        names.insert(builder::string(tool));
        for p in prefixes {
            b = b
                .fact(fact2("granted_prefix", tool, p))
                .map_err(build_err)?;
        }
    }
    let mut params = HashMap::new();
    params.insert("tools".to_owned(), builder::set(names));
    b = b
        .code_with_params(
            "check if tool($t), {tools}.contains($t);\n\
             check if tool($t), resource($r), granted_prefix($t, $p), $r.starts_with($p);",
            params,
            HashMap::new(),
        )
        .map_err(build_err)?;
    Ok(b.check_expiration_date(grant.expires_at))
}

fn fact1(name: &str, a: &str) -> Fact {
    builder::fact(name, &[builder::string(a)])
}

fn fact2(name: &str, a: &str, b: &str) -> Fact {
    builder::fact(name, &[builder::string(a), builder::string(b)])
}

/// Who a token speaks for, read from its authority block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// `agent($id)`.
    pub agent: String,
    /// `tenant($t)`.
    pub tenant: String,
    /// `right($tool)`, sorted.
    pub rights: Vec<String>,
    /// `resource_prefix($tool, $prefix)`.
    pub prefixes: BTreeMap<String, Vec<String>>,
}

/// A token whose every signature has been checked against the root key.
pub struct VerifiedToken {
    pub(crate) biscuit: Biscuit,
    revocation_ids: Vec<String>,
    identity: Identity,
    expires_at: Option<SystemTime>,
    time_bounds: Vec<SystemTime>,
    strings: Vec<String>,
}

impl std::fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("blocks", &self.revocation_ids.len())
            .field("agent", &self.identity.agent)
            .field("tenant", &self.identity.tenant)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl VerifiedToken {
    fn from_biscuit(biscuit: Biscuit, limits: &AuthorizerLimits) -> Result<Self, TokenError> {
        let revocation_ids = biscuit
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect();
        // One authorizer, under the guard's run limits, answers everything read here: a block
        // built to explode under evaluation makes the token unusable, not the server slow.
        let mut authorizer = AuthorizerBuilder::new()
            .set_limits(limits.clone())
            .build(&biscuit)
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        let mut query = |rule: &str| -> Result<Vec<Vec<String>>, TokenError> {
            // A query's scope is the authority block (and its own rules): facts a later block
            // adds are invisible, so a sub-agent cannot change who the token speaks for.
            let facts: Vec<biscuit_auth::builder::Fact> =
                authorizer.query(rule).map_err(|e| match e {
                    biscuit_auth::error::Token::RunLimit(_) => {
                        TokenError::TooComplex(e.to_string())
                    }
                    other => TokenError::Malformed(other.to_string()),
                })?;
            Ok(facts
                .into_iter()
                .map(|f| {
                    f.predicate
                        .terms
                        .into_iter()
                        .map(|t| match t {
                            Term::Str(s) => s,
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect())
        };
        let first = |rows: Vec<Vec<String>>| -> Vec<(String,)> {
            rows.into_iter()
                .filter_map(|r| r.into_iter().next())
                .map(|v| (v,))
                .collect()
        };
        let agent = single(
            first(query("data($a) <- agent($a)")?),
            "exactly one agent($id) fact in the authority block",
        )?;
        let tenant = single(
            first(query("data($t) <- tenant($t)")?),
            "exactly one tenant($t) fact in the authority block",
        )?;
        let mut rights: Vec<String> = first(query("data($t) <- right($t)")?)
            .into_iter()
            .map(|(r,)| r)
            .collect();
        rights.sort();
        rights.dedup();
        let mut by_tool: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in query("data($t, $p) <- resource_prefix($t, $p)")? {
            if let [t, p] = row.as_slice() {
                by_tool.entry(t.clone()).or_default().push(p.clone());
            }
        }
        let (facts, rules, checks, _) = authorizer.dump();
        let mut strings = BTreeSet::new();
        let mut time_bounds = Vec::new();
        for f in &facts {
            for t in &f.predicate.terms {
                collect_term_strings(t, &mut strings);
                // A date held in a fact can bound time as well as a literal in a check can
                // (`until(2030-01-01T00:00:00Z); check if time($t), until($u), $t <= $u`).
                collect_term_dates(t, &mut time_bounds);
            }
        }
        for check in &checks {
            for q in &check.queries {
                for e in &q.expressions {
                    collect_op_strings(&e.ops, &mut strings);
                }
                for p in &q.body {
                    p.terms
                        .iter()
                        .for_each(|t| collect_term_strings(t, &mut strings));
                }
            }
        }
        let expires_at = checks.iter().filter_map(check_upper_bound).min();
        for check in &checks {
            for q in &check.queries {
                collect_rule_dates(q, &mut time_bounds);
            }
        }
        for rule in &rules {
            collect_rule_dates(rule, &mut time_bounds);
        }
        time_bounds.sort();
        time_bounds.dedup();
        Ok(VerifiedToken {
            biscuit,
            revocation_ids,
            identity: Identity {
                agent,
                tenant,
                rights,
                prefixes: by_tool,
            },
            expires_at,
            time_bounds,
            strings: strings.into_iter().collect(),
        })
    }

    /// Every string the token names (in facts and checks): the resource candidates
    /// `tools/list` tries.
    pub fn string_literals(&self) -> &[String] {
        &self.strings
    }

    /// The underlying Biscuit, for appending blocks.
    pub fn biscuit(&self) -> &Biscuit {
        &self.biscuit
    }

    /// One revocation id per block (hex), authority first.
    pub fn revocation_ids(&self) -> &[String] {
        &self.revocation_ids
    }

    /// Number of blocks.
    pub fn block_count(&self) -> usize {
        self.revocation_ids.len()
    }

    /// The identity in the authority block.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The earliest time after which some check of the token can no longer pass.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The first date literal in the token after `now`: until then, nothing time-dependent in
    /// the token can change its answer. A cached decision must not outlive it.
    pub fn next_time_bound(&self, now: SystemTime) -> Option<SystemTime> {
        next_bound(&self.time_bounds, now)
    }

    /// Whether the token has expired at `now`.
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), TokenError> {
        match self.expires_at {
            Some(t) if now > t => Err(TokenError::Expired(rfc3339(t))),
            _ => Ok(()),
        }
    }

    /// True when `other` is this token with zero or more blocks appended: every block of this
    /// token is in `other`, in order. Appending can only narrow, so `other` is no wider.
    pub fn is_prefix_of(&self, other: &VerifiedToken) -> bool {
        other.revocation_ids.len() >= self.revocation_ids.len()
            && other.revocation_ids[..self.revocation_ids.len()] == self.revocation_ids[..]
    }

    /// The token, base64.
    pub fn to_base64(&self) -> Result<String, TokenError> {
        self.biscuit.to_base64().map_err(build_err)
    }
}

fn single(values: Vec<(String,)>, what: &'static str) -> Result<String, TokenError> {
    let mut values: Vec<String> = values.into_iter().map(|(v,)| v).collect();
    values.sort();
    values.dedup();
    match values.len() {
        1 => Ok(values.remove(0)),
        _ => Err(TokenError::MissingFact(what)),
    }
}

/// The latest time a check can still pass, when every alternative of the check bounds `time`
/// from above; `None` when some alternative has no such bound.
fn check_upper_bound(check: &builder::Check) -> Option<SystemTime> {
    if check.kind != builder::CheckKind::One {
        return None;
    }
    let mut latest: Option<SystemTime> = None;
    for query in &check.queries {
        let bound = query_upper_bound(query)?;
        latest = Some(latest.map_or(bound, |l| l.max(bound)));
    }
    latest
}

fn query_upper_bound(rule: &builder::Rule) -> Option<SystemTime> {
    let time_vars: Vec<&str> = rule
        .body
        .iter()
        .filter(|p| p.name == "time" && p.terms.len() == 1)
        .filter_map(|p| match &p.terms[0] {
            Term::Variable(v) => Some(v.as_str()),
            _ => None,
        })
        .collect();
    let mut bound: Option<SystemTime> = None;
    for expr in &rule.expressions {
        // The vocabulary's form: `$t <= <date>` (or `<`, or mirrored `<date> >= $t`), as the
        // whole expression: three ops, two values and the comparison.
        if let [
            builder::Op::Value(a),
            builder::Op::Value(b),
            builder::Op::Binary(op),
        ] = expr.ops.as_slice()
        {
            let date = match (a, b, op) {
                (
                    Term::Variable(v),
                    Term::Date(d),
                    builder::Binary::LessOrEqual | builder::Binary::LessThan,
                ) if time_vars.contains(&v.as_str()) => Some(*d),
                (
                    Term::Date(d),
                    Term::Variable(v),
                    builder::Binary::GreaterOrEqual | builder::Binary::GreaterThan,
                ) if time_vars.contains(&v.as_str()) => Some(*d),
                _ => None,
            };
            if let Some(d) = date {
                let t = date_time(d);
                bound = Some(bound.map_or(t, |b| b.min(t)));
            }
        }
    }
    bound
}

fn collect_term_strings(term: &Term, out: &mut BTreeSet<String>) {
    match term {
        Term::Str(s) => {
            out.insert(s.clone());
        }
        Term::Set(s) => s.iter().for_each(|t| collect_term_strings(t, out)),
        Term::Array(a) => a.iter().for_each(|t| collect_term_strings(t, out)),
        Term::Map(m) => m.values().for_each(|t| collect_term_strings(t, out)),
        _ => {}
    }
}

fn collect_op_strings(ops: &[builder::Op], out: &mut BTreeSet<String>) {
    for op in ops {
        match op {
            builder::Op::Value(t) => collect_term_strings(t, out),
            builder::Op::Closure(_, inner) => collect_op_strings(inner, out),
            _ => {}
        }
    }
}

/// The first moment after `now` at which a decision taken at `now` may change because of one of
/// `bounds` (sorted). Datalog sees `time` in whole seconds: a date within the current second
/// still compares as the current second until the next one starts, so it bounds a decision
/// then, not at the date itself (which may already be past).
pub(crate) fn next_bound(bounds: &[SystemTime], now: SystemTime) -> Option<SystemTime> {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let floor = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    bounds.iter().copied().find(|b| *b >= floor).map(|b| {
        if b == floor {
            b + Duration::from_secs(1)
        } else {
            b
        }
    })
}

/// A Datalog date as a time. A date past what `SystemTime` holds (a token may carry any `u64`)
/// saturates instead of overflowing: as a bound it is then simply never reached.
pub(crate) fn date_time(secs: u64) -> SystemTime {
    // 9999-12-31T23:59:59Z: past it, formatting and arithmetic stop being meaningful.
    const LAST: u64 = 253_402_300_799;
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(LAST))
}

pub(crate) fn collect_rule_dates(rule: &builder::Rule, out: &mut Vec<SystemTime>) {
    for p in std::iter::once(&rule.head).chain(rule.body.iter()) {
        for t in &p.terms {
            collect_term_dates(t, out);
        }
    }
    for e in &rule.expressions {
        collect_op_dates(&e.ops, out);
    }
}

fn collect_op_dates(ops: &[builder::Op], out: &mut Vec<SystemTime>) {
    for op in ops {
        match op {
            builder::Op::Value(t) => collect_term_dates(t, out),
            builder::Op::Closure(_, inner) => collect_op_dates(inner, out),
            _ => {}
        }
    }
}

pub(crate) fn collect_term_dates(term: &Term, out: &mut Vec<SystemTime>) {
    match term {
        Term::Date(d) => out.push(date_time(*d)),
        Term::Set(s) => s.iter().for_each(|t| collect_term_dates(t, out)),
        Term::Array(a) => a.iter().for_each(|t| collect_term_dates(t, out)),
        Term::Map(m) => m.values().for_each(|t| collect_term_dates(t, out)),
        _ => {}
    }
}

/// Verifies tokens against the root public key, once per distinct token.
pub struct Verifier {
    root: PublicKey,
    limits: AuthorizerLimits,
    cache: Mutex<TokenCache>,
}

/// The run limits a token's own Datalog is read under when no config says otherwise: those of
/// `[guard]`'s defaults. (biscuit-auth's own default allows 1 ms, which a busy machine can
/// exceed on a legitimate token.)
pub fn default_limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(20),
    }
}

struct TokenCache {
    capacity: usize,
    // foldhash, not SipHash: the key is a whole token (a kilobyte of base64) hashed on every
    // request, and collisions cost only a string comparison, never a wrong answer.
    map: HashMap<Arc<str>, Arc<VerifiedToken>, foldhash::fast::RandomState>,
}

impl Verifier {
    /// A verifier for `root`, caching up to `capacity` verified tokens.
    pub fn new(root: PublicKey, capacity: usize) -> Self {
        Self::with_limits(root, capacity, default_limits())
    }

    /// A verifier that reads tokens under the given run limits.
    pub fn with_limits(root: PublicKey, capacity: usize, limits: AuthorizerLimits) -> Self {
        Verifier {
            root,
            limits,
            cache: Mutex::new(TokenCache {
                capacity: capacity.max(1),
                map: HashMap::default(),
            }),
        }
    }

    /// The root public key.
    pub fn root(&self) -> PublicKey {
        self.root
    }

    /// Parses and verifies a base64 token. The signature check runs once per distinct token;
    /// afterwards the verified token comes from the cache. Expiry and revocation are *not*
    /// checked here: they change with time, a signature does not.
    pub fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge(token.len()));
        }
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(token)
        {
            return Ok(Arc::clone(hit));
        }
        let verified = Arc::new(self.verify_uncached(token)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.map.len() >= cache.capacity {
            // A full cache is emptied rather than managed: re-verifying costs ~0.2 ms, and a
            // flood of distinct tokens must not grow memory.
            cache.map.clear();
        }
        cache.map.insert(Arc::from(token), Arc::clone(&verified));
        Ok(verified)
    }

    /// Verifies without consulting or filling the cache.
    pub fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        VerifiedToken::from_biscuit(self.signed(token)?, &self.limits)
    }

    /// Parses a base64 token and checks every block's signature against the root key.
    fn signed(&self, token: &str) -> Result<Biscuit, TokenError> {
        UnverifiedBiscuit::from_base64(token)
            .map_err(|e| TokenError::Malformed(describe_token_error(&e)))?
            .verify(self.root)
            .map_err(|e| TokenError::BadSignature(e.to_string()))
    }

    /// Reads an approval token (see [`mint_approval`]): verified against the root key, every
    /// check of every block passing at `now` (so unexpired), exactly one approver, and bound to
    /// `agent` and `tenant` when it is bound at all. Revocation is the caller's to check.
    pub fn verify_approval(
        &self,
        token: &str,
        agent: &str,
        tenant: &str,
        now: SystemTime,
    ) -> Result<Approval, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::NotApproval("the approval is empty".into()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge(token.len()));
        }
        let biscuit = self.signed(token)?;
        let mut authorizer = AuthorizerBuilder::new()
            .set_limits(self.limits.clone())
            .fact(builder::fact("time", &[builder::date(&now)]))
            .and_then(|b| b.code("allow if approver($a);"))
            .and_then(|b| b.build(&biscuit))
            .map_err(|e| TokenError::Malformed(e.to_string()))?;
        authorizer.authorize().map_err(|e| match e {
            biscuit_auth::error::Token::RunLimit(_) => TokenError::TooComplex(e.to_string()),
            _ => TokenError::NotApproval(
                "it has expired, or it is not an approval (no `approver` fact)".into(),
            ),
        })?;
        // Queries see the authority block only: a block appended later cannot add an approver.
        let names = |authorizer: &mut biscuit_auth::Authorizer, rule: &str| {
            authorizer
                .query(rule)
                .map(|facts: Vec<(String,)>| facts.into_iter().map(|(n,)| n).collect::<Vec<_>>())
                .map_err(|e| TokenError::NotApproval(e.to_string()))
        };
        let by = names(&mut authorizer, "data($a) <- approver($a)")?;
        let [by] = by.as_slice() else {
            return Err(TokenError::NotApproval(format!(
                "it names {} approvers; exactly one is needed",
                by.len()
            )));
        };
        let agents = names(&mut authorizer, "data($a) <- approves_agent($a)")?;
        if !agents.is_empty() && !agents.iter().any(|a| a == agent) {
            return Err(TokenError::NotApproval(format!(
                "it approves agent {} only, and `{agent}` asked",
                agents.join(", ")
            )));
        }
        let tenants = names(&mut authorizer, "data($t) <- approves_tenant($t)")?;
        if !tenants.is_empty() && !tenants.iter().any(|t| t == tenant) {
            return Err(TokenError::NotApproval(format!(
                "it approves tenant {} only, and an agent of `{tenant}` asked",
                tenants.join(", ")
            )));
        }
        Ok(Approval {
            by: by.clone(),
            revocation_ids: biscuit
                .revocation_identifiers()
                .iter()
                .map(hex::encode)
                .collect(),
        })
    }

    /// Forgets every cached token.
    pub fn clear(&self) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .clear();
    }
}

fn describe_token_error(e: &biscuit_auth::error::Token) -> String {
    match e {
        biscuit_auth::error::Token::Base64(_) => "not valid base64url".into(),
        other => other.to_string(),
    }
}

/// A readable account of a token, for `capgate token inspect`.
#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    /// Whether every signature verifies against the root key, or why not.
    pub verification: String,
    /// Who the token speaks for, when it verified.
    pub identity: Option<Identity>,
    /// Earliest expiry over all blocks.
    pub expires_at: Option<String>,
    /// The blocks, authority first.
    pub blocks: Vec<BlockInspection>,
}

/// One block of an inspected token.
#[derive(Debug, serde::Serialize)]
pub struct BlockInspection {
    /// 0 = authority.
    pub index: usize,
    /// Revocation id, hex.
    pub revocation_id: String,
    /// The block's Datalog.
    pub datalog: String,
}

/// Describes a token without trusting it: blocks are printed even when the signature fails.
pub fn inspect(token: &str, root: Option<PublicKey>) -> Result<Inspection, TokenError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge(token.len()));
    }
    let unverified = UnverifiedBiscuit::from_base64(token)
        .map_err(|e| TokenError::Malformed(describe_token_error(&e)))?;
    let ids = unverified.revocation_identifiers();
    let mut blocks = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let datalog = unverified
            .print_block_source(index)
            .unwrap_or_else(|e| format!("<cannot print: {e}>"));
        blocks.push(BlockInspection {
            index,
            revocation_id: hex::encode(id),
            datalog,
        });
    }
    let (verification, identity, expires_at) = match root {
        None => ("not checked: no root key available".to_owned(), None, None),
        Some(root) => match unverified.verify(root) {
            Ok(biscuit) => match VerifiedToken::from_biscuit(biscuit, &default_limits()) {
                Ok(v) => (
                    format!("verified against {root}"),
                    Some(v.identity.clone()),
                    v.expires_at.map(rfc3339),
                ),
                Err(e) => (format!("signature verified, but {e}"), None, None),
            },
            Err(e) => (format!("does NOT verify against {root}: {e}"), None, None),
        },
    };
    Ok(Inspection {
        verification,
        identity,
        expires_at,
        blocks,
    })
}

impl Inspection {
    /// Terminal rendering.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "signature:  {}", self.verification);
        if let Some(id) = &self.identity {
            let _ = writeln!(out, "agent:      {}", id.agent);
            let _ = writeln!(out, "tenant:     {}", id.tenant);
            let _ = writeln!(out, "rights:     {}", id.rights.join(", "));
        }
        let _ = writeln!(
            out,
            "expires:    {}",
            self.expires_at
                .as_deref()
                .unwrap_or("never (no time check)")
        );
        for b in &self.blocks {
            let title = if b.index == 0 {
                "authority".to_owned()
            } else {
                format!("block {}", b.index)
            };
            let _ = writeln!(out, "\n── {title} ── revocation id {}", b.revocation_id);
            for line in b.datalog.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

/// RFC 3339 in UTC, second precision.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    humantime::format_rfc3339_seconds(date_time(secs)).to_string()
}

mod unix_seconds {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        s.serialize_u64(secs)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = u64::deserialize(d)?;
        Ok(super::date_time(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> AgentGrant {
        let mut prefixes = BTreeMap::new();
        prefixes.insert("fs_read".to_owned(), vec!["/ws/docs/".to_owned()]);
        AgentGrant {
            agent: "agent-7".into(),
            tenant: "acme".into(),
            rights: vec!["fs_read".into(), "echo".into()],
            prefixes,
            ttl: Some(Duration::from_secs(3600)),
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_their_identity() {
        let root = RootKey::generate();
        let token = mint_agent_token(&root, &grant())
            .unwrap()
            .to_base64()
            .unwrap();
        let v = Verifier::new(root.public(), 10).verify(&token).unwrap();
        let id = v.identity();
        assert_eq!(id.agent, "agent-7");
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.rights, vec!["echo".to_owned(), "fs_read".to_owned()]);
        assert_eq!(id.prefixes["fs_read"], vec!["/ws/docs/".to_owned()]);
        assert_eq!(id.prefixes["echo"], vec![String::new()]);
        let exp = v.expires_at().unwrap();
        let delta = exp.duration_since(SystemTime::now()).unwrap();
        assert!(delta <= Duration::from_secs(3600) && delta > Duration::from_secs(3500));
        v.check_expiry(SystemTime::now()).unwrap();
        assert!(v.check_expiry(exp + Duration::from_secs(2)).is_err());
    }

    #[test]
    fn another_root_key_is_refused() {
        let root = RootKey::generate();
        let other = RootKey::generate();
        let token = mint_agent_token(&other, &grant())
            .unwrap()
            .to_base64()
            .unwrap();
        let err = Verifier::new(root.public(), 10).verify(&token).unwrap_err();
        assert!(matches!(err, TokenError::BadSignature(_)), "{err:?}");
    }

    #[test]
    fn garbage_empty_and_huge_tokens_are_refused() {
        let v = Verifier::new(RootKey::generate().public(), 10);
        assert_eq!(v.verify("").unwrap_err(), TokenError::Missing);
        assert!(matches!(
            v.verify("not a token!"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&"A".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLarge(_))
        ));
    }

    #[test]
    fn truncated_tokens_are_refused() {
        let root = RootKey::generate();
        let token = mint_agent_token(&root, &grant())
            .unwrap()
            .to_base64()
            .unwrap();
        let v = Verifier::new(root.public(), 10);
        let cut = &token[..token.len() / 2];
        assert!(v.verify(cut).is_err());
    }

    #[test]
    fn a_task_block_narrows_and_its_expiry_wins() {
        let root = RootKey::generate();
        let token = mint_agent_token(&root, &grant())
            .unwrap()
            .to_base64()
            .unwrap();
        let verifier = Verifier::new(root.public(), 10);
        let agent = verifier.verify(&token).unwrap();
        let mut tools = BTreeMap::new();
        tools.insert("fs_read".to_owned(), vec!["/ws/docs/a/".to_owned()]);
        let expires_at = SystemTime::now() + Duration::from_secs(600);
        let grant = TaskGrant {
            task_id: "t1".into(),
            tools,
            expires_at,
        };
        let task = append_task_block(&agent, &grant)
            .unwrap()
            .to_base64()
            .unwrap();
        let task = verifier.verify(&task).unwrap();
        assert_eq!(task.block_count(), 2);
        assert!(agent.is_prefix_of(&task));
        assert!(!task.is_prefix_of(&agent));
        let got = task.expires_at().unwrap();
        let want = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                expires_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            );
        assert_eq!(got, want);
        assert_eq!(task.identity().agent, "agent-7");
    }

    /// `token` with `block` appended offline, as a sub-agent would, in base64.
    fn appended(token: &Biscuit, block: BlockBuilder) -> String {
        token.append(block).unwrap().to_base64().unwrap()
    }

    #[test]
    fn a_sub_agent_block_cannot_change_the_identity() {
        let root = RootKey::generate();
        let token = mint_agent_token(&root, &grant()).unwrap();
        let widened = appended(
            &token,
            BlockBuilder::new()
                .code("tenant(\"other\"); right(\"fs_write\"); agent(\"root\");")
                .unwrap(),
        );
        let v = Verifier::new(root.public(), 10).verify(&widened).unwrap();
        assert_eq!(v.identity().tenant, "acme");
        assert_eq!(v.identity().agent, "agent-7");
        assert!(!v.identity().rights.contains(&"fs_write".to_owned()));
    }

    /// A block may carry any `u64` as a date; reading it must not overflow (a panic here would
    /// happen before expiry and revocation are checked).
    #[test]
    fn dates_past_what_a_clock_holds_do_not_panic() {
        let root = RootKey::generate();
        let token = mint_agent_token(&root, &grant()).unwrap();
        let far = appended(
            &token,
            BlockBuilder::new()
                .fact(builder::fact("until", &[Term::Date(u64::MAX)]))
                .unwrap()
                .check(builder::check(
                    &[builder::pred("time", &[builder::var("t")])],
                    builder::CheckKind::One,
                ))
                .unwrap(),
        );
        let v = Verifier::new(root.public(), 10).verify(&far).unwrap();
        assert!(v.next_time_bound(SystemTime::now()).is_some());
        assert_eq!(rfc3339(date_time(u64::MAX)), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn a_date_in_the_current_second_bounds_until_the_next_second() {
        let at = |s: u64, ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        let bounds = [at(100, 0), at(200, 0)];
        assert_eq!(next_bound(&bounds, at(99, 500)), Some(at(100, 0)));
        // Datalog still sees `time` = 100 until 101: a `$t > 100` rule has not fired yet.
        assert_eq!(next_bound(&bounds, at(100, 500)), Some(at(101, 0)));
        assert_eq!(next_bound(&bounds, at(101, 0)), Some(at(200, 0)));
        assert_eq!(next_bound(&bounds, at(200, 999)), Some(at(201, 0)));
        assert_eq!(next_bound(&bounds, at(201, 0)), None);
    }

    #[test]
    fn approvals_name_their_approver_and_bind_to_an_agent() {
        let root = RootKey::generate();
        let v = Verifier::new(root.public(), 10);
        let now = SystemTime::now();
        let minute = Duration::from_secs(60);
        let mint = |key: &RootKey, scope: &ApprovalScope| {
            mint_approval(key, "lead", scope, minute)
                .unwrap()
                .to_base64()
                .unwrap()
        };
        let any = mint(&root, &ApprovalScope::default());
        let by = v.verify_approval(&any, "agent-7", "acme", now).unwrap().by;
        assert_eq!(by, "lead");
        let scope = ApprovalScope {
            agent: Some("agent-7".into()),
            tenant: Some("acme".into()),
        };
        let bound = mint(&root, &scope);
        assert!(v.verify_approval(&bound, "agent-7", "acme", now).is_ok());
        for (agent, tenant) in [("agent-8", "acme"), ("agent-7", "globex")] {
            let e = v.verify_approval(&bound, agent, tenant, now).unwrap_err();
            assert_eq!(e.kind(), "approval_invalid", "{agent} of {tenant}");
        }
        // Expired, an agent token, and a block appended to widen the binding.
        let later = now + Duration::from_secs(120);
        assert!(v.verify_approval(&any, "agent-7", "acme", later).is_err());
        let agent = mint_agent_token(&root, &grant())
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(v.verify_approval(&agent, "agent-7", "acme", now).is_err());
        let widened = UnverifiedBiscuit::from_base64(&bound)
            .unwrap()
            .append(
                BlockBuilder::new()
                    .code("approves_agent(\"agent-8\");")
                    .unwrap(),
            )
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(v.verify_approval(&widened, "agent-8", "acme", now).is_err());
        let foreign = mint(&RootKey::generate(), &ApprovalScope::default());
        let e = v
            .verify_approval(&foreign, "agent-7", "acme", now)
            .unwrap_err();
        assert_eq!(e.kind(), "token_bad_signature");
    }

    #[test]
    fn keys_round_trip_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/root.key");
        let key = RootKey::generate();
        key.write(&path, false).unwrap();
        assert!(
            key.write(&path, false).is_err(),
            "no overwrite without force"
        );
        let loaded = RootKey::load(&path).unwrap();
        assert_eq!(loaded.public_text(), key.public_text());
        assert!(key.public_text().starts_with("ed25519/"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn inspection_shows_blocks_even_for_foreign_keys() {
        let root = RootKey::generate();
        let token = mint_agent_token(&root, &grant())
            .unwrap()
            .to_base64()
            .unwrap();
        let good = inspect(&token, Some(root.public())).unwrap();
        assert!(good.verification.starts_with("verified"));
        assert!(good.blocks[0].datalog.contains("agent(\"agent-7\")"));
        let foreign = inspect(&token, Some(RootKey::generate().public())).unwrap();
        assert!(foreign.verification.contains("does NOT verify"));
        assert_eq!(foreign.blocks.len(), 1);
    }
}
