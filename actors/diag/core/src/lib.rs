//! The `diag` system's wire protocol: a counter and an echo, for smoke tests and
//! benchmarks of the runtime itself. No I/O and no runtime here.

use serde::{Deserialize, Serialize};
use troupe_wire::Protocol;

pub struct Counter;

impl Protocol for Counter {
    type Msg = CounterMsg;
    type Reply = CounterReply;
    const NAME: &'static str = "diag.counter";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterMsg {
    Add {
        n: u64,
    },
    Get,
    /// Answers with the same bytes (payload-size experiments).
    Echo {
        bytes: Vec<u8>,
    },
    Reset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterReply {
    Count { total: u64, messages: u64, node: String },
    Echo { bytes: Vec<u8> },
}

/// The diag gateway: a WebSocket echo on `ports.diag` (`GET /ws/echo`), whose frames
/// go through this node's counter actor — the runtime's WebSocket service end to end.
pub struct Gateway;

impl Protocol for Gateway {
    type Msg = GatewayMsg;
    type Reply = GatewayReply;
    const NAME: &'static str = "diag.gateway";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayMsg {
    /// Where the gateway listens, and how many WebSocket sessions it holds.
    Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayReply {
    Status { addr: Option<String>, sessions: u64 },
}
