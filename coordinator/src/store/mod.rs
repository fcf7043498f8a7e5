//! Durable storage on redb: the Raft log in one file, the state machine in another (redb has
//! one writer per database, and the two are written by different openraft tasks).
//!
//! Every redb call blocks on disk I/O (fsync), so it runs on tokio's blocking pool, never on
//! the async worker threads.

mod log_store;
mod state_machine;

pub use log_store::LogStore;
pub use state_machine::{ReplicatedHealth, StateMachineStore, StateView};

use std::io;

/// Maps any redb error to the `io::Error` openraft's storage traits speak.
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Runs blocking storage work off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
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
