//! Writes the seed corpus of the `wire_frame` fuzz target: one file per frame
//! variant, encoded exactly as nodes send them.
//!
//! `cargo run -p troupe-wire --example make_fuzz_corpus -- fuzz/corpus/wire_frame`

use troupe_wire::codec::encode_frame;
use troupe_wire::{ActorPath, Envelope, Frame, RemoteError, RequestKind};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/wire_frame".into());
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let target = ActorPath::parse("/kv/store/hello").expect("path");
    let frames = vec![
        (
            "tell",
            Frame::Msg(Envelope {
                target: target.clone(),
                sender: None,
                request: RequestKind::Tell,
                trace: 2,
                payload: vec![1, 5, b'w'],
            }),
        ),
        (
            "ask",
            Frame::Msg(Envelope {
                target: target.clone(),
                sender: Some(ActorPath::parse("/llm/router/main").expect("path")),
                request: RequestKind::Ask { corr: 9, timeout_ms: 5000 },
                trace: 0xdead_beef | 1,
                payload: vec![0],
            }),
        ),
        (
            "stream",
            Frame::Msg(Envelope {
                target: target.clone(),
                sender: None,
                request: RequestKind::Stream { corr: 3 },
                trace: 4,
                payload: vec![],
            }),
        ),
        ("reply_ok", Frame::Reply { corr: 9, result: Ok(vec![2, 0, 1]) }),
        (
            "reply_err",
            Frame::Reply { corr: 9, result: Err(RemoteError::MailboxFull { path: target.to_string(), cap: 1024 }) },
        ),
        ("item", Frame::StreamItem { corr: 3, payload: vec![7; 40] }),
        ("end", Frame::StreamEnd { corr: 3, result: Err(RemoteError::Cancelled) }),
        ("cancel", Frame::Cancel { corr: 3 }),
        (
            "json_ask",
            Frame::JsonAsk {
                target: target.clone(),
                corr: 1,
                timeout_ms: 100,
                json: "\"Get\"".into(),
                stream: false,
                trace: 1,
            },
        ),
        ("json_tell", Frame::JsonTell { target, json: "{\"Put\":{\"value\":\"v\"}}".into(), trace: 1 }),
        ("json_reply", Frame::JsonReply { corr: 1, result: Ok("{}".into()), last: true }),
    ];
    for (name, f) in frames {
        let mut buf = Vec::new();
        encode_frame(&f, &mut buf, 1 << 20).expect("encode");
        std::fs::write(format!("{dir}/{name}"), buf).expect("write seed");
    }
    println!("wrote seeds to {dir}");
}
