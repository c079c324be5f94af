//! Host policies: Datalog files that end in `allow if` / `deny if`, parsed once at startup.
//!
//! Invariant: a [`Policy`] that exists parsed cleanly, and every check in it can be named back
//! to its file and line (and the `// rule: NAME` comment above it), so a denial always says
//! which rule refused. Linting warns about predicates outside capgate's vocabulary, the usual
//! cause of a rule that silently never matches.

use std::collections::BTreeSet;
use std::time::SystemTime;

use biscuit_auth::AuthorizerBuilder;
use biscuit_auth::builder::{Check, Predicate, Rule};

use capgate_core::{time, vocab};

use crate::error::Error;
use crate::token::{collect_rule_dates, collect_term_dates};

/// The shipped issuance policy, used when the config names none.
pub const DEFAULT_ISSUANCE_POLICY: &str = include_str!("../../../policies/issuance.datalog");
/// The shipped invocation policy, used when the config names none.
pub const DEFAULT_INVOCATION_POLICY: &str = include_str!("../../../policies/invocation.datalog");

/// Which decision a policy makes; each has its own vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Decides whether a task may be issued.
    Issuance,
    /// Decides whether a call may run.
    Invocation,
}

/// A named check of a policy file.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// The name from a `// rule: NAME` comment directly above, or `line-N`.
    pub name: String,
    /// 1-based line.
    pub line: usize,
    /// The check's Datalog.
    pub text: String,
}

/// A warning from [`Policy::lint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    /// 1-based line.
    pub line: usize,
    /// What looks wrong.
    pub message: String,
}

/// A parsed policy.
#[derive(Clone)]
pub struct Policy {
    kind: PolicyKind,
    origin: String,
    builder: AuthorizerBuilder,
    checks: Vec<RuleInfo>,
    warnings: Vec<LintWarning>,
    dates: Vec<SystemTime>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Policy {
    /// Parses a policy. `origin` names the file in messages.
    pub fn parse(kind: PolicyKind, origin: &str, text: &str) -> Result<Self, Error> {
        let parsed = biscuit_auth::parser::parse_source(text).map_err(|errors| {
            let first = errors.first();
            let line = first.map(|e| line_of(text, e.input)).unwrap_or(0);
            let near: String = first
                .map(|e| {
                    e.input
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(60)
                        .collect()
                })
                .unwrap_or_default();
            let message = match first.and_then(|e| e.message.clone()) {
                Some(m) => format!("Datalog does not parse: {m} (near `{near}`)"),
                None => format!("Datalog does not parse near `{near}`"),
            };
            Error::Policy {
                file: origin.to_owned(),
                line,
                message,
            }
        })?;
        if parsed.policies.is_empty() {
            return Err(Error::Policy {
                file: origin.to_owned(),
                line: 0,
                message: "no `allow if` / `deny if` policy: every decision would be a deny; end the file with `allow if true;` after the checks".into(),
            });
        }
        let checks = parsed
            .checks
            .iter()
            .map(|(src, _)| {
                let line = line_of(text, src);
                RuleInfo {
                    name: rule_name(text, line).unwrap_or_else(|| format!("line-{line}")),
                    line,
                    text: src.trim().to_owned(),
                }
            })
            .collect();
        let builder = AuthorizerBuilder::new()
            .code(text)
            .map_err(|e| Error::Policy {
                file: origin.to_owned(),
                line: 0,
                message: e.to_string(),
            })?;

        let mut warnings = Vec::new();
        let vocabulary: BTreeSet<&str> = vocab::TOKEN_FACTS
            .iter()
            .chain(match kind {
                PolicyKind::Issuance => vocab::ISSUANCE_FACTS.iter(),
                PolicyKind::Invocation => vocab::INVOCATION_FACTS.iter(),
            })
            .copied()
            .collect();
        // The parser's own types, converted to the builder's.
        let rules: Vec<(&str, Rule)> = parsed
            .rules
            .iter()
            .map(|(s, r)| (*s, r.clone().into()))
            .collect();
        let checks_parsed: Vec<(&str, Check)> = parsed
            .checks
            .iter()
            .map(|(s, c)| (*s, c.clone().into()))
            .collect();
        let policies: Vec<(&str, biscuit_auth::builder::Policy)> = parsed
            .policies
            .iter()
            .map(|(s, p)| (*s, p.clone().into()))
            .collect();
        let derived: BTreeSet<String> = rules
            .iter()
            .map(|(_, r)| r.head.name.clone())
            .chain(parsed.facts.iter().map(|(_, f)| {
                let f: biscuit_auth::builder::Fact = f.clone().into();
                f.predicate.name
            }))
            .collect();
        let mut check_pred = |src: &str, p: &Predicate| {
            if !vocabulary.contains(p.name.as_str()) && !derived.contains(&p.name) {
                warnings.push(LintWarning {
                    line: line_of(text, src),
                    message: format!(
                        "predicate `{}` is neither supplied by capgate ({}) nor derived by a rule in this file; anything using it never matches",
                        p.name,
                        kind_name(kind)
                    ),
                });
            }
        };
        for (src, rule) in &rules {
            rule.body.iter().for_each(|p| check_pred(src, p));
        }
        for (src, check) in &checks_parsed {
            check_queries(check).for_each(|q| q.body.iter().for_each(|p| check_pred(src, p)));
        }
        for (src, policy) in &policies {
            policy
                .queries
                .iter()
                .for_each(|q| q.body.iter().for_each(|p| check_pred(src, p)));
        }
        warnings.sort_by_key(|w| w.line);
        warnings.dedup();

        // Every date the policy mentions: a decision taken before one of them may differ after
        // it, so the guard's decision cache must not carry an allow across it.
        let mut dates = Vec::new();
        for (_, rule) in &rules {
            collect_rule_dates(rule, &mut dates);
        }
        for (_, check) in &checks_parsed {
            check_queries(check).for_each(|q| collect_rule_dates(q, &mut dates));
        }
        for (_, policy) in &policies {
            policy
                .queries
                .iter()
                .for_each(|q| collect_rule_dates(q, &mut dates));
        }
        for (_, f) in &parsed.facts {
            let f: biscuit_auth::builder::Fact = f.clone().into();
            f.predicate
                .terms
                .iter()
                .for_each(|t| collect_term_dates(t, &mut dates));
        }
        dates.sort();
        dates.dedup();

        Ok(Policy {
            kind,
            origin: origin.to_owned(),
            builder,
            checks,
            warnings,
            dates,
        })
    }

    /// When a decision taken at `now` may change because of a date the policy mentions.
    pub fn next_date(&self, now: SystemTime) -> Option<SystemTime> {
        time::next_bound(&self.dates, now)
    }

    /// Where the policy came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// What kind of decision it makes.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// A fresh authorizer builder holding this policy's checks and policies.
    pub fn builder(&self) -> AuthorizerBuilder {
        self.builder.clone()
    }

    /// The `index`-th check of the file.
    pub fn check(&self, index: usize) -> Option<&RuleInfo> {
        self.checks.get(index)
    }

    /// Warnings about predicates outside the vocabulary.
    pub fn lint(&self) -> &[LintWarning] {
        &self.warnings
    }
}

/// One failed check, in words.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedCheckInfo {
    /// `policy` for a check of the host policy, `block N` for a check carried by the token.
    pub source: String,
    /// The rule's name (policy checks) or a classification (token checks).
    pub rule: String,
    /// `file:line` for policy checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The check's Datalog.
    pub datalog: String,
}

/// Why an authorization said no, in words and in a low-cardinality code.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// A short stable code: a policy rule's name, or one of `expired`, `tool_not_granted`,
    /// `resource_not_granted`, `arg_constraint`, `block_check`, `run_limit`, `no_policy`,
    /// `deny_policy`, `evaluation_error`.
    pub reason: String,
    /// One sentence for people and models.
    pub message: String,
    /// Every failed check.
    pub failed_checks: Vec<FailedCheckInfo>,
}

impl Policy {
    /// Explains a failed authorization under this policy.
    pub fn explain(&self, error: &biscuit_auth::error::Token) -> Refusal {
        use biscuit_auth::error::{FailedCheck, Logic, RunLimit, Token};
        let checks = match error {
            Token::FailedLogic(Logic::Unauthorized { checks, .. })
            | Token::FailedLogic(Logic::NoMatchingPolicy { checks }) => checks.clone(),
            Token::RunLimit(limit) => {
                let what = match limit {
                    RunLimit::TooManyFacts => "too many facts",
                    RunLimit::TooManyIterations => "too many iterations",
                    RunLimit::Timeout => "the time limit",
                    RunLimit::UnexpectedQueryResult(..) => "an unexpected query result",
                };
                return Refusal {
                    reason: "run_limit".into(),
                    message: format!(
                        "authorization stopped at {what} (see [guard] limits); the token or policy derives more than capgate evaluates"
                    ),
                    failed_checks: Vec::new(),
                };
            }
            other => {
                return Refusal {
                    reason: "evaluation_error".into(),
                    message: format!("authorization could not be evaluated: {other}"),
                    failed_checks: Vec::new(),
                };
            }
        };
        let mut infos: Vec<FailedCheckInfo> = checks
            .iter()
            .map(|c| match c {
                FailedCheck::Authorizer(a) => {
                    let info = self.check(a.check_id as usize);
                    FailedCheckInfo {
                        source: "policy".into(),
                        rule: info
                            .map(|i| i.name.clone())
                            .unwrap_or_else(|| format!("check-{}", a.check_id)),
                        location: info.map(|i| format!("{}:{}", self.origin, i.line)),
                        datalog: a.rule.clone(),
                    }
                }
                FailedCheck::Block(b) => FailedCheckInfo {
                    source: format!("block {}", b.block_id),
                    rule: classify_token_check(&b.rule).into(),
                    location: None,
                    datalog: b.rule.clone(),
                },
            })
            .collect();
        // Host policy checks first: they carry the operator's names.
        infos.sort_by_key(|i| i.source != "policy");
        if let Some(first) = infos.first() {
            let where_ = match &first.location {
                Some(l) => format!("rule `{}` ({l})", first.rule),
                None => format!("{} check `{}`", first.source, first.rule),
            };
            let more = if infos.len() > 1 {
                format!(
                    " (and {} more failed check{})",
                    infos.len() - 1,
                    if infos.len() == 2 { "" } else { "s" }
                )
            } else {
                String::new()
            };
            return Refusal {
                reason: first.rule.clone(),
                message: format!("denied by {where_}: {}{more}", first.datalog),
                failed_checks: infos,
            };
        }
        let (reason, message) = match error {
            Token::FailedLogic(Logic::Unauthorized { .. }) => (
                "deny_policy",
                format!("denied by a `deny if` policy in {}", self.origin),
            ),
            _ => (
                "no_policy",
                format!("no `allow if` policy in {} matched", self.origin),
            ),
        };
        Refusal {
            reason: reason.into(),
            message,
            failed_checks: infos,
        }
    }
}

/// Names a check carried by a token by what it constrains.
fn classify_token_check(rule: &str) -> &'static str {
    if rule.contains("time(") {
        "expired"
    } else if rule.contains("resource(") {
        "resource_not_granted"
    } else if rule.contains("tool(") {
        "tool_not_granted"
    } else if rule.contains("arg(") {
        "arg_constraint"
    } else {
        "block_check"
    }
}

fn check_queries(check: &Check) -> impl Iterator<Item = &Rule> {
    check.queries.iter()
}

fn kind_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Issuance => "issuance facts and token facts",
        PolicyKind::Invocation => "invocation facts and token facts",
    }
}

/// The 1-based line of a suffix slice of `text`.
fn line_of(text: &str, slice: &str) -> usize {
    let base = text.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    // Slices handed back by the parser point into `text`; anything else has no line.
    if at < base || at > base + text.len() {
        return 0;
    }
    let offset = at - base;
    // Skip leading whitespace/comments the parser may include in the slice.
    let lead = slice.len() - slice.trim_start().len();
    text[..offset + lead].matches('\n').count() + 1
}

/// The name given by a `// rule: NAME` comment in the comment block directly above `line`.
fn rule_name(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = line.checked_sub(2)?;
    loop {
        let l = lines.get(i)?.trim();
        if !l.starts_with("//") {
            return None;
        }
        if let Some(rest) = l.trim_start_matches('/').trim().strip_prefix("rule:") {
            let name = rest
                .split_whitespace()
                .next()?
                .trim_end_matches(['—', '-', ':']);
            return (!name.is_empty()).then(|| name.to_owned());
        }
        i = i.checked_sub(1)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policies_parse_without_warnings() {
        let inv = Policy::parse(
            PolicyKind::Invocation,
            "invocation.datalog",
            DEFAULT_INVOCATION_POLICY,
        )
        .unwrap();
        assert!(inv.lint().is_empty(), "{:?}", inv.lint());
        assert!(inv.check(0).unwrap().name != "line-0");
        let iss = Policy::parse(
            PolicyKind::Issuance,
            "issuance.datalog",
            DEFAULT_ISSUANCE_POLICY,
        )
        .unwrap();
        assert!(iss.lint().is_empty(), "{:?}", iss.lint());
    }

    #[test]
    fn dates_in_a_policy_bound_cached_decisions() {
        let text = "deny if time($t), $t > 2030-01-01T00:00:00Z;\nallow if true;\n";
        let p = Policy::parse(PolicyKind::Invocation, "p.datalog", text).unwrap();
        let before = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(
            p.next_date(before),
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_893_456_000))
        );
        let after = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_900_000_000);
        assert_eq!(p.next_date(after), None);
    }

    #[test]
    fn a_parse_error_names_file_and_line() {
        let text = "// ok\ncheck if tool($t);\n\ncheck if tool($t, ;\nallow if true;\n";
        let err = Policy::parse(PolicyKind::Invocation, "p.datalog", text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.datalog:4:"), "{err}");
    }

    #[test]
    fn unknown_predicates_are_linted_with_their_line() {
        let text = "check if tool($t), rigth($t);\nallow if true;\n";
        let p = Policy::parse(PolicyKind::Invocation, "p.datalog", text).unwrap();
        assert_eq!(p.lint().len(), 1);
        assert_eq!(p.lint()[0].line, 1);
        assert!(p.lint()[0].message.contains("rigth"));
    }

    #[test]
    fn derived_predicates_are_not_linted_and_rules_are_named() {
        let text = "inside($t) <- tool($t), right($t);\n// rule: must-be-inside\ncheck if inside($t);\nallow if true;\n";
        let p = Policy::parse(PolicyKind::Invocation, "p.datalog", text).unwrap();
        assert!(p.lint().is_empty());
        assert_eq!(p.check(0).unwrap().name, "must-be-inside");
        assert_eq!(p.check(0).unwrap().line, 3);
    }

    #[test]
    fn a_policy_without_a_decision_is_refused() {
        let err = Policy::parse(PolicyKind::Invocation, "p.datalog", "check if tool($t);\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow if"), "{err}");
    }
}
