//! troupe-runtime: nodes, supervised actors, topologies, durable state, membership,
//! transport and placement. It knows nothing of any system: systems are topology
//! files plus actor kinds registered in a [`KindRegistry`].
//!
//! Start at [`Node::start`]; write actor kinds with [`Behavior`] + [`FromParams`];
//! talk to actors with [`ActorHandle`].
//!
//! The public API is deliberate: the re-exports below, plus the modules left `pub`
//! for the node binary, the admin and HTTP shells and the tests (`admin`, `cluster`'s
//! certificates, sealing and chaos, `config`, `gateway`, `metrics`, `store`,
//! `placement`). Everything else is `pub(crate)`, and `unreachable_pub` keeps it so.

#![warn(unreachable_pub)]
#![warn(missing_docs)]

pub(crate) mod actor;
pub mod admin;
pub(crate) mod agent;
pub mod blobs;
pub(crate) mod broker;
pub mod cluster;
pub mod config;
pub(crate) mod current;
pub mod gateway;
pub(crate) mod handle;
pub mod http;
pub(crate) mod keepers;
pub(crate) mod kinds;
pub mod metrics;
pub(crate) mod node;
pub mod otlp;
pub use troupe_core::placement;
pub(crate) mod registry;
pub(crate) mod reply;
use troupe_core::retry;
pub mod pubsub;
pub mod remember;
pub mod reminders;
pub(crate) mod slot;
pub(crate) mod stats;
pub mod store;
pub(crate) mod supervision;
pub mod traces;
pub mod ws;

pub use actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf, current_trace, fail, store_failed};
pub use config::{ClusterConfig, ConfigErrors, KindSpec, Loaded, Placement, Topology};
pub use current::span_field;
pub use handle::ActorHandle;
pub use node::KindRegistry;
pub use node::{
    Change, Events, MemberChange, MemberEvents, Node, NodeError, PlacementChange, PlacementEvents, PlacementUpdate,
};
pub use reply::{Reply, ReplyStream, ReplyTo, StreamTo};
pub use store::{Recovered, Store, StoreError, WriteOp};
pub use troupe_core::membership::MemberEvent;
pub use troupe_core::replication::{Term, Terms};
/// The process runner (process groups, limits, timeouts, the bubblewrap sandbox);
/// [`Ctx::run_process`] runs a job from an actor.
pub use troupe_process as process;
pub use troupe_wire as wire;
pub use troupe_wire::{ActorPath, Protocol, RemoteError};
