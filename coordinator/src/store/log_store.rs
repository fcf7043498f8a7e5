//! The Raft log and vote on redb.

use super::{IoMode, blocking, io_err};
use crate::types::{Entry, LogId, TypeConfig, Vote};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// The Raft log store: entries as JSON by index, plus vote, committed and purge markers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    io: IoMode,
}

impl LogStore {
    /// Opens (or creates) the log file.
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
        txn.open_table(LOG).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        Ok(LogStore { db, io })
    }

    /// True when no vote and no entry were ever stored: a node that never took part in a
    /// cluster.
    pub fn is_fresh(&self) -> io::Result<bool> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        let log = txn.open_table(LOG).map_err(io_err)?;
        Ok(meta.get(VOTE).map_err(io_err)?.is_none() && log.first().map_err(io_err)?.is_none())
    }

    fn get_meta<T: serde::de::DeserializeOwned + Send + 'static>(&self, key: &'static str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        match meta.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        let db = self.db.clone();
        blocking(self.io, move || {
            let mut txn = db.begin_write().map_err(io_err)?;
            txn.set_durability(durability).map_err(io_err)?;
            txn.open_table(META).map_err(io_err)?.insert(key, bytes.as_slice()).map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }
}

fn to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let bounds = to_bounds(&range);
        let db = self.db.clone();
        blocking(self.io, move || {
            let txn = db.begin_read().map_err(io_err)?;
            let log = txn.open_table(LOG).map_err(io_err)?;
            let mut out = Vec::new();
            for item in log.range::<u64>(bounds).map_err(io_err)? {
                let (_, v) = item.map_err(io_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(io_err)?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(PURGED)?;
        let txn = self.db.begin_read().map_err(io_err)?;
        let log = txn.open_table(LOG).map_err(io_err)?;
        let last = match log.last().map_err(io_err)? {
            Some((_, v)) => {
                let e: Entry = serde_json::from_slice(v.value()).map_err(io_err)?;
                Some(e.log_id())
            }
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // A vote must be on disk before it is acted on, or a restarted node could vote twice
        // in one term.
        self.put_meta(VOTE, vote, Durability::Immediate).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Only an optimisation (re-apply committed entries at start without waiting for the
        // leader); losing it in a crash is harmless, so no fsync.
        self.put_meta(COMMITTED, &committed, Durability::None).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.index(), serde_json::to_vec(&e).map_err(io_err)?)))
            .collect::<io::Result<_>>()?;
        let db = self.db.clone();
        // Written and fsynced before returning: entries are readable on return and durable when
        // the callback reports it.
        let res = blocking(self.io, move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut log = txn.open_table(LOG).map_err(io_err)?;
                for (i, bytes) in &rows {
                    log.insert(*i, bytes.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)
        })
        .await;
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let db = self.db.clone();
        blocking(self.io, move || {
            let txn = db.begin_write().map_err(io_err)?;
            txn.open_table(LOG).map_err(io_err)?.retain_in(from.., |_, _| false).map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index();
        let marker = serde_json::to_vec(&log_id).map_err(io_err)?;
        let db = self.db.clone();
        blocking(self.io, move || {
            let mut txn = db.begin_write().map_err(io_err)?;
            // Marker and removal commit together, so they can never disagree; losing an
            // un-synced purge only brings back entries that are still valid.
            txn.set_durability(Durability::None).map_err(io_err)?;
            txn.open_table(META).map_err(io_err)?.insert(PURGED, marker.as_slice()).map_err(io_err)?;
            txn.open_table(LOG).map_err(io_err)?.retain_in(..=upto, |_, _| false).map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }
}
