//! A minimal GGUF v3 writer: builds synthetic files for tests, the fuzz seed
//! corpus and tiny test models. It writes what the reader accepts (aligned data,
//! offsets in insertion order) and nothing more.

use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, Value};

#[derive(Debug, Default, Clone)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        self.kv.push((key.to_string(), v));
        self
    }
    /// `dims` in ggml order (row length first); `data` already encoded as `ty`.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), dims.to_vec(), ty, data));
        self
    }
    /// An F32 tensor from values.
    pub fn tensor_f32(&mut self, name: &str, dims: &[u64], vals: &[f32]) -> &mut Self {
        let data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend(GGUF_MAGIC.to_le_bytes());
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut rel = 0usize;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_u32().to_le_bytes());
            out.extend((rel as u64).to_le_bytes());
            rel = (rel + data.len()).div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => {
            // An empty array is written as u32 elements.
            out.extend(a.first().map_or(4, type_id).to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            for e in a {
                put_value(out, e);
            }
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// A small synthetic GGUF with every value type and a few tensor types: the fuzz
/// seed and the base of the parser's property tests.
pub fn sample_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::String("llama".into()))
        .kv("general.alignment", Value::U32(32))
        .kv("a.u8", Value::U8(7))
        .kv("a.i8", Value::I8(-7))
        .kv("a.u16", Value::U16(700))
        .kv("a.i16", Value::I16(-700))
        .kv("a.i32", Value::I32(-70000))
        .kv("a.f32", Value::F32(1.5))
        .kv("a.bool", Value::Bool(true))
        .kv("a.u64", Value::U64(1 << 40))
        .kv("a.i64", Value::I64(-(1 << 40)))
        .kv("a.f64", Value::F64(0.25))
        .kv("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into()), Value::String("Ġb".into())]))
        .kv("nested", Value::Array(vec![Value::Array(vec![Value::I32(1), Value::I32(2)])]));
    let mut q4 = crate::f16::f32_to_f16(0.5).to_le_bytes().to_vec();
    q4.extend(crate::f16::f32_to_f16(-1.0).to_le_bytes());
    q4.extend([0x1fu8; 16]);
    let mut q8 = crate::f16::f32_to_f16(0.25).to_le_bytes().to_vec();
    q8.extend((0..32u8).map(|i| i.wrapping_mul(7)));
    w.tensor("w.q4_1", &[32, 1], GgmlType::Q4_1, q4).tensor("w.q8_0", &[32, 1], GgmlType::Q8_0, q8).tensor_f32(
        "w.f32",
        &[3, 2],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    );
    w.to_bytes()
}

/// Hyper-parameters of `tiny_model`.
pub const TINY_DIM: usize = 64;
pub const TINY_LAYERS: usize = 2;

/// A complete, tiny llama GGUF (2 layers, dim 64, 2 heads / 1 KV head, byte-level
/// vocabulary of 259 tokens with a few merges, ChatML template) with seeded random
/// weights: lets engine tests and the fuzzer run without the real model.
pub fn tiny_model(seed: u64) -> Vec<u8> {
    use super::quant::{quantize_q4_1, quantize_q8_0};
    let (dim, ffn, n_head, n_kv) = (TINY_DIM, 96usize, 2usize, 1usize);
    let hd = dim / n_head;
    let mut rng = crate::sampler::Rng::new(seed);
    let mut rand =
        |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale).collect() };
    // Vocabulary: specials, then GPT-2's 256 byte chars, then merged tokens.
    let mut toks: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    let mut types = vec![3i32, 3, 3];
    toks.resize(3 + 256, String::new());
    types.resize(3 + 256, 1);
    // Fill the byte chars in GPT-2 order (printable map to themselves, the rest
    // to U+0100.. in byte order).
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        toks[3 + b as usize] = char::from_u32(c).map(String::from).unwrap_or_default();
    }
    let merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"];
    for m in merges {
        toks.push(m.replace(' ', ""));
        types.push(1);
    }
    let vocab = toks.len();
    let mut w = GgufWriter::new();
    let s = |v: &str| Value::String(v.into());
    w.kv("general.architecture", s("llama"))
        .kv("llama.block_count", Value::U32(TINY_LAYERS as u32))
        .kv("llama.context_length", Value::U32(512))
        .kv("llama.embedding_length", Value::U32(dim as u32))
        .kv("llama.feed_forward_length", Value::U32(ffn as u32))
        .kv("llama.attention.head_count", Value::U32(n_head as u32))
        .kv("llama.attention.head_count_kv", Value::U32(n_kv as u32))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("tokenizer.ggml.model", s("gpt2"))
        .kv("tokenizer.ggml.pre", s("smollm"))
        .kv("tokenizer.ggml.tokens", Value::Array(toks.into_iter().map(Value::String).collect()))
        .kv("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()))
        .kv("tokenizer.ggml.merges", Value::Array(merges.iter().map(|m| s(m)).collect()))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(2))
        .kv(
            "tokenizer.chat_template",
            s("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
        );
    let d = dim as u64;
    w.tensor("token_embd.weight", &[d, vocab as u64], GgmlType::Q8_0, quantize_q8_0(&rand(vocab * dim, 1.0)));
    // An untied output matrix (SmolLM ties it; this exercises the other path and
    // keeps the random model from simply echoing its input token).
    w.tensor("output.weight", &[d, vocab as u64], GgmlType::Q8_0, quantize_q8_0(&rand(vocab * dim, 1.0)));
    w.tensor_f32("output_norm.weight", &[d], &vec![1.0; dim]);
    // Tensors deliberately not in forward-pass order (the reader must not care).
    for l in (0..TINY_LAYERS).rev() {
        let p = |x: &str| format!("blk.{l}.{x}");
        let q = |rows: usize, cols: usize, rand: &mut dyn FnMut(usize, f32) -> Vec<f32>| {
            quantize_q4_1(&rand(rows * cols, 1.0 / (cols as f32).sqrt()))
        };
        w.tensor(&p("ffn_down.weight"), &[ffn as u64, d], GgmlType::Q4_1, q(dim, ffn, &mut rand));
        w.tensor(&p("attn_q.weight"), &[d, (n_head * hd) as u64], GgmlType::Q4_1, q(n_head * hd, dim, &mut rand));
        w.tensor(&p("attn_k.weight"), &[d, (n_kv * hd) as u64], GgmlType::Q4_1, q(n_kv * hd, dim, &mut rand));
        w.tensor(&p("attn_v.weight"), &[d, (n_kv * hd) as u64], GgmlType::Q4_1, q(n_kv * hd, dim, &mut rand));
        w.tensor(&p("attn_output.weight"), &[d, d], GgmlType::Q4_1, q(dim, dim, &mut rand));
        w.tensor(&p("ffn_gate.weight"), &[d, ffn as u64], GgmlType::Q4_1, q(ffn, dim, &mut rand));
        w.tensor(&p("ffn_up.weight"), &[d, ffn as u64], GgmlType::Q4_1, q(ffn, dim, &mut rand));
        w.tensor_f32(&p("attn_norm.weight"), &[d], &vec![1.0; dim]);
        w.tensor_f32(&p("ffn_norm.weight"), &[d], &vec![1.0; dim]);
    }
    w.to_bytes()
}
