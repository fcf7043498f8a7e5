//! `drcut-coordinator --config FILE --force-new-cluster`: when a majority of the coordinator
//! nodes is lost for good, this node's data becomes the whole cluster again. Offline (the node
//! is stopped), once, by a person who has checked that the others are gone.
//!
//! What it does, in this order:
//! 1. Refuses when any other member of the node's last membership answers over the node
//!    transport: then the majority is not lost, and bringing nodes back is the safe path.
//! 2. Copies the data dir aside (`<data_dir>.before-recovery-<unix ms>`).
//! 3. Applies every entry of its own log that it had not applied yet. Any of them may have been
//!    committed (and acknowledged) by the lost majority; keeping them loses nothing that was.
//! 4. Appends, in a new term, an audit record `cluster.recovered` (who, which voters were
//!    given up, how much was replayed) and a membership of this node alone; snapshots the state.
//! 5. Rewrites the log store to match: no entries (purged up to the new membership), its vote
//!    for itself in the new term, committed there.
//!
//! Started normally afterwards, the node is the only voter and leads at once; new nodes join
//! under new ids (`drctl cluster add-learner`, `promote`) and catch up from its snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::vote::RaftLeaderId;

use crate::command::{Command, Request};
use crate::config::Config;
use crate::node::{NodeError, open_store, peer_state};
use crate::store::{LogStore, StateMachineStore};
use crate::types::{Entry, LogId, Node, NodeId, Vote};

/// What the recovery did.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// The voters of the membership that was given up.
    pub previous_voters: Vec<NodeId>,
    /// The index this node had applied before.
    pub applied_before: u64,
    /// Entries of its own log it applied now.
    pub replayed: u64,
    /// The new term and the index of the new membership.
    pub term: u64,
    /// See [`Recovered::term`].
    pub index: u64,
    /// Where the data dir was copied first.
    pub backup: PathBuf,
}

fn io(e: impl std::fmt::Display) -> NodeError {
    NodeError::Io(e.to_string())
}

/// Runs the recovery on `cfg`'s node; `actor` is recorded in the audit chain.
pub async fn force_new_cluster(cfg: &Config, actor: &str) -> Result<Recovered, NodeError> {
    if crate::node::check_data_dir(cfg)? {
        return Err(NodeError::Config(
            cfg.error("data_dir", format!("{} holds no cluster data: nothing to recover from", cfg.data_dir.display())),
        ));
    }
    let tls = crate::tls::from_config(cfg)?;
    let dialer = crate::network::Dialer::tcp().with_tls(tls.as_ref().map(|t| t.client.clone()));

    // Read the membership first (and let go of the files before copying them).
    let (membership, _) = {
        let mut sm = open_store(cfg, "state.redb", StateMachineStore::open)?;
        let (applied, m) = sm.applied_state().await.map_err(io)?;
        (m, applied)
    };
    let previous_voters: Vec<NodeId> = membership.membership().voter_ids().collect();
    let others: BTreeMap<NodeId, String> = membership
        .membership()
        .nodes()
        .filter(|(id, _)| **id != cfg.node_id)
        .map(|(id, n)| (*id, cfg.peer_dial_overrides.get(id).cloned().unwrap_or_else(|| n.addr.clone())))
        .collect();
    for (id, addr) in &others {
        if let Some(st) = peer_state(&dialer, addr, Duration::from_secs(2)).await {
            return Err(NodeError::Config(cfg.error(
                "data_dir",
                format!(
                    "node {id} at {addr} answers (term {}, leader {}): the majority is not lost. Bring the \
                     stopped nodes back instead (docs/OPERATIONS.md); recover only when the others are gone for good",
                    st.term,
                    if st.leader_id == 0 { "none".to_string() } else { st.leader_id.to_string() }
                ),
            )));
        }
    }

    let backup = backup_path(&cfg.data_dir);
    copy_dir(&cfg.data_dir, &backup).map_err(|e| io(format!("copying {} aside: {e}", cfg.data_dir.display())))?;

    let mut log = open_store(cfg, "raft-log.redb", LogStore::open)?;
    let mut sm = open_store(cfg, "state.redb", StateMachineStore::open)?;
    let (applied, _) = sm.applied_state().await.map_err(io)?;
    let applied_before = applied.as_ref().map(|l| l.index).unwrap_or(0);
    let state = log.get_log_state().await.map_err(io)?;
    let last = state.last_log_id;
    let pending: Vec<Entry> = match &last {
        Some(l) if l.index > applied_before || applied.is_none() => {
            let from = applied.as_ref().map(|a| a.index + 1).unwrap_or(0);
            log.try_get_log_entries(from..=l.index).await.map_err(io)?
        }
        _ => Vec::new(),
    };
    let replayed = pending.len() as u64;
    apply(&mut sm, pending).await?;

    let vote = log.read_vote().await.map_err(io)?;
    let last_term = last.as_ref().map(|l| l.leader_id.term).unwrap_or(0);
    let term = vote.map(|v| v.leader_id.term).unwrap_or(0).max(last_term) + 1;
    let next = last.as_ref().map(|l| l.index + 1).unwrap_or(1);
    let leader = openraft::impls::leader_id_adv::LeaderId::new(term, cfg.node_id);
    let record = Request {
        request_id: format!("recover-{}-{term}", cfg.node_id),
        actor: actor.to_string(),
        at_ms: crate::clock::now_ms(),
        cmd: Command::Record {
            action: "cluster.recovered".into(),
            details: serde_json::json!({
                "survivor": cfg.node_id,
                "previous_voters": previous_voters,
                "applied_before": applied_before,
                "replayed": replayed,
                "term": term,
                "why": "majority lost for good: a new one-node cluster forced from this node's data",
            }),
        },
    };
    let alone = openraft::Membership::new(
        vec![BTreeSet::from([cfg.node_id])],
        BTreeMap::from([(cfg.node_id, Node { addr: cfg.advertise.clone() })]),
    )
    .map_err(io)?;
    let new_last = LogId::new(leader.to_committed(), next + 1);
    apply(
        &mut sm,
        vec![
            Entry::new_normal(LogId::new(leader.to_committed(), next), record),
            Entry::new_membership(new_last, alone),
        ],
    )
    .await?;
    sm.build_snapshot().await.map_err(io)?;
    sm.flush().await.map_err(io)?;

    log.truncate_after(None).await.map_err(io)?;
    log.purge(new_last).await.map_err(io)?;
    log.save_committed(Some(new_last)).await.map_err(io)?;
    log.save_vote(&Vote::new_committed(term, cfg.node_id)).await.map_err(io)?;
    Ok(Recovered { previous_voters, applied_before, replayed, term, index: new_last.index, backup })
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) -> Result<(), NodeError> {
    if entries.is_empty() {
        return Ok(());
    }
    let items: Vec<Result<crate::types::EntryResponder, std::io::Error>> =
        entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(futures::stream::iter(items)).await.map_err(io)
}

fn backup_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "data".into());
    name.push(format!(".before-recovery-{}", crate::clock::now_ms()));
    data_dir.with_file_name(name)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}
