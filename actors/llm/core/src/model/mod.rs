//! The llama model description: hyper-parameters read from GGUF metadata and the
//! tensor names the forward pass needs. Backends load weights from here.
//!
//! Invariants checked at load (so kernels can index without checks): every
//! tensor the forward pass touches exists with the expected shape; head_dim is
//! even (RoPE pairs) and a multiple of 32 (quant blocks); n_head % n_kv_head == 0.

use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};

/// Bounds on hyper-parameters we accept from a file (anything larger is a corrupt
/// or foreign file, and would only exhaust memory).
pub const LAYERS_MAX: usize = 256;
pub const DIM_MAX: usize = 16384;
pub const VOCAB_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("architecture {0:?} is not supported (need \"llama\")")]
    Arch(String),
    #[error("bad model shape: {0}")]
    Shape(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub n_layer: usize,
    pub dim: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context_len: usize,
}

impl ModelConfig {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch = f.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::Arch(arch.into()));
        }
        let u = |k: &str| f.get_u64(&format!("llama.{k}")).map(|v| v as usize);
        let n_layer = u("block_count")?;
        let dim = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_kv_head = f.get_u64("llama.attention.head_count_kv").map(|v| v as usize).unwrap_or(n_head);
        let ffn_dim = u("feed_forward_length")?;
        let context_len = u("context_length")?;
        let rope_base = f.get_f64("llama.rope.freq_base").unwrap_or(10000.0) as f32;
        let rms_eps = f.get_f64("llama.attention.layer_norm_rms_epsilon")? as f32;
        let emb = f.require_tensor("token_embd.weight")?;
        let vocab = emb.n_rows() as usize;
        let bad = |s: String| Err(ModelError::Shape(s));
        if n_layer == 0 || n_layer > LAYERS_MAX || dim == 0 || dim > DIM_MAX || ffn_dim == 0 || ffn_dim > 4 * DIM_MAX {
            return bad(format!("layers {n_layer}, dim {dim}, ffn {ffn_dim}"));
        }
        if n_head == 0 || n_kv_head == 0 || dim % n_head != 0 || n_head % n_kv_head != 0 {
            return bad(format!("heads {n_head}/{n_kv_head} for dim {dim}"));
        }
        let head_dim = dim / n_head;
        if head_dim % 32 != 0 || dim % 32 != 0 || ffn_dim % 32 != 0 {
            return bad(format!("head_dim {head_dim}, dim {dim}, ffn {ffn_dim} must be multiples of 32"));
        }
        if vocab == 0 || vocab > VOCAB_MAX {
            return bad(format!("vocab {vocab}"));
        }
        if !(rope_base.is_finite() && rope_base > 0.0 && rms_eps.is_finite() && rms_eps > 0.0) {
            return bad(format!("rope base {rope_base}, eps {rms_eps}"));
        }
        if let Ok(rd) = f.get_u64("llama.rope.dimension_count")
            && rd as usize != head_dim
        {
            return bad(format!("partial RoPE ({rd} of {head_dim}) is not supported"));
        }
        let cfg =
            ModelConfig { n_layer, dim, n_head, n_kv_head, head_dim, ffn_dim, vocab, rope_base, rms_eps, context_len };
        cfg.check_tensors(f)?;
        Ok(cfg)
    }

    /// Every tensor the forward pass reads, with its expected (row_len, rows).
    pub fn expected_tensors(&self) -> Vec<(String, usize, usize)> {
        let mut v =
            vec![("token_embd.weight".to_string(), self.dim, self.vocab), ("output_norm.weight".into(), self.dim, 1)];
        for l in 0..self.n_layer {
            let p = |s: &str| format!("blk.{l}.{s}");
            v.push((p("attn_norm.weight"), self.dim, 1));
            v.push((p("ffn_norm.weight"), self.dim, 1));
            v.push((p("attn_q.weight"), self.dim, self.q_dim()));
            v.push((p("attn_k.weight"), self.dim, self.kv_dim()));
            v.push((p("attn_v.weight"), self.dim, self.kv_dim()));
            v.push((p("attn_output.weight"), self.q_dim(), self.dim));
            v.push((p("ffn_gate.weight"), self.dim, self.ffn_dim));
            v.push((p("ffn_up.weight"), self.dim, self.ffn_dim));
            v.push((p("ffn_down.weight"), self.ffn_dim, self.dim));
        }
        v
    }

    fn check_tensors(&self, f: &GgufFile) -> Result<(), ModelError> {
        for (name, cols, rows) in self.expected_tensors() {
            check_shape(f.require_tensor(&name)?, cols, rows)?;
        }
        if let Some(out) = f.tensor("output.weight") {
            check_shape(out, self.dim, self.vocab)?;
        }
        Ok(())
    }
}

fn check_shape(t: &TensorInfo, cols: usize, rows: usize) -> Result<(), ModelError> {
    if t.row_len() as usize != cols || t.n_rows() as usize != rows {
        return Err(ModelError::Shape(format!("{}: dims {:?}, expected [{cols}, {rows}]", t.name, t.dims)));
    }
    let vector = rows == 1;
    let ok = match t.ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => true,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => !vector,
        GgmlType::Q8_1 => false,
    };
    if !ok {
        return Err(ModelError::Shape(format!("{}: type {:?} not supported here", t.name, t.ty)));
    }
    Ok(())
}
