//! The state machine on redb: applies committed entries, persists their changes, builds and
//! installs snapshots.
//!
//! Applied changes are committed without fsync: the Raft log is the durable record, and after a
//! crash openraft re-applies from the last applied id that did reach the disk (every apply
//! batch writes its rows and its applied id in one transaction, so they never disagree).
//! Building a snapshot and shutting down fsync, so the state is durable at least up to the
//! newest snapshot, which is all the log purge relies on.

use super::{IoMode, blocking, io_err};
use crate::audit::AuditEntry;
use crate::command::{
    AgentRecord, CheckStatus, Region, RegionStatus, Response, RunRecord, ServiceState, StoredDrill, StoredPlaybook,
};
use crate::drill::DrillRun;
use crate::state::{Change, Core, State};
use crate::types::{LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};
use futures::{Stream, TryStreamExt};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const REGIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("regions");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const CHECKS: TableDefinition<&str, &[u8]> = TableDefinition::new("checks");
const REGION_HEALTH: TableDefinition<&str, &[u8]> = TableDefinition::new("region_health");
const PLAYBOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("playbooks");
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const DRILLS: TableDefinition<&str, &[u8]> = TableDefinition::new("drills");
const DRILL_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("drill_runs");

/// The string-keyed JSON tables, in the order snapshots and loads walk them.
const KV_TABLES: [TableDefinition<&str, &[u8]>; 11] =
    [REGIONS, REQUESTS, AGENTS, CHECKS, REGION_HEALTH, PLAYBOOKS, RUNS, SERVICES, DRILLS, DRILL_RUNS, META];

const CORE: &str = "core";
const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
const SNAPSHOT_META: &str = "snapshot_meta";
const SNAPSHOT_DATA: &str = "snapshot_data";

/// What was applied, cached in memory for apply and for fast local reads.
struct Applied {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

struct Shared {
    db: Arc<Database>,
    io: IoMode,
    mem: RwLock<Applied>,
    /// The last applied index, for watchers (WatchHealth) to wake on.
    applied_tx: tokio::sync::watch::Sender<u64>,
}

/// The state machine store. Cheap to clone; clones share one database.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

/// A read-only handle on the applied state, for the API layer.
#[derive(Clone)]
pub struct StateView {
    shared: Arc<Shared>,
}

/// The health-related part of the replicated state.
#[derive(Debug, Clone, Default)]
pub struct ReplicatedHealth {
    /// Registered agents.
    pub agents: BTreeMap<String, AgentRecord>,
    /// Check states by `agent/check`.
    pub checks: BTreeMap<String, CheckStatus>,
    /// Regions.
    pub regions: BTreeMap<String, Region>,
    /// Region health.
    pub region_health: BTreeMap<String, RegionStatus>,
}

/// Everything a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    core: Core,
    regions: Vec<Region>,
    audit: Vec<AuditEntry>,
    requests: BTreeMap<String, Response>,
    #[serde(default)]
    agents: BTreeMap<String, AgentRecord>,
    #[serde(default)]
    checks: BTreeMap<String, CheckStatus>,
    #[serde(default)]
    region_health: BTreeMap<String, RegionStatus>,
    #[serde(default)]
    playbooks: BTreeMap<String, StoredPlaybook>,
    #[serde(default)]
    runs: BTreeMap<String, RunRecord>,
    #[serde(default)]
    services: BTreeMap<String, ServiceState>,
    #[serde(default)]
    drills: BTreeMap<String, StoredDrill>,
    #[serde(default)]
    drill_runs: BTreeMap<String, DrillRun>,
}

impl StateMachineStore {
    /// Opens (or creates) the state file and loads the applied state into memory.
    pub fn open(path: &Path) -> io::Result<Self> {
        let db = Database::create(path).map_err(io_err)?;
        Self::init(Arc::new(db), IoMode::Blocking)
    }

    /// A store over a database the caller keeps (in memory: I/O runs inline).
    pub fn on_memory(db: Arc<Database>) -> io::Result<Self> {
        Self::init(db, IoMode::Inline)
    }

    fn init(db: Arc<Database>, io: IoMode) -> io::Result<Self> {
        let txn = db.begin_write().map_err(io_err)?;
        for t in KV_TABLES {
            txn.open_table(t).map_err(io_err)?;
        }
        txn.open_table(AUDIT).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        let mem = load(&db.begin_read().map_err(io_err)?)?;
        let applied = mem.last_applied.map(|l| l.index()).unwrap_or(0);
        let (applied_tx, _) = tokio::sync::watch::channel(applied);
        Ok(StateMachineStore { shared: Arc::new(Shared { db, io, mem: RwLock::new(mem), applied_tx }) })
    }

    /// A read handle for the API layer.
    pub fn view(&self) -> StateView {
        StateView { shared: self.shared.clone() }
    }

    /// Forces every applied change to disk (called on graceful shutdown).
    pub async fn flush(&self) -> io::Result<()> {
        let sh = self.shared.clone();
        blocking(sh.io, move || {
            let txn = sh.db.begin_write().map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }

    fn read_snapshot(&self) -> io::Result<Option<Snapshot>> {
        let txn = self.shared.db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        let (Some(m), Some(d)) = (meta.get(SNAPSHOT_META).map_err(io_err)?, meta.get(SNAPSHOT_DATA).map_err(io_err)?)
        else {
            return Ok(None);
        };
        let meta: SnapshotMeta = serde_json::from_slice(m.value()).map_err(io_err)?;
        Ok(Some(Snapshot { meta, snapshot: d.value().to_vec() }))
    }
}

fn get_json<T: serde::de::DeserializeOwned>(txn: &ReadTransaction, key: &str) -> io::Result<Option<T>> {
    let meta = txn.open_table(META).map_err(io_err)?;
    match meta.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(io_err)?)),
        None => Ok(None),
    }
}

fn read_table<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    t: TableDefinition<&str, &[u8]>,
) -> io::Result<BTreeMap<String, T>> {
    let mut out = BTreeMap::new();
    for item in txn.open_table(t).map_err(io_err)?.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        out.insert(k.value().to_string(), serde_json::from_slice(v.value()).map_err(io_err)?);
    }
    Ok(out)
}

fn load(txn: &ReadTransaction) -> io::Result<Applied> {
    let state = State {
        core: get_json(txn, CORE)?.unwrap_or_default(),
        regions: read_table(txn, REGIONS)?,
        requests: read_table(txn, REQUESTS)?,
        agents: read_table(txn, AGENTS)?,
        checks: read_table(txn, CHECKS)?,
        region_health: read_table(txn, REGION_HEALTH)?,
        playbooks: read_table(txn, PLAYBOOKS)?,
        runs: read_table(txn, RUNS)?,
        services: read_table(txn, SERVICES)?,
        drills: read_table(txn, DRILLS)?,
        drill_runs: read_table(txn, DRILL_RUNS)?,
        ..Default::default()
    };
    let last_applied: Option<LogId> = get_json::<Option<LogId>>(txn, APPLIED)?.flatten();
    let membership: StoredMembership = get_json(txn, MEMBERSHIP)?.unwrap_or_default();
    Ok(Applied { state: state.reindexed(), last_applied, membership })
}

fn put_row<T: Serialize>(txn: &WriteTransaction, t: TableDefinition<&str, &[u8]>, key: &str, v: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(v).map_err(io_err)?;
    txn.open_table(t).map_err(io_err)?.insert(key, bytes.as_slice()).map_err(io_err)?;
    Ok(())
}

fn put_json<T: Serialize>(txn: &WriteTransaction, key: &str, v: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(v).map_err(io_err)?;
    txn.open_table(META).map_err(io_err)?.insert(key, bytes.as_slice()).map_err(io_err)?;
    Ok(())
}

/// Writes one apply batch: its changes plus the new scalars, in one transaction.
fn persist(
    txn: &WriteTransaction,
    changes: &[Change],
    core: &Core,
    applied: &Option<LogId>,
    m: &StoredMembership,
) -> io::Result<()> {
    {
        let mut regions = txn.open_table(REGIONS).map_err(io_err)?;
        let mut audit = txn.open_table(AUDIT).map_err(io_err)?;
        let mut requests = txn.open_table(REQUESTS).map_err(io_err)?;
        for c in changes {
            match c {
                Change::Region(r) => {
                    regions
                        .insert(r.name.as_str(), serde_json::to_vec(r).map_err(io_err)?.as_slice())
                        .map_err(io_err)?;
                }
                Change::Audit(e) => {
                    audit.insert(e.seq, serde_json::to_vec(e).map_err(io_err)?.as_slice()).map_err(io_err)?;
                }
                Change::Request { id, response } => {
                    requests
                        .insert(id.as_str(), serde_json::to_vec(response).map_err(io_err)?.as_slice())
                        .map_err(io_err)?;
                }
                Change::ForgetRequest(id) => {
                    requests.remove(id.as_str()).map_err(io_err)?;
                }
                Change::Agent(_)
                | Change::Check(_)
                | Change::RegionHealth(..)
                | Change::Playbook(_)
                | Change::Run(_)
                | Change::Service(_)
                | Change::Drill(_)
                | Change::DrillRun(_) => {}
            }
        }
    }
    for c in changes {
        match c {
            Change::Agent(a) => put_row(txn, AGENTS, &a.agent_id, a)?,
            Change::Check(cs) => put_row(txn, CHECKS, &cs.key(), cs)?,
            Change::RegionHealth(name, rs) => put_row(txn, REGION_HEALTH, name, rs)?,
            Change::Playbook(p) => put_row(txn, PLAYBOOKS, &p.hash, p)?,
            Change::Run(r) => put_row(txn, RUNS, &r.run.id, r)?,
            Change::Service(sv) => put_row(txn, SERVICES, &sv.service, sv)?,
            Change::Drill(d) => put_row(txn, DRILLS, &d.name, d)?,
            Change::DrillRun(d) => put_row(txn, DRILL_RUNS, &d.id, d)?,
            _ => {}
        }
    }
    put_json(txn, CORE, core)?;
    put_json(txn, APPLIED, applied)?;
    put_json(txn, MEMBERSHIP, m)
}

/// Prefixes the body with its SHA-256 so a corrupted snapshot is refused instead of installed.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = hex::encode(Sha256::digest(body)).into_bytes();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn unseal(data: &[u8]) -> io::Result<&[u8]> {
    if data.len() < 65 || data[64] != b'\n' {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot: missing checksum header"));
    }
    let (sum, body) = (&data[..64], &data[65..]);
    if hex::encode(Sha256::digest(body)).as_bytes() != sum {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot: checksum mismatch"));
    }
    Ok(body)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let sh = self.shared.clone();
        blocking(sh.io, move || {
            // One read transaction sees one committed apply batch: rows and applied id agree.
            let txn = sh.db.begin_read().map_err(io_err)?;
            let mem = load(&txn)?;
            let mut audit = Vec::new();
            for item in txn.open_table(AUDIT).map_err(io_err)?.iter().map_err(io_err)? {
                let (_, v) = item.map_err(io_err)?;
                audit.push(serde_json::from_slice(v.value()).map_err(io_err)?);
            }
            let body = SnapshotBody {
                last_applied: mem.last_applied,
                membership: mem.membership.clone(),
                core: mem.state.core.clone(),
                regions: mem.state.regions.values().cloned().collect(),
                audit,
                requests: mem.state.requests.clone(),
                agents: mem.state.agents.clone(),
                checks: mem.state.checks.clone(),
                region_health: mem.state.region_health.clone(),
                playbooks: mem.state.playbooks.clone(),
                runs: mem.state.runs.clone(),
                services: mem.state.services.clone(),
                drills: mem.state.drills.clone(),
                drill_runs: mem.state.drill_runs.clone(),
            };
            let data = seal(&serde_json::to_vec(&body).map_err(io_err)?);
            let meta = SnapshotMeta { last_log_id: mem.last_applied, last_membership: mem.membership };
            drop(txn);
            // Fsynced: also makes every earlier un-synced apply durable, so the state on disk
            // always reaches at least the newest snapshot the log may be purged up to.
            let w = sh.db.begin_write().map_err(io_err)?;
            put_json(&w, SNAPSHOT_META, &meta)?;
            w.open_table(META).map_err(io_err)?.insert(SNAPSHOT_DATA, data.as_slice()).map_err(io_err)?;
            w.commit().map_err(io_err)?;
            Ok(Snapshot { meta, snapshot: data })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let mem = self.shared.mem.read().map_err(io_err)?;
        Ok((mem.last_applied, mem.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::new();
        let mut changes = Vec::new();
        let (core, applied, membership) = {
            let mut mem = self.shared.mem.write().map_err(io_err)?;
            for (entry, responder) in batch {
                let log_id = entry.log_id();
                let index = log_id.index();
                let response = match &entry.payload {
                    EntryPayload::Blank => Response { log_index: index, ..Default::default() },
                    EntryPayload::Normal(req) => {
                        let (resp, ch) = mem.state.apply_request(index, req);
                        changes.extend(ch);
                        resp
                    }
                    EntryPayload::Membership(m) => {
                        mem.membership = StoredMembership::new(Some(log_id), m.clone());
                        let voters: Vec<u64> = m.voter_ids().collect();
                        let nodes: BTreeMap<String, String> =
                            m.nodes().map(|(id, n)| (id.to_string(), n.addr.clone())).collect();
                        let details = serde_json::json!({ "voters": voters, "nodes": nodes });
                        changes.extend(mem.state.apply_membership(index, details));
                        Response { log_index: index, ..Default::default() }
                    }
                };
                mem.last_applied = Some(log_id);
                if let Some(r) = responder {
                    replies.push((r, response));
                }
            }
            (mem.state.core.clone(), mem.last_applied, mem.membership.clone())
        };
        let sh = self.shared.clone();
        blocking(sh.io, move || {
            let mut txn = sh.db.begin_write().map_err(io_err)?;
            txn.set_durability(Durability::None).map_err(io_err)?;
            persist(&txn, &changes, &core, &applied, &membership)?;
            txn.commit().map_err(io_err)
        })
        .await?;
        self.shared.applied_tx.send_replace(applied.map(|l| l.index()).unwrap_or(0));
        // Answer only once the changes are readable from the store.
        for (r, resp) in replies {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let body: SnapshotBody = serde_json::from_slice(unseal(&snapshot)?).map_err(io_err)?;
        let meta = meta.clone();
        let sh = self.shared.clone();
        let mem = blocking(sh.io, move || {
            let txn = sh.db.begin_write().map_err(io_err)?;
            for t in [REGIONS, REQUESTS, AGENTS, CHECKS, REGION_HEALTH, PLAYBOOKS, RUNS, SERVICES, DRILLS, DRILL_RUNS] {
                txn.delete_table(t).map_err(io_err)?;
            }
            txn.delete_table(AUDIT).map_err(io_err)?;
            let changes: Vec<Change> = body
                .regions
                .iter()
                .cloned()
                .map(Change::Region)
                .chain(body.audit.iter().cloned().map(Change::Audit))
                .chain(body.requests.iter().map(|(id, r)| Change::Request { id: id.clone(), response: r.clone() }))
                .chain(body.agents.values().cloned().map(Change::Agent))
                .chain(body.checks.values().cloned().map(Change::Check))
                .chain(body.region_health.iter().map(|(k, v)| Change::RegionHealth(k.clone(), v.clone())))
                .chain(body.playbooks.values().cloned().map(Change::Playbook))
                .chain(body.runs.values().cloned().map(|r| Change::Run(Box::new(r))))
                .chain(body.services.values().cloned().map(Change::Service))
                .chain(body.drills.values().cloned().map(Change::Drill))
                .chain(body.drill_runs.values().cloned().map(|d| Change::DrillRun(Box::new(d))))
                .collect();
            persist(&txn, &changes, &body.core, &body.last_applied, &body.membership)?;
            put_json(&txn, SNAPSHOT_META, &meta)?;
            txn.open_table(META).map_err(io_err)?.insert(SNAPSHOT_DATA, snapshot.as_slice()).map_err(io_err)?;
            txn.commit().map_err(io_err)?;
            let state = State {
                core: body.core,
                regions: body.regions.into_iter().map(|r| (r.name.clone(), r)).collect(),
                requests: body.requests,
                agents: body.agents,
                checks: body.checks,
                region_health: body.region_health,
                playbooks: body.playbooks,
                runs: body.runs,
                services: body.services,
                drills: body.drills,
                drill_runs: body.drill_runs,
                ..Default::default()
            };
            Ok(Applied { state: state.reindexed(), last_applied: body.last_applied, membership: body.membership })
        })
        .await?;
        let applied = mem.last_applied.map(|l| l.index()).unwrap_or(0);
        *self.shared.mem.write().map_err(io_err)? = mem;
        self.shared.applied_tx.send_replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let this = self.clone();
        blocking(this.shared.io, move || this.read_snapshot()).await
    }
}

/// Everything a state database holds, read directly (the simulation's invariant checks read
/// every node's database between steps, without a running node).
pub struct Contents {
    /// The applied state.
    pub state: State,
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The whole audit chain, in order.
    pub audit: Vec<AuditEntry>,
}

/// Reads a state database in one read transaction.
pub fn read_contents(db: &Database) -> io::Result<Contents> {
    let txn = db.begin_read().map_err(io_err)?;
    let mem = load(&txn)?;
    let mut audit = Vec::new();
    for item in txn.open_table(AUDIT).map_err(io_err)?.iter().map_err(io_err)? {
        let (_, v) = item.map_err(io_err)?;
        audit.push(serde_json::from_slice(v.value()).map_err(io_err)?);
    }
    Ok(Contents { state: mem.state, last_applied: mem.last_applied, audit })
}

// === impl StateView ===

impl StateView {
    /// Regions by name.
    pub fn regions(&self) -> Vec<Region> {
        self.shared.mem.read().map(|m| m.state.regions.values().cloned().collect()).unwrap_or_default()
    }

    /// Agents, check states and region health as replicated.
    pub fn health(&self) -> ReplicatedHealth {
        self.shared
            .mem
            .read()
            .map(|m| ReplicatedHealth {
                agents: m.state.agents.clone(),
                checks: m.state.checks.clone(),
                regions: m.state.regions.clone(),
                region_health: m.state.region_health.clone(),
            })
            .unwrap_or_default()
    }

    /// Stored playbooks by hash.
    pub fn playbooks(&self) -> BTreeMap<String, StoredPlaybook> {
        self.shared.mem.read().map(|m| m.state.playbooks.clone()).unwrap_or_default()
    }

    /// Per-service failover state.
    pub fn services(&self) -> BTreeMap<String, ServiceState> {
        self.shared.mem.read().map(|m| m.state.services.clone()).unwrap_or_default()
    }

    /// All runs by id.
    pub fn runs(&self) -> BTreeMap<String, RunRecord> {
        self.shared.mem.read().map(|m| m.state.runs.clone()).unwrap_or_default()
    }

    /// One run.
    pub fn run(&self, id: &str) -> Option<RunRecord> {
        self.shared.mem.read().ok().and_then(|m| m.state.runs.get(id).cloned())
    }

    /// Runs that have not ended.
    pub fn active_runs(&self) -> Vec<RunRecord> {
        self.shared
            .mem
            .read()
            .map(|m| m.state.runs.values().filter(|r| !r.run.state.is_terminal()).cloned().collect())
            .unwrap_or_default()
    }

    /// Drill files by name.
    pub fn drills(&self) -> BTreeMap<String, StoredDrill> {
        self.shared.mem.read().map(|m| m.state.drills.clone()).unwrap_or_default()
    }

    /// All drill runs by id.
    pub fn drill_runs(&self) -> BTreeMap<String, DrillRun> {
        self.shared.mem.read().map(|m| m.state.drill_runs.clone()).unwrap_or_default()
    }

    /// One drill run.
    pub fn drill_run(&self, id: &str) -> Option<DrillRun> {
        self.shared.mem.read().ok().and_then(|m| m.state.drill_runs.get(id).cloned())
    }

    /// Drill runs that have not ended.
    pub fn active_drills(&self) -> Vec<DrillRun> {
        self.shared
            .mem
            .read()
            .map(|m| m.state.drill_runs.values().filter(|d| !d.is_done()).cloned().collect())
            .unwrap_or_default()
    }

    /// The scalar state (cluster identity, audit head).
    pub fn core(&self) -> Core {
        self.shared.mem.read().map(|m| m.state.core.clone()).unwrap_or_default()
    }

    /// Wakes when the applied index moves.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// Index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.shared.mem.read().ok().and_then(|m| m.last_applied.as_ref().map(|l| l.index())).unwrap_or(0)
    }

    /// Up to `limit` audit entries starting at sequence `from`.
    pub async fn audit(&self, from: u64, limit: usize) -> io::Result<Vec<AuditEntry>> {
        let sh = self.shared.clone();
        blocking(sh.io, move || {
            let txn = sh.db.begin_read().map_err(io_err)?;
            let t = txn.open_table(AUDIT).map_err(io_err)?;
            let mut out = Vec::new();
            for item in t.range(from..).map_err(io_err)?.take(limit) {
                let (_, v) = item.map_err(io_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(io_err)?);
            }
            Ok(out)
        })
        .await
    }
}
