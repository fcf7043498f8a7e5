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
    let dialer = crate::network::Dialer::tcp().with_node_tls(tls);

    // Read the membership first (and let go of the file before copying it).
    let membership = {
        let mut sm = open_store(cfg, "state.redb", StateMachineStore::open)?;
        sm.applied_state().await.map_err(io)?.1
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::read_contents;
    use openraft::storage::IOFlushed;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId::new(term, 1).to_committed(), index)
    }

    fn record(action: &str) -> Request {
        Request {
            request_id: action.into(),
            actor: "alice".into(),
            at_ms: 1000,
            cmd: Command::Record { action: action.into(), details: serde_json::Value::Null },
        }
    }

    /// A survivor that holds an entry it never applied (the leader died before telling it the
    /// entry was committed, and may have acknowledged it): the recovery applies it, so nothing
    /// the lost majority acknowledged is dropped; then the stores say "one voter, new term".
    #[tokio::test]
    async fn the_survivors_unapplied_entries_are_kept_and_it_stands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // Peers 2 and 3 at addresses where nothing listens: gone.
        let cfg = Config::parse(
            "n1.yaml",
            &format!(
                "node_id: 1\ncluster_id: c1\ndata_dir: {}\nlisten: 127.0.0.1:7001\ninitial_members:\n  - {{ id: 1, addr: \"127.0.0.1:7001\" }}\n  - {{ id: 2, addr: \"127.0.0.1:9\" }}\n  - {{ id: 3, addr: \"127.0.0.1:10\" }}\n",
                data.display()
            ),
        )
        .unwrap();
        crate::node::init_data_dir(&cfg).unwrap();
        {
            let mut log = LogStore::open(&data.join("raft-log.redb")).unwrap();
            let mut sm = StateMachineStore::open(&data.join("state.redb")).unwrap();
            let nodes = BTreeMap::from([
                (1, Node { addr: "127.0.0.1:7001".into() }),
                (2, Node { addr: "127.0.0.1:9".into() }),
                (3, Node { addr: "127.0.0.1:10".into() }),
            ]);
            let three = openraft::Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap();
            let entries = vec![
                Entry::new_membership(log_id(1, 0), three),
                Entry::new_normal(log_id(1, 1), record("test.applied")),
                Entry::new_normal(log_id(1, 2), record("test.acknowledged")),
            ];
            log.append(entries.clone(), IOFlushed::noop()).await.unwrap();
            log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
            apply(&mut sm, entries[..2].to_vec()).await.unwrap();
            sm.flush().await.unwrap();
        }

        let r = force_new_cluster(&cfg, "sre").await.unwrap();
        assert_eq!(
            (r.previous_voters.clone(), r.applied_before, r.replayed, r.term, r.index),
            (vec![1, 2, 3], 1, 1, 2, 4),
            "{r:?}"
        );
        assert!(r.backup.join("state.redb").is_file(), "the data dir was copied aside first");

        let db = redb::Database::open(data.join("state.redb")).unwrap();
        let c = read_contents(&db).unwrap();
        let actions: Vec<&str> = c.audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            vec!["cluster.membership", "test.applied", "test.acknowledged", "cluster.recovered", "cluster.membership"]
        );
        assert_eq!(c.last_applied, Some(log_id(2, 4)));
        drop(db);
        let mut sm = StateMachineStore::open(&data.join("state.redb")).unwrap();
        let (_, m) = sm.applied_state().await.unwrap();
        assert_eq!(m.membership().voter_ids().collect::<Vec<_>>(), vec![1]);
        let mut log = LogStore::open(&data.join("raft-log.redb")).unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(log_id(2, 4)), Some(log_id(2, 4))));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
    }
}
