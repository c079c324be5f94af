//! Tasks: what an agent asks for, what issuance grants, and the record the store keeps.
//!
//! Invariant: a [`TaskRecord`] never holds the task token (a bearer secret), only the
//! revocation id of the task's block, which is how every token derived from it is recognized
//! and revoked.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::time::{parse_duration, rfc3339, unix_seconds};

/// What an agent declares when it asks for a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Why the task exists, in words. Shown beside what the task did.
    pub purpose: String,
    /// Tools the task needs.
    pub tools: Vec<String>,
    /// Resource prefixes per tool, as written by the requester (canonicalized at issuance).
    /// A tool without an entry asks for everything its agent may touch with it. A tool named
    /// twice is refused (JSON would otherwise keep the last, silently).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_keys"
    )]
    pub resources: BTreeMap<String, Vec<String>>,
    /// Lifetime: seconds, or a duration such as `"15m"`. Default `[policy] default_task_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    /// The person or system the task acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Who approved the task's side effects, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The tenant the task acts for; default: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Limits on how much the task may do, enforced by the guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// How much a task may do: calls in all, calls per tool, calls per minute. Every field is
/// optional; `None` (or a tool not named) is unlimited. In a token these are facts of the task
/// block (and of any block a sub-agent appends), and the lowest value any block names is the one
/// that holds, so a derived token can lower a limit but never raise it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Calls the task may make in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    /// Calls per tool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_tool: BTreeMap<String, u64>,
    /// Calls within any 60 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u64>,
}

/// The largest budget value accepted (Biscuit integers are signed 64-bit).
pub const MAX_BUDGET: u64 = 1_000_000_000;

impl Budget {
    /// No limit at all.
    pub fn is_empty(&self) -> bool {
        self.calls.is_none() && self.per_tool.is_empty() && self.per_minute.is_none()
    }

    /// Lowers every limit to `other`'s where `other` is lower (the meet of two budgets).
    pub fn narrow(&mut self, other: &Budget) {
        fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        self.calls = min(self.calls, other.calls);
        self.per_minute = min(self.per_minute, other.per_minute);
        for (tool, n) in &other.per_tool {
            let e = self.per_tool.entry(tool.clone()).or_insert(*n);
            *e = (*e).min(*n);
        }
    }

    /// Checks the shape: every value between 1 and [`MAX_BUDGET`]. (A limit of 0 admits
    /// nothing: a task that may not call anything is a request mistake.)
    pub fn validate(&self) -> Result<(), String> {
        let check = |what: String, n: u64| {
            if n == 0 || n > MAX_BUDGET {
                Err(format!(
                    "`budget.{what}` must be between 1 and {MAX_BUDGET}, not {n}"
                ))
            } else {
                Ok(())
            }
        };
        if let Some(n) = self.calls {
            check("calls".into(), n)?;
        }
        if let Some(n) = self.per_minute {
            check("per_minute".into(), n)?;
        }
        for (tool, n) in &self.per_tool {
            check(format!("per_tool.{tool}"), *n)?;
        }
        Ok(())
    }
}

/// The limit a call would have gone over: nothing ran.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BudgetExhausted {
    /// `calls`, `per_tool.<tool>` or `per_minute`.
    pub limit: String,
    /// The limit.
    pub max: u64,
    /// Calls already counted against it.
    pub used: u64,
}

impl std::fmt::Display for BudgetExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.limit.as_str() {
            "per_minute" => write!(
                f,
                "the task's budget `per_minute` = {} is used up ({} calls in the last 60 s); retry later",
                self.max, self.used
            ),
            limit => write!(
                f,
                "the task's budget `{limit}` = {} is used up ({} calls made); a new task is needed for more",
                self.max, self.used
            ),
        }
    }
}

/// What a budgeted task has spent, as the guard counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BudgetUse {
    /// Calls counted in all.
    pub calls: u64,
    /// Calls counted per tool.
    pub per_tool: BTreeMap<String, u64>,
}

impl BudgetUse {
    /// Whether `budget` still admits a call of `tool` (ignoring the per-minute rate, which
    /// recovers on its own).
    pub fn admits(&self, budget: &Budget, tool: &str) -> bool {
        budget.calls.is_none_or(|max| self.calls < max)
            && budget
                .per_tool
                .get(tool)
                .is_none_or(|max| self.per_tool.get(tool).copied().unwrap_or(0) < *max)
    }
}

/// A map whose keys must be distinct: a request naming a key twice is ambiguous, and taking
/// either one would be a guess.
fn unique_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, Vec<String>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of tool names to lists of resource prefixes")
        }

        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> Result<Self::Value, M::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, Vec<String>>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "`resources` names `{k}` twice"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// A lifetime as seconds or as a human duration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    /// Whole seconds.
    Seconds(u64),
    /// `"90s"`, `"15m"`, `"1h"`.
    Text(String),
}

impl Ttl {
    /// The lifetime, or why it is not one.
    pub fn duration(&self) -> Result<Duration, String> {
        match self {
            Ttl::Seconds(s) => Ok(Duration::from_secs(*s)),
            Ttl::Text(t) => parse_duration(t),
        }
    }
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
    /// The budget written into the task block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// The workload whose JWT the task was issued on, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadName>,
    /// The RFC 7638 thumbprint of the key the task token is bound to (DPoP), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// Who vouched for a workload: a JWT's issuer and subject.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadName {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
}

/// Whether a granted prefix covers a resource: the empty prefix covers everything, a prefix
/// ending in `/` covers what lies below it, and any other names exactly one resource. (A plain
/// string prefix would let the grant `docs/a.txt` reach `docs/a.txt.secret`.) The guard's
/// Datalog spells the same rule ([`COVERS_DATALOG`]).
pub fn covers(prefix: &str, resource: &str) -> bool {
    prefix.is_empty()
        || resource == prefix
        || (prefix.ends_with('/') && resource.starts_with(prefix))
}

/// [`covers`] as a Datalog expression over the variables `$p` (the prefix) and `$r` (the
/// resource), for the task block's check.
pub const COVERS_DATALOG: &str =
    "$p == \"\" || $r == $p || ($p.ends_with(\"/\") && $r.starts_with($p))";

/// Why a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// Someone ended it (HTTP `DELETE`, `capgate task end`, in-band `task_end`).
    Completed,
    /// Its time ran out.
    Expired,
    /// It was revoked without being completed (for instance its agent token was revoked).
    Revoked,
}

impl EndReason {
    /// `completed`, `expired` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
        }
    }

    /// Parses [`EndReason::as_str`] back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "completed" => Some(EndReason::Completed),
            "expired" => Some(EndReason::Expired),
            "revoked" => Some(EndReason::Revoked),
            _ => None,
        }
    }
}

/// One task, as stored. The task token itself is never stored: it is a bearer secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// The agent it was issued to.
    pub agent: String,
    /// The agent's tenant.
    pub tenant: String,
    /// Revocation id (hex) of the task block: the task's identity inside tokens.
    pub revocation_id: String,
    /// What was asked for.
    pub intent: Intent,
    /// What was granted.
    pub grant: TaskGrant,
    /// Issuance time.
    #[serde(serialize_with = "ser_time")]
    pub created_at: SystemTime,
    /// When access ends.
    #[serde(serialize_with = "ser_time")]
    pub expires_at: SystemTime,
    /// When it ended, if it has.
    #[serde(serialize_with = "ser_opt_time")]
    pub ended_at: Option<SystemTime>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// What revoked it, when it was revoked by a rule rather than by a person (for instance
    /// `anomaly:revoke_after_denials`).
    pub revoked_by: Option<String>,
    /// The task's trace id (32 hex), fixed at issuance.
    pub trace_id: String,
    /// The task's root span id (16 hex), fixed at issuance.
    pub span_id: String,
}

impl TaskRecord {
    /// Was this tool and resource inside what the task declared (its intent, as canonicalized
    /// into the grant)?
    pub fn declares(&self, tool: &str, resource: &str) -> bool {
        self.intent.tools.iter().any(|t| t == tool)
            && self
                .grant
                .tools
                .get(tool)
                .is_some_and(|prefixes| prefixes.iter().any(|p| covers(p, resource)))
    }

    /// Active = not ended and not past its expiry.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.ended_at.is_none() && now <= self.expires_at
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_covers_at_a_boundary_or_exactly() {
        assert!(covers("", "/ws/anything"));
        assert!(covers("/ws/docs/", "/ws/docs/a.txt"));
        assert!(covers("/ws/docs/a.txt", "/ws/docs/a.txt"));
        assert!(!covers("/ws/docs/a.txt", "/ws/docs/a.txt.secret"));
        assert!(!covers("/ws/docs/a.txt", "/ws/docs/a.txt-old/x"));
        assert!(!covers("/ws/docs", "/ws/docs-private/x"));
        assert!(covers(
            "https://api.example.com/",
            "https://api.example.com/v1"
        ));
    }

    #[test]
    fn a_tool_named_twice_in_resources_is_refused() {
        let twice = r#"{"purpose":"p","tools":["fs_read"],"resources":{"fs_read":["a/"],"fs_read":["b/"]}}"#;
        let e = serde_json::from_str::<Intent>(twice)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`fs_read` twice"), "{e}");
        let once = r#"{"purpose":"p","tools":["fs_read"],"resources":{"fs_read":["a/"]}}"#;
        let i: Intent = serde_json::from_str(once).unwrap();
        assert_eq!(i.resources["fs_read"], vec!["a/".to_owned()]);
    }
}
