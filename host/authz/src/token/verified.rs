//! A token whose every signature was checked against the root key, and what capgate reads
//! from it once: who it speaks for, when it expires, which dates and strings it names.
//!
//! Invariant: a [`VerifiedToken`] exists only through [`Verifier`](super::Verifier), and
//! everything read here is read from the authority block under the guard's run limits, so a
//! block a sub-agent appends can narrow the token but never change who it speaks for.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use biscuit_auth::builder::{self, Term};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit};
use capgate_core::task::Budget;
use capgate_core::{time, vocab};

use super::TokenError;
use super::error::unreadable;

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
    /// `workload($issuer, $subject)`: who vouched for the agent, when capgate minted the token
    /// for a workload JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<(String, String)>,
}

/// A token whose every signature has been checked against the root key.
pub struct VerifiedToken {
    pub(crate) biscuit: Biscuit,
    revocation_ids: Vec<String>,
    identity: Identity,
    expires_at: Option<SystemTime>,
    time_bounds: Vec<SystemTime>,
    strings: Vec<String>,
    budget: Budget,
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
    pub(crate) fn from_biscuit(
        biscuit: Biscuit,
        limits: &AuthorizerLimits,
    ) -> Result<Self, TokenError> {
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
            .map_err(unreadable)?;
        let mut query = |rule: String| -> Result<Vec<Vec<String>>, TokenError> {
            // A query's scope is the authority block (and its own rules): facts a later block
            // adds are invisible, so a sub-agent cannot change who the token speaks for.
            let facts: Vec<biscuit_auth::builder::Fact> =
                authorizer.query(rule.as_str()).map_err(unreadable)?;
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
            first(query(format!("data($a) <- {}($a)", vocab::AGENT))?),
            "exactly one agent($id) fact in the authority block",
        )?;
        let tenant = single(
            first(query(format!("data($t) <- {}($t)", vocab::TENANT))?),
            "exactly one tenant($t) fact in the authority block",
        )?;
        let mut rights: Vec<String> = first(query(format!("data($t) <- {}($t)", vocab::RIGHT))?)
            .into_iter()
            .map(|(r,)| r)
            .collect();
        rights.sort();
        rights.dedup();
        let mut by_tool: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in query(format!(
            "data($t, $p) <- {}($t, $p)",
            vocab::RESOURCE_PREFIX
        ))? {
            if let [t, p] = row.as_slice() {
                by_tool.entry(t.clone()).or_default().push(p.clone());
            }
        }
        let workload = query(format!("data($i, $s) <- {}($i, $s)", vocab::WORKLOAD))?
            .into_iter()
            .find_map(|row| match row.as_slice() {
                [i, s] => Some((i.clone(), s.clone())),
                _ => None,
            });
        let (facts, rules, checks, _) = authorizer.dump();
        let budget = budget_of(&facts, &rules);
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
                workload,
            },
            expires_at,
            time_bounds,
            strings: strings.into_iter().collect(),
            budget,
        })
    }

    /// The budget the token carries: for each limit, the lowest value any block names.
    pub fn budget(&self) -> &Budget {
        &self.budget
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
        time::next_bound(&self.time_bounds, now)
    }

    /// Whether the token has expired at `now`.
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), TokenError> {
        match self.expires_at {
            Some(t) if now > t => Err(TokenError::Expired(time::rfc3339(t))),
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
        self.biscuit.to_base64().map_err(TokenError::Build)
    }
}

/// The budget facts of every block, each limit at its lowest. A budget fact that is not
/// well-formed (a string where a number belongs, a negative number) counts as a limit of 0:
/// a token that says it is limited, in a way capgate cannot read, admits nothing. So does a
/// rule deriving a budget fact: the budget is read once, without a call's facts, so a
/// conditional limit (`budget_calls(1) <- tool("fs_write")`) could not be honoured as written.
fn budget_of(facts: &[builder::Fact], rules: &[builder::Rule]) -> Budget {
    let mut budget = Budget::default();
    let is_budget = |name: &str| {
        matches!(
            name,
            vocab::BUDGET_CALLS | vocab::BUDGET_PER_MINUTE | vocab::BUDGET_TOOL
        )
    };
    if rules.iter().any(|r| is_budget(&r.head.name)) {
        budget.calls = Some(0);
    }
    let count = |t: &Term| match t {
        Term::Integer(n) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let lower = |slot: &mut Option<u64>, n: u64| *slot = Some(slot.map_or(n, |m| m.min(n)));
    for f in facts {
        let terms = &f.predicate.terms;
        match (f.predicate.name.as_str(), terms.as_slice()) {
            (vocab::BUDGET_CALLS, [n]) => lower(&mut budget.calls, count(n)),
            (vocab::BUDGET_PER_MINUTE, [n]) => lower(&mut budget.per_minute, count(n)),
            (vocab::BUDGET_TOOL, [Term::Str(tool), n]) => {
                let n = count(n);
                let e = budget.per_tool.entry(tool.clone()).or_insert(n);
                *e = (*e).min(n);
            }
            (vocab::BUDGET_CALLS | vocab::BUDGET_PER_MINUTE | vocab::BUDGET_TOOL, _) => {
                lower(&mut budget.calls, 0)
            }
            _ => {}
        }
    }
    budget
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
        .filter(|p| p.name == vocab::TIME && p.terms.len() == 1)
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
                let t = time::date_time(d);
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

/// Every date a rule names (head, body, expressions), for bounding cached decisions.
pub fn collect_rule_dates(rule: &builder::Rule, out: &mut Vec<SystemTime>) {
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

/// Every date a term holds (sets, arrays and maps included).
pub fn collect_term_dates(term: &Term, out: &mut Vec<SystemTime>) {
    match term {
        Term::Date(d) => out.push(time::date_time(*d)),
        Term::Set(s) => s.iter().for_each(|t| collect_term_dates(t, out)),
        Term::Array(a) => a.iter().for_each(|t| collect_term_dates(t, out)),
        Term::Map(m) => m.values().for_each(|t| collect_term_dates(t, out)),
        _ => {}
    }
}
