//! Approval round trips on MCP 2026-07-28 (multi round-trip requests): an in-band `task_begin`
//! that needs a human's yes answers with an input-required result carrying an elicitation form,
//! and the client retries `task_begin` with the human's answer and the echoed `requestState`.
//!
//! Invariant: `requestState` is only a handle: what the human was asked about (the token, the
//! intent) stays here, so a client cannot change the question between the rounds. A handle
//! serves one retry, by the same token with the same arguments, within [`PENDING_TTL`]; and
//! at most [`MAX_PENDING`] questions are open at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use capgate_core::task::Intent;

/// How long a question waits for its answer (as long as a 2025 elicitation waits).
pub(crate) const PENDING_TTL: Duration = Duration::from_secs(120);
/// Most questions open at once across the host.
const MAX_PENDING: usize = 4096;
/// Most questions one agent may have open: one agent cannot crowd out the others'.
const MAX_PENDING_PER_AGENT: usize = 8;

struct Pending {
    agent: String,
    token_ids: Vec<String>,
    intent: Intent,
    asked: Instant,
}

/// Questions asked and not yet answered.
#[derive(Default)]
pub(crate) struct PendingApprovals {
    open: Mutex<HashMap<String, Pending>>,
}

/// Why a retry's answer cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// No such question (never asked, already answered, or expired).
    Unknown,
    /// Asked for another token, or about other arguments.
    Mismatch,
}

impl PendingApprovals {
    /// Records a question; `None` when too many are open (for this agent, or in all).
    pub(crate) fn ask(&self, agent: &str, token_ids: &[String], intent: &Intent) -> Option<String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, p| p.asked.elapsed() < PENDING_TTL);
        if open.len() >= MAX_PENDING
            || open.values().filter(|p| p.agent == agent).count() >= MAX_PENDING_PER_AGENT
        {
            return None;
        }
        let handle = uuid::Uuid::new_v4().simple().to_string();
        open.insert(
            handle.clone(),
            Pending {
                agent: agent.to_owned(),
                token_ids: token_ids.to_vec(),
                intent: intent.clone(),
                asked: Instant::now(),
            },
        );
        Some(handle)
    }

    /// Takes the question `handle` names, if this token asked it about this intent. The
    /// question is gone afterwards, whatever the outcome.
    pub(crate) fn take(
        &self,
        handle: &str,
        token_ids: &[String],
        intent: &Intent,
    ) -> Result<(), Resume> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let p = open.remove(handle).ok_or(Resume::Unknown)?;
        if p.asked.elapsed() >= PENDING_TTL {
            return Err(Resume::Unknown);
        }
        if p.token_ids != token_ids || &p.intent != intent {
            return Err(Resume::Mismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_serves_one_retry_of_the_same_question() {
        let p = PendingApprovals::default();
        let ids = vec!["a".to_owned(), "b".to_owned()];
        let intent = Intent {
            purpose: "x".into(),
            tools: vec!["fs_write".into()],
            ..Default::default()
        };
        let h = p.ask("a", &ids, &intent).unwrap();
        let other = Intent {
            purpose: "y".into(),
            ..intent.clone()
        };
        assert_eq!(p.take(&h, &ids, &other), Err(Resume::Mismatch));
        // A mismatch spends the handle: the question must be asked again.
        assert_eq!(p.take(&h, &ids, &intent), Err(Resume::Unknown));
        let h = p.ask("a", &ids, &intent).unwrap();
        assert_eq!(
            p.take(&h, &["a".to_owned()], &intent),
            Err(Resume::Mismatch)
        );
        let h = p.ask("a", &ids, &intent).unwrap();
        assert_eq!(p.take(&h, &ids, &intent), Ok(()));
        assert_eq!(p.take(&h, &ids, &intent), Err(Resume::Unknown));
        assert_eq!(p.take("forged", &ids, &intent), Err(Resume::Unknown));
    }

    #[test]
    fn one_agent_cannot_fill_the_book() {
        let p = PendingApprovals::default();
        let intent = Intent::default();
        for _ in 0..MAX_PENDING_PER_AGENT {
            assert!(p.ask("greedy", &[], &intent).is_some());
        }
        assert!(p.ask("greedy", &[], &intent).is_none());
        assert!(
            p.ask("other", &[], &intent).is_some(),
            "others are still asked"
        );
    }
}
