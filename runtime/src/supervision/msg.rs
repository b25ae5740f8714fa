//! The supervisor's mailbox: what a node and the supervisor's own timers and starts
//! send it. Apart from the supervisor (`supervisor.rs`) so that the node, which holds
//! its kind supervisors' refs, does not name the supervisor and what it starts.

use crate::slot::ErasedSlot;
use ractor::ActorCell;
use std::sync::Arc;
use tokio::sync::oneshot;
use troupe_wire::{ActorPath, RemoteError};

pub(crate) enum SupMsg {
    /// Find or start the entity `path` (kind supervisors only).
    Activate {
        path: ActorPath,
        reply: ActivateReply,
    },
    /// Stop a child on purpose and forget it.
    StopChild {
        key: String,
    },
    RestartDue {
        keys: Vec<String>,
        round: u64,
    },
    /// A start launched in the background finished.
    Started {
        key: String,
        attempt: u64,
        result: Result<ActorCell, String>,
    },
}

pub(crate) type ActivateReply = oneshot::Sender<Result<Arc<dyn ErasedSlot>, RemoteError>>;
