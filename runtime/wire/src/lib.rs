//! troupe's wire layer: the types that cross a process boundary and the one codec
//! that encodes them.
//!
//! Invariants:
//! - Every byte that leaves or enters a process goes through [`codec`]; switching the
//!   codec (bincode 2 today) is a change to that module only.
//! - Decoding never panics and never allocates more than the configured frame cap.
//! - This crate has no I/O, no async and no runtime dependency, so the SDK stays light.

pub mod blob;
pub mod codec;
pub mod envelope;
pub mod introspect;
pub mod path;
pub mod protocol;

pub use blob::{Blob, Bytes, Hash, Manifest};
pub use codec::{CodecError, FRAME_BYTES_MAX_DEFAULT, FrameReader, decode, decode_frame, encode, encode_frame};
pub use envelope::{Envelope, Frame, RemoteError, RequestKind, TraceId};
pub use path::{ActorPath, PathError};
pub use protocol::{JsonCodec, JsonOf, Protocol};
