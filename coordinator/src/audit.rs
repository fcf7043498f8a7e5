//! The append-only, hash-chained audit log: entry shape, hashing and offline verification.
//!
//! Each entry's hash covers every other field and the previous entry's hash, so editing,
//! removing or reordering any entry breaks every hash after it. Verification needs nothing but
//! the entries, so an auditor can check an export without access to the cluster.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1-based position in the chain.
    pub seq: u64,
    /// Wall-clock time stamped by the leader that proposed the change.
    pub time_unix_ms: i64,
    /// Principal that caused the change (`raft` for changes the consensus layer made itself).
    pub actor: String,
    /// Dotted action name, e.g. `region.add`.
    pub action: String,
    /// What changed. serde_json keeps object keys sorted, so the text is canonical.
    pub details: serde_json::Value,
    /// Hash of the previous entry ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) of the canonical form of all fields above.
    pub hash: String,
    /// Raft log index that produced the entry.
    pub log_index: u64,
}

impl AuditEntry {
    /// Builds the entry that follows `prev_hash`, computing its hash.
    pub fn new(
        seq: u64,
        time_unix_ms: i64,
        actor: &str,
        action: &str,
        details: serde_json::Value,
        prev_hash: &str,
        log_index: u64,
    ) -> Self {
        let mut e = AuditEntry {
            seq,
            time_unix_ms,
            actor: actor.to_string(),
            action: action.to_string(),
            details,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
            log_index,
        };
        e.hash = e.compute_hash();
        e
    }

    /// Recomputes the hash from the entry's fields (ignoring the stored `hash`).
    pub fn compute_hash(&self) -> String {
        // Length-prefixed fields: no separator inside a value can make two entries collide.
        let mut h = Sha256::new();
        let details = self.details.to_string();
        let fields: [&[u8]; 7] = [
            &self.seq.to_be_bytes(),
            &self.time_unix_ms.to_be_bytes(),
            self.actor.as_bytes(),
            self.action.as_bytes(),
            details.as_bytes(),
            self.prev_hash.as_bytes(),
            &self.log_index.to_be_bytes(),
        ];
        for f in fields {
            h.update((f.len() as u64).to_be_bytes());
            h.update(f);
        }
        hex::encode(h.finalize())
    }
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChainError {
    /// An entry's stored hash differs from the hash of its content.
    #[error("audit chain broken at seq {seq}: content does not match its hash (stored {stored}, computed {computed})")]
    HashMismatch {
        /// Sequence number of the bad entry.
        seq: u64,
        /// Hash stored in the entry.
        stored: String,
        /// Hash recomputed from its fields.
        computed: String,
    },
    /// An entry does not point at its predecessor.
    #[error("audit chain broken at seq {seq}: prev_hash {found} does not match the previous entry's hash {expected}")]
    LinkMismatch {
        /// Sequence number of the bad entry.
        seq: u64,
        /// Hash of the previous entry.
        expected: String,
        /// prev_hash stored in the entry.
        found: String,
    },
    /// Sequence numbers skip or repeat.
    #[error("audit chain broken at seq {found}: expected seq {expected} (an entry is missing or duplicated)")]
    Gap {
        /// The sequence number that should come next.
        expected: u64,
        /// The one found instead.
        found: u64,
    },
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainSummary {
    /// Entries checked.
    pub entries: u64,
    /// Hash of the last entry (the chain's head).
    pub head: String,
}

/// Incremental verifier: feed entries in order (e.g. page by page from the cluster).
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    prev_hash: String,
    checked: u64,
}

impl ChainVerifier {
    /// Starts at the genesis of a chain.
    pub fn new() -> Self {
        Self::resume(1, GENESIS_HASH)
    }

    /// Starts in the middle of a chain: `seq` is the next expected entry, `prev_hash` the hash
    /// of the entry before it (e.g. from an earlier, trusted export).
    pub fn resume(seq: u64, prev_hash: &str) -> Self {
        Self { next_seq: seq, prev_hash: prev_hash.to_string(), checked: 0 }
    }

    /// Checks the next entry.
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), ChainError> {
        if e.seq != self.next_seq {
            return Err(ChainError::Gap { expected: self.next_seq, found: e.seq });
        }
        if e.prev_hash != self.prev_hash {
            return Err(ChainError::LinkMismatch {
                seq: e.seq,
                expected: self.prev_hash.clone(),
                found: e.prev_hash.clone(),
            });
        }
        let computed = e.compute_hash();
        if computed != e.hash {
            return Err(ChainError::HashMismatch { seq: e.seq, stored: e.hash.clone(), computed });
        }
        self.next_seq += 1;
        self.prev_hash = computed;
        self.checked += 1;
        Ok(())
    }

    /// What has been verified so far.
    pub fn summary(&self) -> ChainSummary {
        ChainSummary { entries: self.checked, head: self.prev_hash.clone() }
    }
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

/// Verifies a whole chain from its genesis.
pub fn verify_chain<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Result<ChainSummary, ChainError> {
    let mut v = ChainVerifier::new();
    for e in entries {
        v.push(e)?;
    }
    Ok(v.summary())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 1..=n {
            let prev = out.last().map(|e| e.hash.clone()).unwrap_or_else(|| GENESIS_HASH.into());
            out.push(AuditEntry::new(
                i,
                1000 + i as i64,
                "alice",
                "region.add",
                json!({"name": format!("r{i}")}),
                &prev,
                i + 10,
            ));
        }
        out
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let s = verify_chain(&c).unwrap();
        assert_eq!(s.entries, 5);
        assert_eq!(s.head, c[4].hash);
    }

    #[test]
    fn edited_field_is_detected_at_its_seq() {
        let mut c = chain(5);
        c[2].actor = "mallory".into();
        assert!(matches!(verify_chain(&c), Err(ChainError::HashMismatch { seq: 3, .. })));
    }

    #[test]
    fn rehashed_edit_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].details = json!({"name": "evil"});
        c[2].hash = c[2].compute_hash();
        assert!(matches!(verify_chain(&c), Err(ChainError::LinkMismatch { seq: 4, .. })));
    }

    #[test]
    fn removed_entry_is_a_gap() {
        let mut c = chain(5);
        c.remove(1);
        assert!(matches!(verify_chain(&c), Err(ChainError::Gap { expected: 2, found: 3 })));
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let a = AuditEntry::new(1, 1, "ab", "c", json!(null), GENESIS_HASH, 1);
        let b = AuditEntry::new(1, 1, "a", "bc", json!(null), GENESIS_HASH, 1);
        assert_ne!(a.hash, b.hash);
    }
}
