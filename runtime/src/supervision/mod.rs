//! Supervision: restart policies (pure) and the supervisor actor that applies them.

pub use troupe_core::restart as policy;
pub mod supervisor;

pub use policy::{Decision, Intensity, RestartPolicy, Strategy};
pub use supervisor::{ChildSpec, Restart, StartFn, SupMsg, Supervisor, SupervisorConfig};
