//! Supervision: restart policies (pure) and the supervisor actor that applies them.

pub(crate) use troupe_core::restart as policy;
pub(crate) mod msg;
pub(crate) mod supervisor;

pub(crate) use msg::SupMsg;
pub(crate) use policy::{Intensity, Strategy};
pub(crate) use supervisor::{ChildSpec, Restart, StartFn, Supervisor, SupervisorConfig};
