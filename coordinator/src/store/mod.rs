//! Durable storage on redb: the Raft log in one file, the state machine in another (redb has
//! one writer per database, and the two are written by different openraft tasks).
//!
//! Every redb call on a file blocks on disk I/O (fsync), so it runs on tokio's blocking pool,
//! never on the async worker threads. Stores over in-memory databases ([`Storage::InMemory`],
//! used by the deterministic simulation) run their I/O inline instead: a real thread would make
//! the schedule depend on wall time.

mod log_store;
mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{Contents, ReplicatedHealth, StateMachineStore, StateView, read_contents};

use redb::Database;
use redb::backends::InMemoryBackend;
use std::io;
use std::sync::Arc;

/// Maps any redb error to the `io::Error` openraft's storage traits speak.
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Where a store's I/O runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoMode {
    /// On tokio's blocking pool (files: fsync blocks).
    Blocking,
    /// On the calling task (in-memory databases: nothing blocks, no thread is involved).
    Inline,
}

/// Runs storage work where `mode` says.
pub(crate) async fn blocking<T, F>(mode: IoMode, f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match mode {
        IoMode::Blocking => tokio::task::spawn_blocking(f).await.map_err(io_err)?,
        IoMode::Inline => f(),
    }
}

/// Where a node keeps its Raft log and state.
#[derive(Clone, Default)]
pub enum Storage {
    /// redb files in the configured data dir (production).
    #[default]
    Files,
    /// Two in-memory redb databases owned by the caller, which keeps them across restarts of the
    /// node (the simulation models a crash as losing the process, never the disk).
    InMemory(MemoryDisk),
}

/// The two in-memory databases of one simulated node.
#[derive(Clone)]
pub struct MemoryDisk {
    /// The Raft log.
    pub log: Arc<Database>,
    /// The state machine.
    pub state: Arc<Database>,
}

impl MemoryDisk {
    /// Two fresh, empty databases.
    pub fn new() -> io::Result<Self> {
        let mk = || -> io::Result<Arc<Database>> {
            Ok(Arc::new(Database::builder().create_with_backend(InMemoryBackend::new()).map_err(io_err)?))
        };
        Ok(MemoryDisk { log: mk()?, state: mk()? })
    }
}

#[cfg(test)]
mod conformance {
    //! openraft's storage conformance suite, run against the redb stores.

    use super::{LogStore, StateMachineStore};
    use crate::types::TypeConfig;
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;

    struct RedbBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = LogStore::open(&dir.path().join("log.redb")).expect("open log");
            let sm = StateMachineStore::open(&dir.path().join("sm.redb")).expect("open sm");
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn redb_stores_pass_openraft_suite() {
        TypeConfig::run(async {
            Suite::test_all(RedbBuilder).await.expect("conformance suite");
        });
    }
}
