//! System 08, chat: the pure parts — the wire protocol between the chat actors, a
//! conversation's state machine (sequence, members, dedup window, bounded history,
//! receipts), the rules for user and conversation ids, the JSON frames a client and a
//! gateway exchange over a WebSocket, and the history checker the tests and the
//! benchmark judge delivery with, and the server side of end-to-end encryption
//! (devices, public keys, to-device mailboxes; `keys`). No I/O, no clock, no runtime: the shell crate
//! (`troupe-chat-shell`) runs them as actors, and a client needs only this crate.

pub mod checker;
pub mod conversation;
pub mod frames;
pub mod ids;
pub mod keys;
pub mod lab;
pub mod presence;
pub mod proto;

pub use conversation::{ConvState, Entry, Event, EventBody, Limits, SendOutcome};
