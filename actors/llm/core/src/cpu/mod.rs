//! CPU backend: the llama forward pass over a mixed batch (prefill chunks and
//! decode tokens together), on a persistent thread pool with SIMD kernels.
//!
//! Per layer: RMSNorm → quantize activations to 8 bits → fused QKV GEMM → RoPE
//! (adjacent pairs, as GGUF llama files need) → K/V written to their paged slots →
//! paged attention (GQA) → output GEMM + residual → RMSNorm → fused gate/up GEMM →
//! SwiGLU → down GEMM + residual. Logits only for the rows the engine wants, from
//! the tied Q8_0 embedding. The same GEMM serves decode (one activation row per
//! sequence: a quantized matvec) and prefill (many rows, weight blocks reused).
//! Scratch buffers grow to the largest batch seen and are reused.

pub mod attention;
pub mod kernels;
pub mod pool;
pub mod quant;
pub mod vecmath;
pub mod vnni16;

use std::sync::Mutex;

use crate::backend::{Backend, BackendError, Batch};
use crate::gguf::{GgufFile, quant::dequantize};
use crate::model::{ModelConfig, ModelError};
use attention::{AttnItem, KvCache, attend};
use kernels::{Isa, OutPtr, gemm_rows};
use pool::{Chunks, Pool};
use quant::{QActs, QMat};

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// Q, K, V stacked (q_dim + 2 kv_dim rows).
    wqkv: QMat,
    wo: QMat,
    /// gate and up stacked (2 ffn_dim rows).
    wgu: QMat,
    wdown: QMat,
}

/// Weights in CPU kernel format.
#[derive(Debug)]
pub struct CpuWeights {
    emb: QMat,
    /// None: tied to `emb`.
    output: Option<QMat>,
    out_norm: Vec<f32>,
    layers: Vec<Layer>,
}

impl CpuWeights {
    pub fn load(f: &GgufFile, buf: &[u8], cfg: &ModelConfig) -> Result<CpuWeights, ModelError> {
        let mat = |name: &str| -> Result<QMat, ModelError> {
            let t = f.require_tensor(name)?;
            let raw = f.tensor_bytes(buf, t)?;
            Ok(QMat::from_gguf(t.ty, raw, t.n_rows() as usize, t.row_len() as usize))
        };
        let vec = |name: &str| -> Result<Vec<f32>, ModelError> {
            let t = f.require_tensor(name)?;
            let mut v = vec![0f32; t.n_elements() as usize];
            dequantize(t.ty, f.tensor_bytes(buf, t)?, &mut v);
            Ok(v)
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{l}.{s}");
            let qkv = [mat(&p("attn_q.weight"))?, mat(&p("attn_k.weight"))?, mat(&p("attn_v.weight"))?];
            let gu = [mat(&p("ffn_gate.weight"))?, mat(&p("ffn_up.weight"))?];
            layers.push(Layer {
                attn_norm: vec(&p("attn_norm.weight"))?,
                ffn_norm: vec(&p("ffn_norm.weight"))?,
                wqkv: concat_checked(&qkv)?,
                wo: mat(&p("attn_output.weight"))?,
                wgu: concat_checked(&gu)?,
                wdown: mat(&p("ffn_down.weight"))?,
            });
        }
        let output = match f.tensor("output.weight") {
            Some(_) => Some(mat("output.weight")?),
            None => None,
        };
        Ok(CpuWeights { emb: mat("token_embd.weight")?, output, out_norm: vec("output_norm.weight")?, layers })
    }
}

impl CpuWeights {
    /// Put every matrix in the layout `isa`'s kernel reads (16-row interleaved
    /// for AVX-512 VNNI, row-major otherwise). Done once at load.
    pub fn for_isa(mut self, isa: Isa) -> CpuWeights {
        if isa != Isa::Avx512Vnni {
            return self;
        }
        let il = |m: &mut QMat| {
            if !m.interleaved {
                *m = vnni16::interleave(m);
            }
        };
        il(&mut self.emb);
        if let Some(o) = self.output.as_mut() {
            il(o);
        }
        for l in &mut self.layers {
            il(&mut l.wqkv);
            il(&mut l.wo);
            il(&mut l.wgu);
            il(&mut l.wdown);
        }
        self
    }
}

fn concat_checked(parts: &[QMat]) -> Result<QMat, ModelError> {
    if parts.iter().any(|p| p.fmt != parts[0].fmt) {
        return Err(ModelError::Shape("fused matrices have different quantization types".into()));
    }
    Ok(QMat::concat(parts))
}

#[derive(Debug, Default)]
struct Scratch {
    x: Vec<f32>,
    /// Final hidden states of the rows that want logits.
    last: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gu: Vec<f32>,
    acts: QActs,
    rope: Vec<(f32, f32)>,
    tok_seq: Vec<u32>,
}

pub struct CpuBackend {
    cfg: ModelConfig,
    w: CpuWeights,
    pool: Pool,
    isa: Isa,
    /// Skip 8-bit activation quantization (f32 dot products over dequantized weights).
    f32_acts: bool,
    f16c: bool,
    kv: KvCache,
    s: Scratch,
    scores: Vec<Mutex<Vec<f32>>>,
    inv_freq: Vec<f64>,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend").field("isa", &self.isa).field("threads", &self.pool.threads()).finish()
    }
}

impl CpuBackend {
    pub fn new(cfg: ModelConfig, w: CpuWeights, num_kv_blocks: usize, threads: usize) -> CpuBackend {
        Self::with_isa(cfg, w, num_kv_blocks, threads, Isa::detect())
    }

    /// Force an ISA (tests compare the portable path with the SIMD ones).
    pub fn with_isa(cfg: ModelConfig, w: CpuWeights, num_kv_blocks: usize, threads: usize, isa: Isa) -> CpuBackend {
        let pool = Pool::new(threads);
        let f16c = isa != Isa::Scalar && {
            #[cfg(target_arch = "x86_64")]
            {
                is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            false
        };
        let hd = cfg.head_dim;
        let inv_freq = (0..hd / 2).map(|i| (cfg.rope_base as f64).powf(-2.0 * i as f64 / hd as f64)).collect();
        let kv = KvCache::new(cfg.n_layer, num_kv_blocks, cfg.kv_dim());
        let w = w.for_isa(isa);
        let scores = (0..pool.threads()).map(|_| Mutex::new(Vec::new())).collect();
        CpuBackend { cfg, w, pool, isa, f32_acts: false, f16c, kv, s: Scratch::default(), scores, inv_freq }
    }

    /// Use f32 activations in every matmul instead of 8-bit ones: slower, but
    /// free of activation quantization error (which moves this model's logits by
    /// up to ~0.6 and so flips near-tied greedy choices).
    pub fn with_f32_activations(mut self, on: bool) -> CpuBackend {
        self.f32_acts = on;
        self
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}

/// out[a][r] = W · acts[a], rows split into chunks handed out dynamically.
fn matmul(pool: &Pool, isa: Option<Isa>, w: &QMat, acts: &QActs, out: &mut Vec<f32>) {
    out.resize(acts.rows * w.rows, 0.0);
    // Chunks of whole 16-row groups (the interleaved kernel's unit).
    let per = (w.rows / (pool.threads() * 8)).clamp(16, 256) / 16 * 16;
    let n_chunks = w.rows.div_ceil(per);
    let chunks = Chunks::new();
    let ptr = OutPtr(out.as_mut_ptr());
    pool.run(&|_| {
        while let Some(c) = chunks.next(n_chunks) {
            let rows = c * per..((c + 1) * per).min(w.rows);
            // SAFETY: each chunk owns rows `rows` of every output row; `out` has
            // acts.rows * w.rows elements and outlives `run`.
            unsafe {
                match isa {
                    Some(isa) => gemm_rows(isa, w, rows, acts, ptr, w.rows),
                    None => kernels::gemm_rows_f32(w, rows, acts, ptr, w.rows),
                }
            };
        }
    });
}

/// Rows below this count are processed on the calling thread: a pool dispatch
/// (~10 µs) costs more than normalizing a few rows.
const PAR_ROWS_MIN: usize = 8;

/// Run `f` over row ranges covering 0..n, on the pool when n is large.
fn par_rows(pool: &Pool, n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    if n < PAR_ROWS_MIN || pool.threads() == 1 {
        f(0..n);
        return;
    }
    let per = n.div_ceil(pool.threads() * 4);
    let n_chunks = n.div_ceil(per);
    let chunks = Chunks::new();
    pool.run(&|_| {
        while let Some(c) = chunks.next(n_chunks) {
            f(c * per..((c + 1) * per).min(n));
        }
    });
}

/// acts row t = quantize(rmsnorm(x row t) * w) for every row.
fn norm_quant(pool: &Pool, x: &[f32], n: usize, w: &[f32], eps: f32, acts: &mut QActs) {
    let dim = w.len();
    acts.prepare(n, dim);
    let raw = acts.raw();
    par_rows(pool, n, &|rows| {
        for t in rows {
            // SAFETY: each t is handed to exactly one thread; `acts` was prepared
            // for n rows and is not touched elsewhere during the dispatch.
            let mut row = unsafe { raw.row(t) };
            rmsnorm(&x[t * dim..(t + 1) * dim], w, eps, row.x);
            row.quantize();
        }
    });
}

/// acts = quantize(src) for `n` rows of `cols`; with `swiglu`, src rows hold
/// [gate | up] (2·cols wide) and the row quantized is silu(gate) * up.
fn quant_rows(pool: &Pool, src: &[f32], n: usize, cols: usize, swiglu: bool, acts: &mut QActs) {
    acts.prepare(n, cols);
    let raw = acts.raw();
    par_rows(pool, n, &|rows| {
        for t in rows {
            // SAFETY: as in norm_quant.
            let mut row = unsafe { raw.row(t) };
            if swiglu {
                let (g, u) = src[t * 2 * cols..(t + 1) * 2 * cols].split_at(cols);
                vecmath::swiglu(g, u, row.x);
            } else {
                row.x.copy_from_slice(&src[t * cols..(t + 1) * cols]);
            }
            row.quantize();
        }
    });
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

/// Rotate adjacent pairs (x[2i], x[2i+1]) of every head by the position's angles.
fn rope(x: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

impl CpuBackend {
    fn check_block_ids(&self, blocks: &[u32]) -> Result<(), BackendError> {
        match blocks.iter().find(|&&b| b as usize >= self.kv.num_blocks) {
            Some(b) => Err(BackendError::InvalidBatch(format!("KV block {b} out of range"))),
            None => Ok(()),
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        let acts = if self.f32_acts { "f32" } else { "int8" };
        format!("cpu ({:?}, {acts} activations, {} threads)", self.isa, self.pool.threads())
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn num_kv_blocks(&self) -> usize {
        self.kv.num_blocks
    }

    fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<(), BackendError> {
        for &(s, d) in pairs {
            if s as usize >= self.kv.num_blocks || d as usize >= self.kv.num_blocks {
                return Err(BackendError::InvalidBatch(format!("copy {s} -> {d} out of range")));
            }
            self.kv.copy_block(s as usize, d as usize);
        }
        Ok(())
    }

    fn read_blocks(&self, blocks: &[u32], out: &mut Vec<u16>) -> Result<(), BackendError> {
        self.check_block_ids(blocks)?;
        for &b in blocks {
            self.kv.read_block(b as usize, out);
        }
        Ok(())
    }

    fn write_blocks(&mut self, blocks: &[u32], data: &[u16]) -> Result<(), BackendError> {
        self.check_block_ids(blocks)?;
        let per = crate::kv::transfer::block_len(self.kv.n_layer, self.kv.kv_dim);
        if data.len() != blocks.len() * per {
            return Err(BackendError::InvalidBatch(format!(
                "KV data of {} values for {} blocks of {per}",
                data.len(),
                blocks.len()
            )));
        }
        for (&b, chunk) in blocks.iter().zip(data.chunks_exact(per)) {
            self.kv.write_block(b as usize, chunk);
        }
        Ok(())
    }

    fn forward(&mut self, batch: &Batch<'_>, logits: &mut Vec<f32>) -> Result<(), BackendError> {
        batch.validate(self.kv.num_blocks, self.cfg.vocab)?;
        let CpuBackend { cfg, w, pool, isa, f32_acts, f16c, kv, s, scores, inv_freq } = self;
        // None selects the f32-activation kernels.
        let (isa, fast) = (if *f32_acts { None } else { Some(*isa) }, *f16c);
        let n = batch.tokens.len();
        let (dim, hd, qd, kvd) = (cfg.dim, cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
        let group = cfg.n_head / cfg.n_kv_head;
        let qkv_w = qd + 2 * kvd;
        s.x.resize(n * dim, 0.0);
        for (t, &tok) in batch.tokens.iter().enumerate() {
            w.emb.row_f32(tok as usize, &mut s.x[t * dim..(t + 1) * dim]);
        }
        // cos/sin per token and pair, in f64 so that long positions stay exact.
        s.rope.clear();
        for &p in batch.positions {
            s.rope.extend(inv_freq.iter().map(|f| {
                let a = p as f64 * f;
                (a.cos() as f32, a.sin() as f32)
            }));
        }
        s.tok_seq.clear();
        for (i, sq) in batch.seqs.iter().enumerate() {
            s.tok_seq.extend(std::iter::repeat_n(i as u32, sq.n_tokens));
        }
        for (l, layer) in w.layers.iter().enumerate() {
            norm_quant(pool, &s.x, n, &layer.attn_norm, cfg.rms_eps, &mut s.acts);
            matmul(pool, isa, &layer.wqkv, &s.acts, &mut s.qkv);
            for t in 0..n {
                let row = &mut s.qkv[t * qkv_w..(t + 1) * qkv_w];
                let cs = &s.rope[t * hd / 2..(t + 1) * hd / 2];
                rope(&mut row[..qd + kvd], hd, cs);
                kv.write(l, batch.slots[t] as usize, &row[qd..qd + kvd], &row[qd + kvd..], fast);
            }
            s.att.resize(n * qd, 0.0);
            {
                let n_items = n * cfg.n_kv_head;
                let chunks = Chunks::new();
                let att = OutPtr(s.att.as_mut_ptr());
                let (qkv, tok_seq, kv) = (&s.qkv, &s.tok_seq, &*kv);
                pool.run(&|tid| {
                    let mut sc = scores[tid].lock().unwrap_or_else(|e| e.into_inner());
                    while let Some(i) = chunks.next(n_items) {
                        let (t, g) = (i / cfg.n_kv_head, i % cfg.n_kv_head);
                        let sq = &batch.seqs[tok_seq[t] as usize];
                        let qoff = t * qkv_w + g * group * hd;
                        // SAFETY: item (t, g) owns att[t*qd + g*group*hd ..][..group*hd],
                        // disjoint from every other item; att outlives run().
                        let out = unsafe {
                            std::slice::from_raw_parts_mut(att.ptr().add(t * qd + g * group * hd), group * hd)
                        };
                        let item = AttnItem {
                            q: &qkv[qoff..qoff + group * hd],
                            out,
                            block_table: sq.block_table,
                            ctx: batch.positions[t] as usize + 1,
                            head_off: g * hd,
                        };
                        attend(kv, l, hd, item, &mut sc, fast);
                    }
                });
            }
            quant_rows(pool, &s.att, n, qd, false, &mut s.acts);
            matmul(pool, isa, &layer.wo, &s.acts, &mut s.tmp);
            for (x, d) in s.x.iter_mut().zip(&s.tmp) {
                *x += d;
            }
            norm_quant(pool, &s.x, n, &layer.ffn_norm, cfg.rms_eps, &mut s.acts);
            matmul(pool, isa, &layer.wgu, &s.acts, &mut s.gu);
            quant_rows(pool, &s.gu, n, cfg.ffn_dim, true, &mut s.acts);
            matmul(pool, isa, &layer.wdown, &s.acts, &mut s.tmp);
            for (x, d) in s.x.iter_mut().zip(&s.tmp) {
                *x += d;
            }
        }
        // Final norm and logits for the last token of each sequence that wants them.
        s.last.clear();
        for sq in batch.seqs.iter().filter(|sq| sq.want_logits) {
            let t = sq.token_start + sq.n_tokens - 1;
            s.last.extend_from_slice(&s.x[t * dim..(t + 1) * dim]);
        }
        let r = s.last.len() / dim;
        norm_quant(pool, &s.last, r, &w.out_norm, cfg.rms_eps, &mut s.acts);
        let out_w = w.output.as_ref().unwrap_or(&w.emb);
        matmul(pool, isa, out_w, &s.acts, logits);
        logits.truncate(r * cfg.vocab);
        Ok(())
    }
}
