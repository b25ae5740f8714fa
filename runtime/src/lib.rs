//! troupe-runtime: nodes, supervised actors, topologies, durable state, membership,
//! transport and placement. It knows nothing of any system: systems are topology
//! files plus actor kinds registered in a [`KindRegistry`].
//!
//! Start at [`Node::start`]; write actor kinds with [`Behavior`] + [`FromParams`];
//! talk to actors with [`ActorHandle`].

pub mod actor;
pub mod admin;
pub mod agent;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod handle;
pub mod kinds;
pub mod metrics;
pub mod node;
pub use troupe_core::placement;
pub mod registry;
pub mod reply;
use troupe_core::retry;
pub mod slot;
pub mod stats;
pub mod store;
pub mod supervision;

pub use actor::{ActorError, Behavior, Ctx, FromParams, MsgOf, ReplyOf, current_trace, fail};
pub use config::{ClusterConfig, ConfigErrors, KindSpec, Loaded, Placement, Topology};
pub use handle::ActorHandle;
pub use kinds::KindRegistry;
pub use node::{Node, NodeError};
pub use reply::{Reply, ReplyStream, ReplyTo, StreamTo};
pub use store::{Recovered, Store, StoreError, WriteOp};
pub use troupe_wire as wire;
pub use troupe_wire::{ActorPath, Protocol, RemoteError};
