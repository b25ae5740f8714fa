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
