//! Protocols: the message and reply types of an actor kind.
//!
//! A protocol is a zero-sized marker naming two serde types. Handles are typed by
//! protocol, so a caller cannot send a `kv` message to a limiter shard; across
//! processes the same types are encoded with [`crate::codec`]. [`JsonCodec`] turns
//! a protocol into something the CLI and HTTP gateways can drive with JSON.

use crate::codec;
use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;

pub trait Protocol: Send + Sync + 'static {
    /// Messages the actor accepts (one enum whose variants say what happens).
    type Msg: Serialize + DeserializeOwned + Send + 'static;
    /// What an ask or a stream gets back.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// A name for errors and the CLI, e.g. `kv.store`.
    const NAME: &'static str;
}

/// Converts between JSON (for people) and wire bytes (for nodes) for one protocol.
pub trait JsonCodec: Send + Sync {
    fn name(&self) -> &'static str;
    fn msg_from_json(&self, json: &str) -> Result<Vec<u8>, String>;
    fn msg_to_json(&self, bytes: &[u8]) -> Result<String, String>;
    fn reply_to_json(&self, bytes: &[u8]) -> Result<String, String>;
}

pub struct JsonOf<P>(PhantomData<fn() -> P>);

impl<P> JsonOf<P> {
    pub const fn new() -> Self {
        JsonOf(PhantomData)
    }
}

impl<P> Default for JsonOf<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Protocol> JsonCodec for JsonOf<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }
    fn msg_from_json(&self, json: &str) -> Result<Vec<u8>, String> {
        let msg: P::Msg = serde_json::from_str(json).map_err(|e| e.to_string())?;
        codec::encode(&msg).map_err(|e| e.to_string())
    }
    fn msg_to_json(&self, bytes: &[u8]) -> Result<String, String> {
        let msg: P::Msg = codec::decode(bytes).map_err(|e| e.to_string())?;
        serde_json::to_string(&msg).map_err(|e| e.to_string())
    }
    fn reply_to_json(&self, bytes: &[u8]) -> Result<String, String> {
        let reply: P::Reply = codec::decode(bytes).map_err(|e| e.to_string())?;
        serde_json::to_string(&reply).map_err(|e| e.to_string())
    }
}
