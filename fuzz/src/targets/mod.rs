//! One module per target; each has `pub fn run(data: &[u8])`.

pub mod actor_path;
pub mod frame_stream;
pub mod gguf_parse;
pub mod gossip_packet;
pub mod kind_messages;
pub mod limiter_check;
pub mod limiter_rules;
pub mod openai_request;
pub mod shortener_input;
pub mod tokenizer;
pub mod wire_frame;

/// Splits `data` at the first `sep` byte: (before, after). No separator: (data, []).
pub(crate) fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
