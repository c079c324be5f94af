//! Tokens: the root key, agent tokens, approvals, task blocks, and tokens verified against the
//! key, in the vocabulary of `../shared/DESIGN.md` ([`capgate_core::vocab`]):
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

mod error;
mod inspect;
mod key;
mod mint;
mod verified;
mod verifier;

pub use error::{MAX_TOKEN_LEN, TokenError};
pub use inspect::{BlockInspection, Inspection, inspect};
pub use key::{RootKey, verify_signature};
pub use mint::{
    AgentGrant, ApprovalScope, append_task_block, budget_facts, mint_agent_token, mint_approval,
    task_block,
};
pub use verified::{Identity, VerifiedToken, collect_rule_dates, collect_term_dates};
pub use verifier::{Approval, Verifier, VerifierStats, default_limits};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use biscuit_auth::builder::{self, BlockBuilder, Term};
    use biscuit_auth::{Biscuit, UnverifiedBiscuit};
    use capgate_core::task::TaskGrant;

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
            workload: None,
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
            budget: None,
            workload: None,
            holder: None,
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
