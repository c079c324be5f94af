//! `capgate token inspect`: every block of a token, printed without trusting it.

use std::fmt::Write as _;

use biscuit_auth::{PublicKey, UnverifiedBiscuit};
use capgate_core::time;

use super::{Identity, MAX_TOKEN_LEN, TokenError, VerifiedToken, default_limits};

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
    let unverified = UnverifiedBiscuit::from_base64(token).map_err(TokenError::Malformed)?;
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
                    Some(v.identity().clone()),
                    v.expires_at().map(time::rfc3339),
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
