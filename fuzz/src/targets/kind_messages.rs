//! Each kind's message decoding: the payload of an envelope (bincode) and the JSON a
//! gateway or the CLI turns into one. The first byte picks the protocol; the rest is
//! decoded as its message and as its reply. Whatever decodes re-encodes to bytes that
//! decode and re-encode to the same bytes (no value changes on a round trip), and JSON
//! that is accepted becomes a message that decodes.
//!
//! The replica protocol (runtime-internal, accepted from node certificates only) is not
//! here: its types live in the runtime crate.

use serde::{Serialize, de::DeserializeOwned};
use troupe_wire::{JsonCodec, JsonOf, Protocol, codec};

fn roundtrip<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    let Ok(value) = codec::decode::<T>(bytes) else { return };
    let once = codec::encode(&value).expect("a decoded value encodes");
    let again: T = codec::decode(&once).expect("an encoded value decodes");
    assert_eq!(codec::encode(&again).expect("encodes"), once, "a round trip changed the value");
}

fn one<P: Protocol>(bytes: &[u8]) {
    roundtrip::<P::Msg>(bytes);
    roundtrip::<P::Reply>(bytes);
    let json = JsonOf::<P>::new();
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(msg) = json.msg_from_json(text)
    {
        let _: P::Msg = codec::decode(&msg).expect("a message made from JSON decodes");
        json.msg_to_json(&msg).expect("a message made from JSON prints as JSON");
    }
    let _ = json.msg_to_json(bytes);
    let _ = json.reply_to_json(bytes);
}

/// The protocols a client or peer can address, in a fixed order (the first input byte
/// indexes it; adding one at the end keeps the corpus meaningful).
const PROTOCOLS: &[fn(&[u8])] = &[
    one::<troupe_kv::store::KvStore>,
    one::<troupe_kv::ranges::Ranges>,
    one::<troupe_diag::Counter>,
    one::<troupe_limiter::proto::LimiterService>,
    one::<troupe_limiter::proto::LimiterShard>,
    one::<troupe_limiter::proto::LimiterRules>,
    one::<troupe_limiter::proto::LimiterQuota>,
    one::<troupe_shortener::proto::Link>,
    one::<troupe_shortener::proto::ClickLog>,
    one::<troupe_shortener::proto::Gateway>,
    one::<troupe_llm::serving::proto::WorkerProto>,
    one::<troupe_llm::serving::proto::RouterProto>,
    one::<troupe_llm::serving::proto::ScalerProto>,
    one::<troupe_llm::serving::proto::GatewayProto>,
    one::<troupe_wire::introspect::NodeAgent>,
];

/// How many protocols the target covers (the seed writer makes one seed per protocol).
pub const PROTOCOL_COUNT: usize = PROTOCOLS.len();

pub fn run(data: &[u8]) {
    let Some((&which, payload)) = data.split_first() else { return };
    PROTOCOLS[which as usize % PROTOCOLS.len()](payload);
}
