//! GGUF v2/v3 reader: header, metadata key/values, tensor infos, alignment.
//!
//! The parser works on a byte slice and never trusts a length it reads: every
//! count and size is checked against the bytes that remain and against the named
//! bounds below before anything is allocated, so a truncated or hostile file is an
//! error, never a panic or a huge allocation (fuzzed in `fuzz/`, property-tested
//! here). Tensors are looked up by name; their order in the file is never assumed.
//! Tensor data ranges are validated at parse time (inside the file, aligned, no
//! overlap with the header), so `tensor_bytes` cannot go out of bounds later.

pub mod quant;
pub mod writer;

use std::collections::HashMap;

pub use quant::GgmlType;

/// "GGUF" read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the tensor data section when `general.alignment` is absent (bytes).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest string we accept (key, value or tensor name), in bytes. The chat
/// template is the longest real string (a few KiB).
pub const STRING_BYTES_MAX: u64 = 1 << 20;
/// Most elements in one metadata array (the vocabulary has 49,152).
pub const ARRAY_LEN_MAX: u64 = 1 << 24;
/// Most metadata keys and most tensors in one file.
pub const KV_COUNT_MAX: u64 = 1 << 16;
pub const TENSOR_COUNT_MAX: u64 = 1 << 16;
/// Most dimensions of one tensor (ggml's GGML_MAX_DIMS).
pub const TENSOR_DIMS_MAX: u32 = 4;
/// Deepest nesting of arrays inside arrays.
pub const ARRAY_DEPTH_MAX: u32 = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GgufError {
    #[error("not a GGUF file (magic {0:#010x})")]
    BadMagic(u32),
    #[error("unsupported GGUF version {0} (need 2 or 3)")]
    UnsupportedVersion(u32),
    #[error("file truncated at byte {at}: needed {needed} more bytes while reading {what}")]
    Truncated { at: u64, needed: u64, what: &'static str },
    #[error("{what} is {got}, over the limit {max}")]
    TooLarge { what: &'static str, got: u64, max: u64 },
    #[error("invalid UTF-8 in {0}")]
    BadUtf8(&'static str),
    #[error("unknown metadata value type {0}")]
    BadValueType(u32),
    #[error("unknown or unsupported tensor type {ty} for tensor {name:?}")]
    BadTensorType { name: String, ty: u32 },
    #[error("tensor {name:?}: {why}")]
    BadTensor { name: String, why: String },
    #[error("duplicate {what} {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("bad alignment {0} (must be a power of two, 1..=65536)")]
    BadAlignment(u64),
    #[error("metadata key {key:?}: {why}")]
    BadMetadata { key: String, why: String },
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// A metadata value. Arrays keep their element values (the tokenizer needs them).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type, widened; None for non-integers or negative values.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lives and how it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute offset of the first byte in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Rows of a 2-D view: product of every dim but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// A parsed GGUF header; tensor data stays in the caller's bytes.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order (duplicates rejected).
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated { at: self.pos as u64, needed: n - remaining, what });
        }
        let n = n as usize; // n <= remaining, which fits in usize
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn string(&mut self, what: &'static str) -> Result<String> {
        let len = self.u64(what)?;
        if len > STRING_BYTES_MAX {
            return Err(GgufError::TooLarge { what, got: len, max: STRING_BYTES_MAX });
        }
        let s = self.take(len, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| GgufError::BadUtf8(what))
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>("u8")?[0]),
            1 => Value::I8(self.array::<1>("i8")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            3 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            4 => Value::U32(self.u32("u32")?),
            5 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            6 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            7 => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::BadMetadata { key: String::new(), why: format!("bool byte {b}") }),
            },
            8 => Value::String(self.string("string value")?),
            9 => {
                if depth >= ARRAY_DEPTH_MAX {
                    return Err(GgufError::TooLarge {
                        what: "array nesting",
                        got: depth as u64 + 1,
                        max: ARRAY_DEPTH_MAX as u64,
                    });
                }
                let elem_ty = self.u32("array element type")?;
                let n = self.u64("array length")?;
                if n > ARRAY_LEN_MAX {
                    return Err(GgufError::TooLarge { what: "array length", got: n, max: ARRAY_LEN_MAX });
                }
                // Every element takes at least one byte, so this bounds the allocation
                // by the file size even before the elements are read.
                let min = min_value_bytes(elem_ty)?;
                if n.saturating_mul(min) > self.remaining() {
                    return Err(GgufError::Truncated {
                        at: self.pos as u64,
                        needed: n.saturating_mul(min) - self.remaining(),
                        what: "array elements",
                    });
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            t => return Err(GgufError::BadValueType(t)),
        })
    }
}

fn min_value_bytes(ty: u32) -> Result<u64> {
    Ok(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10 | 11 | 12 => 8,
        9 => 12,
        t => return Err(GgufError::BadValueType(t)),
    })
}

impl GgufFile {
    /// Parse the header of a whole GGUF file held in `buf`.
    pub fn parse(buf: &[u8]) -> Result<GgufFile> {
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > TENSOR_COUNT_MAX {
            return Err(GgufError::TooLarge { what: "tensor count", got: n_tensors, max: TENSOR_COUNT_MAX });
        }
        if n_kv > KV_COUNT_MAX {
            return Err(GgufError::TooLarge { what: "metadata count", got: n_kv, max: KV_COUNT_MAX });
        }
        let mut metadata = Vec::new();
        let mut meta_index = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata value type")?;
            let value = c.value(ty, 0).map_err(|e| match e {
                GgufError::BadMetadata { why, .. } => GgufError::BadMetadata { key: key.clone(), why },
                e => e,
            })?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Duplicate { what: "metadata key", name: key });
            }
            metadata.push((key, value));
        }
        let alignment = match meta_index.get("general.alignment") {
            Some(&i) => {
                let a = metadata[i].1.as_u64().ok_or_else(|| GgufError::BadMetadata {
                    key: "general.alignment".into(),
                    why: "not an unsigned integer".into(),
                })?;
                if a == 0 || !a.is_power_of_two() || a > 65536 {
                    return Err(GgufError::BadAlignment(a));
                }
                a
            }
            None => DEFAULT_ALIGNMENT,
        };
        let mut raw = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dims")?;
            if n_dims == 0 || n_dims > TENSOR_DIMS_MAX {
                return Err(GgufError::BadTensor { name, why: format!("{n_dims} dimensions") });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dim")?);
            }
            let ty_raw = c.u32("tensor type")?;
            let rel = c.u64("tensor offset")?;
            let ty = GgmlType::from_u32(ty_raw).ok_or(GgufError::BadTensorType { name: name.clone(), ty: ty_raw })?;
            raw.push((name, dims, ty, rel));
        }
        let header_end = c.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::new();
        for (name, dims, ty, rel) in raw {
            let n_bytes = tensor_n_bytes(&name, &dims, ty)?;
            if rel % alignment != 0 {
                return Err(GgufError::BadTensor { name, why: format!("offset {rel} not aligned to {alignment}") });
            }
            let offset =
                data_offset.checked_add(rel).filter(|&o| o.checked_add(n_bytes).is_some_and(|e| e <= file_len));
            let Some(offset) = offset else {
                return Err(GgufError::BadTensor {
                    name,
                    why: format!("data [{rel}, +{n_bytes}) past the end of the file ({file_len} bytes)"),
                });
            };
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Duplicate { what: "tensor", name });
            }
            tensors.push(TensorInfo { name, dims, ty, offset, n_bytes });
        }
        Ok(GgufFile { version, alignment, metadata, tensors, data_offset, meta_index, tensor_index })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?
            .as_u64()
            .ok_or_else(|| GgufError::BadMetadata { key: key.into(), why: "not an unsigned integer".into() })
    }
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.require(key)?
            .as_f64()
            .ok_or_else(|| GgufError::BadMetadata { key: key.into(), why: "not a number".into() })
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| GgufError::BadMetadata { key: key.into(), why: "not a string".into() })
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }
    /// The bytes of a tensor. `buf` must be the buffer this header was parsed from
    /// (ranges were checked against its length then).
    pub fn tensor_bytes<'a>(&self, buf: &'a [u8], t: &TensorInfo) -> Result<&'a [u8]> {
        let start = usize::try_from(t.offset).ok();
        let end = start.and_then(|s| s.checked_add(t.n_bytes as usize));
        match (start, end) {
            (Some(s), Some(e)) if e <= buf.len() => Ok(&buf[s..e]),
            _ => Err(GgufError::BadTensor { name: t.name.clone(), why: "buffer shorter than at parse time".into() }),
        }
    }
}

fn tensor_n_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64> {
    let bad = |why: String| GgufError::BadTensor { name: name.to_string(), why };
    let mut n: u64 = 1;
    for &d in dims {
        if d == 0 {
            return Err(bad("zero-sized dimension".into()));
        }
        n = n.checked_mul(d).ok_or_else(|| bad("element count overflows".into()))?;
    }
    let (block, bytes) = ty.block();
    if !dims[0].is_multiple_of(block) {
        return Err(bad(format!("row length {} not a multiple of the {ty:?} block ({block})", dims[0])));
    }
    (n / block).checked_mul(bytes).ok_or_else(|| bad("byte size overflows".into()))
}

#[cfg(test)]
pub(crate) mod tests;
