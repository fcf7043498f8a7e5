//! The openraft type configuration and the aliases the rest of the crate uses.

use crate::command::{Request, Response};

openraft::declare_raft_types!(
    /// drcut's Raft types: replicated [`Request`]s, [`Response`]s from the state machine,
    /// nodes addressed by their gRPC `host:port`.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::impls::BasicNode,
        AsyncRuntime = crate::rt::Runtime,
);

/// A node's id: never reused within a cluster.
pub type NodeId = u64;
/// A node's address as stored in the membership.
pub type Node = openraft::impls::BasicNode;
/// Snapshots travel and rest as one checksummed byte blob.
pub type SnapshotData = Vec<u8>;
/// The Raft handle, with our state machine.
pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachineStore>;

/// A log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
/// An entry on its way to the state machine, with whoever waits for its result.
pub type EntryResponder = openraft::storage::EntryResponder<TypeConfig>;
/// A vote.
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
/// Membership with the log id that set it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot with its data.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// RPC error from the network layer.
pub type RPCError = openraft::errors::RPCError<TypeConfig>;
/// Error returned while streaming a snapshot.
pub type StreamingError = openraft::errors::StreamingError<TypeConfig>;
