//! Writes the generated part of the seed corpus (binary inputs that are easier to make
//! than to write by hand): `cargo run -p troupe-fuzz --example write_seeds`.
//! The text seeds (JSON bodies, TOML, URLs) are written by hand in `fuzz/corpus/`.

use std::path::Path;
use troupe_fuzz::targets::{gossip_packet, kind_messages};
use troupe_wire::codec::{FRAME_BYTES_MAX_DEFAULT, encode, encode_frame};
use troupe_wire::{ActorPath, Envelope, Frame, RemoteError, RequestKind};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    // gossip_packet: real SWIM packets to n1 from a cluster forming and healing.
    let packets = gossip_packet::seed_packets();
    for (i, rec) in packets.iter().enumerate().step_by((packets.len() / 24).max(1)) {
        write(&root.join("gossip_packet"), &format!("packet_{i:03}"), rec)?;
    }
    // One run with time passing between packets.
    let mut mixed = Vec::new();
    for rec in packets.iter().take(12) {
        mixed.extend_from_slice(rec);
        mixed.extend_from_slice(&[1, 0xf4, 0x01]);
    }
    write(&root.join("gossip_packet"), "mixed", &mixed)?;

    // kind_messages: a few small payloads per protocol, and real kv messages.
    for p in 0..kind_messages::PROTOCOL_COUNT as u8 {
        write(&root.join("kind_messages"), &format!("p{p:02}_v0"), &[p, 0])?;
        write(&root.join("kind_messages"), &format!("p{p:02}_v1"), &[p, 1, 3, b'a', b'b', b'c'])?;
        write(&root.join("kind_messages"), &format!("p{p:02}_v2"), &[p, 2, 1, 0, 0])?;
    }
    let put = troupe_kv::store::KvMsg::Put { value: "hello".into() };
    write(&root.join("kind_messages"), "kv_put", &[[0u8].as_slice(), &encode(&put).expect("encodes")].concat())?;
    write(&root.join("kind_messages"), "kv_put_json", b"\x00{\"Put\":{\"value\":\"hello\"}}")?;
    write(&root.join("kind_messages"), "kv_incr_json", b"\x00{\"Incr\":{\"by\":-9223372036854775808}}")?;

    // frame_stream: a few frames, in chunks of various sizes.
    let target = ActorPath::parse("/kv/store/a").expect("a path");
    let frames = [
        Frame::Msg(Envelope {
            target: target.clone(),
            sender: None,
            request: RequestKind::Ask { corr: 7, timeout_ms: 1000 },
            trace: 42,
            payload: vec![1, 2, 3],
        }),
        Frame::Reply { corr: 7, result: Ok(vec![9; 40]) },
        Frame::Reply { corr: 8, result: Err(RemoteError::Timeout { path: "/kv/store/a".into(), ms: 5 }) },
    ];
    let mut stream = Vec::new();
    for f in &frames {
        encode_frame(f, &mut stream, FRAME_BYTES_MAX_DEFAULT).expect("encodes");
    }
    for (name, cap, sizes) in
        [("whole", 4u8, vec![]), ("bytes", 4, vec![1]), ("mixed", 4, vec![3, 7, 1, 50]), ("small_cap", 0, vec![5])]
    {
        let mut input = vec![cap];
        input.extend_from_slice(&sizes);
        input.push(0xFF);
        input.extend_from_slice(&stream);
        write(&root.join("frame_stream"), name, &input)?;
    }
    Ok(())
}
