//! Anomaly rules: a task whose behaviour crosses a line the operator drew is revoked at once.
//!
//! The signature of a prompt-injected agent is a task that keeps trying what it was not granted.
//! The guard reports every decision on a live task here ([`Watch::observe`]); a rule that fires
//! names itself, and the guard ends the task (revoking its block, so every token derived from it)
//! before it answers the call that crossed the line.
//!
//! Invariant: only the caller's own attempts count: a call capgate could not decide (its store or
//! audit log failed) is capgate's fault and counts for nothing, and the per-entry checks of a
//! walk (`fs_list` hiding what the token cannot read) are not attempts. Memory is bounded: a
//! task keeps at most as many timestamps per rule as its threshold, and tasks are forgotten once
//! their window has passed or they were revoked.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use capgate_core::task::covers;

/// Rule names, as `[anomaly]` spells their keys; a revocation is `anomaly:<name>`.
pub const RULE_DENIALS: &str = "revoke_after_denials";
/// See [`RULE_DENIALS`].
pub const RULE_OUT_OF_INTENT: &str = "revoke_after_out_of_intent";
/// See [`RULE_DENIALS`].
pub const RULE_SENSITIVE: &str = "sensitive";

/// Most tasks remembered at once; past it the quietest are forgotten first (their counts start
/// again), which can only delay a revocation, never cause a wrong one.
const MAX_WATCHED_TASKS: usize = 64 * 1024;

/// What the operator set in `[anomaly]`, resolved against the hosted tools.
#[derive(Debug, Clone, Default)]
pub struct AnomalyRules {
    /// Denied attempts within `window` that revoke (0: never).
    pub denials: u32,
    /// Calls outside the declared intent within `window` that revoke (0: never).
    pub out_of_intent: u32,
    /// Tools one denied attempt on which revokes.
    pub sensitive_tools: Vec<String>,
    /// `(tool, canonical prefix)`: a denied attempt on a resource below it revokes.
    pub sensitive_prefixes: Vec<(String, String)>,
    /// The window the counts are taken over.
    pub window: Duration,
}

impl AnomalyRules {
    /// True when no rule can ever fire.
    pub fn is_off(&self) -> bool {
        self.denials == 0
            && self.out_of_intent == 0
            && self.sensitive_tools.is_empty()
            && self.sensitive_prefixes.is_empty()
    }

    fn is_sensitive(&self, tool: &str, resource: &str) -> bool {
        self.sensitive_tools.iter().any(|t| t == tool)
            || self
                .sensitive_prefixes
                .iter()
                .any(|(t, p)| t == tool && !p.is_empty() && covers(p, resource))
    }
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fired {
    /// `anomaly:<rule>`: what the task record, the audit log and the task span say revoked it.
    pub revoked_by: String,
    /// What the task did, in words.
    pub detail: String,
}

/// One decision on a live task, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The task.
    pub task: &'a str,
    /// The tool called.
    pub tool: &'a str,
    /// The canonical resource.
    pub resource: &'a str,
    /// Whether the guard refused it.
    pub denied: bool,
    /// Whether it was inside what the task declared.
    pub in_intent: bool,
}

#[derive(Default)]
struct Seen {
    denials: VecDeque<Instant>,
    out_of_intent: VecDeque<Instant>,
    last: Option<Instant>,
}

/// Counts attempts per task and says when a rule fires.
pub struct Watch {
    rules: AnomalyRules,
    tasks: Mutex<HashMap<String, Seen>>,
}

impl Watch {
    /// A watch over these rules.
    pub fn new(rules: AnomalyRules) -> Self {
        Watch {
            rules,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &AnomalyRules {
        &self.rules
    }

    /// Counts one decision; `Some` when it made a rule fire (the task is then forgotten: it is
    /// about to be revoked).
    pub fn observe(&self, a: Attempt<'_>, now: Instant) -> Option<Fired> {
        let r = &self.rules;
        if a.denied && r.is_sensitive(a.tool, a.resource) {
            self.forget(a.task);
            return Some(Fired {
                revoked_by: format!("anomaly:{RULE_SENSITIVE}"),
                detail: format!(
                    "a denied attempt on `{}` (`{}`), which the operator marks sensitive",
                    a.tool, a.resource
                ),
            });
        }
        let counts_denial = a.denied && r.denials > 0;
        let counts_out = !a.in_intent && r.out_of_intent > 0;
        if !counts_denial && !counts_out {
            return None;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.len() >= MAX_WATCHED_TASKS && !tasks.contains_key(a.task) {
            prune(&mut tasks, now, r.window);
        }
        let seen = tasks.entry(a.task.to_owned()).or_default();
        seen.last = Some(now);
        let window = r.window;
        let fire = |q: &mut VecDeque<Instant>, threshold: u32| -> bool {
            q.push_back(now);
            while q.front().is_some_and(|t| now.duration_since(*t) > window) {
                q.pop_front();
            }
            while q.len() > threshold as usize {
                q.pop_front();
            }
            q.len() >= threshold as usize
        };
        let fired = if counts_denial && fire(&mut seen.denials, r.denials) {
            Some(Fired {
                revoked_by: format!("anomaly:{RULE_DENIALS}"),
                detail: format!(
                    "{} denied attempts within {}",
                    r.denials,
                    humantime::format_duration(window)
                ),
            })
        } else if counts_out && fire(&mut seen.out_of_intent, r.out_of_intent) {
            Some(Fired {
                revoked_by: format!("anomaly:{RULE_OUT_OF_INTENT}"),
                detail: format!(
                    "{} calls outside the declared intent within {}",
                    r.out_of_intent,
                    humantime::format_duration(window)
                ),
            })
        } else {
            None
        };
        if fired.is_some() {
            tasks.remove(a.task);
        }
        fired
    }

    /// Forgets a task (it ended).
    pub fn forget(&self, task: &str) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task);
    }
}

/// Drops tasks quiet for longer than the window; if none are, the quietest half.
fn prune(tasks: &mut HashMap<String, Seen>, now: Instant, window: Duration) {
    tasks.retain(|_, s| s.last.is_some_and(|t| now.duration_since(t) <= window));
    if tasks.len() >= MAX_WATCHED_TASKS {
        let mut lasts: Vec<Instant> = tasks.values().filter_map(|s| s.last).collect();
        lasts.sort();
        let cut = lasts[lasts.len() / 2];
        tasks.retain(|_, s| s.last.is_some_and(|t| t > cut));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> AnomalyRules {
        AnomalyRules {
            denials: 3,
            out_of_intent: 2,
            sensitive_tools: vec!["fs_write".into()],
            sensitive_prefixes: vec![("fs_read".into(), "/ws/secret/".into())],
            window: Duration::from_secs(60),
        }
    }

    fn attempt<'a>(tool: &'a str, resource: &'a str, denied: bool, in_intent: bool) -> Attempt<'a> {
        Attempt {
            task: "t",
            tool,
            resource,
            denied,
            in_intent,
        }
    }

    #[test]
    fn denials_fire_at_the_threshold_within_the_window_only() {
        let w = Watch::new(rules());
        let t0 = Instant::now();
        let d = attempt("fs_read", "/ws/a", true, true);
        assert_eq!(w.observe(d, t0), None);
        // Outside the window: the first one no longer counts.
        assert_eq!(w.observe(d, t0 + Duration::from_secs(61)), None);
        assert_eq!(w.observe(d, t0 + Duration::from_secs(62)), None);
        let f = w.observe(d, t0 + Duration::from_secs(63)).unwrap();
        assert_eq!(f.revoked_by, "anomaly:revoke_after_denials");
        // Allowed calls inside the intent never count.
        let ok = attempt("fs_read", "/ws/a", false, true);
        for i in 0..100 {
            assert_eq!(w.observe(ok, t0 + Duration::from_millis(i)), None);
        }
    }

    #[test]
    fn out_of_intent_and_sensitive_fire() {
        let w = Watch::new(rules());
        let now = Instant::now();
        let out = attempt("fs_list", "/ws/x", false, false);
        assert_eq!(w.observe(out, now), None);
        let f = w.observe(out, now).unwrap();
        assert_eq!(f.revoked_by, "anomaly:revoke_after_out_of_intent");
        let f = w
            .observe(attempt("fs_write", "/ws/a", true, true), now)
            .unwrap();
        assert_eq!(f.revoked_by, "anomaly:sensitive");
        let f = w
            .observe(attempt("fs_read", "/ws/secret/k", true, true), now)
            .unwrap();
        assert_eq!(f.revoked_by, "anomaly:sensitive");
        // Sensitive means a *denied* attempt; an allowed read of it is the grant at work.
        assert_eq!(
            w.observe(attempt("fs_read", "/ws/secret/k", false, true), now),
            None
        );
        // A prefix is a boundary, not a string prefix.
        assert_eq!(
            w.observe(attempt("fs_read", "/ws/secret-not/k", true, true), now),
            None
        );
    }

    #[test]
    fn rules_at_zero_never_fire() {
        let w = Watch::new(AnomalyRules {
            window: Duration::from_secs(60),
            ..Default::default()
        });
        assert!(w.rules().is_off());
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(w.observe(attempt("a", "b", true, false), now), None);
        }
        assert!(w.tasks.lock().unwrap().is_empty());
    }
}
