//! Wire types of the LLM serving kinds: what the gateway, routers, workers and the scaler
//! say to each other (serde + the runtime's one codec, so the same messages work between
//! nodes over QUIC and inside one process).

use super::queue::Class;
use super::route::{Load, Stage, WorkerKey};
use serde::{Deserialize, Serialize};
use troupe_wire::Protocol;

/// Bytes that encode as one length + raw bytes (serde's `Vec<u8>` encodes element by
/// element, which is slow for megabytes of KV cache).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Blob, A::Error> {
                // JSON (the CLI's conversions) gives an array of numbers.
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Blob(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Sampling settings of one request (validated by the gateway, again by the engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub seed: Option<u64>,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl Sampling {
    pub fn to_engine(&self) -> crate::SamplingParams {
        crate::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            seed: self.seed,
            max_tokens: self.max_tokens as usize,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
        }
    }
}

/// A request for tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub sampling: Sampling,
    pub class: Class,
    /// Disaggregated pools: the prefill worker that computes the prompt's KV first.
    pub prefill: Option<WorkerKey>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finish {
    Stop,
    Length,
    Cancelled,
}

impl Finish {
    pub fn openai(&self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length | Finish::Cancelled => "length",
        }
    }
}

/// A disaggregated prefill's transfer, as measured by the decode worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TransferInfo {
    pub bytes: u64,
    /// Prefill worker: queue + compute of the prompt, ms.
    pub prefill_ms: f64,
    /// Prefill worker: copying the KV out of its cache, ms.
    pub export_ms: f64,
    /// Decode worker: from the first KV byte to the last, ms.
    pub transfer_ms: f64,
    /// Decode worker: writing the KV into its cache, ms.
    pub import_ms: f64,
}

/// Messages of a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Stream: `Tokens`… then `Done` (or `Failed`), with `Waiting` heartbeats before the
    /// first token.
    Generate(GenRequest),
    /// Stream (prefill stage): computes the prompt, then `KvHeader` and `KvPart`s.
    Prefill { prompt: Vec<u32>, sampling: Sampling, class: Class },
    /// Tell, from the scaler: admit requests (active) or keep warm.
    SetActive { active: bool },
    /// Ask: what the worker is and how loaded.
    Status,
}

/// Replies of a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerReply {
    /// Queued or prefilling; no token yet (keeps the stream's liveness visible).
    Waiting,
    /// New text (complete UTF-8) and how many tokens it took.
    Tokens {
        text: String,
        n: u32,
    },
    Done {
        finish: Finish,
        prompt_tokens: u32,
        completion_tokens: u32,
        queue_ms: f64,
        transfer: Option<TransferInfo>,
    },
    /// The worker refused or lost the request; `retryable`: another worker may succeed.
    Failed {
        message: String,
        retryable: bool,
    },
    KvHeader {
        first_token: u32,
        n_tokens: u32,
        n_layer: u32,
        kv_dim: u32,
        chunks: u32,
        prefill_ms: f64,
        export_ms: f64,
    },
    KvPart(Blob),
    Status(WorkerStatus),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub key: WorkerKey,
    pub model: String,
    pub stage: Stage,
    pub backend: String,
    pub load: Load,
    pub model_load_ms: f64,
}

/// Protocol of `llm.worker`.
pub struct WorkerProto;

impl Protocol for WorkerProto {
    type Msg = WorkerMsg;
    type Reply = WorkerReply;
    const NAME: &'static str = "llm.worker";
}

/// Messages of a router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RouterMsg {
    /// Ask: where should this request go?
    Route { pool: String, prefix: Vec<u128>, session: Option<u64>, exclude: Vec<WorkerKey> },
    /// Tell: a request failed on this worker (worker or transport failure).
    Failed { worker: WorkerKey },
    /// Tell, from a worker, every `report_ms`.
    Report { worker: WorkerKey, load: Load },
    /// Ask: the workers this router knows, with their loads.
    Workers,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RouterReply {
    /// `None`: no eligible worker in the pool.
    Routed(Option<Routed>),
    /// Every worker: stage, last reported load, routable now.
    Workers(Vec<(WorkerKey, Stage, Load, bool)>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    /// The worker the gateway streams from (unified, or decode when disaggregated).
    pub worker: WorkerKey,
    /// Disaggregated: the worker that prefills.
    pub prefill: Option<WorkerKey>,
    pub reason: String,
}

/// Protocol of `llm.router`.
pub struct RouterProto;

impl Protocol for RouterProto {
    type Msg = RouterMsg;
    type Reply = RouterReply;
    const NAME: &'static str = "llm.router";
}

/// Messages of the scaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScalerMsg {
    Report {
        worker: WorkerKey,
        load: Load,
    },
    /// Ask: active and warm workers per pool and stage.
    Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScalerReply {
    Status(Vec<(String, Stage, Vec<String>, Vec<String>)>),
}

/// Protocol of `llm.scaler`.
pub struct ScalerProto;

impl Protocol for ScalerProto {
    type Msg = ScalerMsg;
    type Reply = ScalerReply;
    const NAME: &'static str = "llm.scaler";
}

/// Messages of the gateway (it serves HTTP; actors only ask where).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayMsg {
    Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayReply {
    Address(Option<String>),
}

/// Protocol of `llm.gateway`.
pub struct GatewayProto;

impl Protocol for GatewayProto {
    type Msg = GatewayMsg;
    type Reply = GatewayReply;
    const NAME: &'static str = "llm.gateway";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_encode_as_raw_bytes() {
        let b = WorkerReply::KvPart(Blob(vec![7u8; 100_000]));
        let bytes = troupe_wire::codec::encode(&b).expect("encode");
        assert!(bytes.len() < 100_010, "{} bytes", bytes.len());
        assert_eq!(troupe_wire::codec::decode::<WorkerReply>(&bytes).expect("decode"), b);
        let j = serde_json::to_string(&Blob(vec![1, 2])).expect("json");
        assert_eq!(serde_json::from_str::<Blob>(&j).expect("json back"), Blob(vec![1, 2]));
    }
}
