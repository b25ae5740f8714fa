//! CUDA backend (cudarc 0.19, driver + NVRTC + cuBLAS, all loaded at run time).
//!
//! One binary serves GPU and CPU machines: `probe()` checks for libcuda with
//! `is_culib_present()` *before* touching the driver (`CudaContext::new` panics
//! without it), then for a device; callers fall back to the CPU backend and log
//! why. On a GPU:
//! - weights are dequantized from the GGUF once and uploaded as f16 (GEMMs by
//!   cuBLAS `GemmEx`, f16 in, f32 accumulate and out); norms stay f32;
//! - NVRTC kernels (`kernels::SOURCE`) do embedding, RMSNorm, RoPE on adjacent
//!   pairs + K/V writes into the paged f16 cache, paged attention over block
//!   tables, SwiGLU, residual adds and argmax;
//! - all buffers are allocated at start for the largest batch (`max_batched_tokens`,
//!   `max_num_seqs`), inputs go up in one copy from pinned memory, so a step
//!   allocates nothing; greedy decode reads back one u32 per sequence;
//! - pure-decode steps are captured as CUDA graphs per power-of-two batch bucket
//!   (padding rows write into a spare block) and replayed.
//!
//! The scheduler, block manager, prefix cache and sampler are the engine's, shared
//! with the CPU backend. What runs without a GPU (and is tested here): probing,
//! selection and fallback, and the input packing in `plan`.

pub mod kernels;
pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use crate::backend::{BLOCK_SIZE, Backend, BackendError, Batch};
use crate::engine::EngineConfig;
use crate::gguf::quant::dequantize;
use crate::model::ModelConfig;
use crate::{LlmError, ModelFile};
use plan::{Layout, Packed};

/// Largest decode batch captured as a CUDA graph (bigger ones run eagerly).
pub const GRAPH_BATCH_MAX: usize = 256;
/// cuBLAS workspace (bytes), set explicitly so GEMMs allocate nothing inside
/// graph capture.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;
/// Threads per block of the attention kernel (two groups of head_dim=64).
const ATTN_THREADS: u32 = 128;
/// Default dynamic shared memory a kernel may use without opting in (bytes);
/// bounds max_model_len to ~12K tokens on this kernel.
const ATTN_SMEM_BYTES_MAX: usize = 48 << 10;

fn dev_err(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{e:?}"))
}

/// Is a usable CUDA device present? Never panics: libcuda is looked up first.
pub fn probe() -> Result<(), String> {
    if std::env::var_os("TROUPE_NO_CUDA").is_some() {
        return Err("TROUPE_NO_CUDA is set".into());
    }
    // SAFETY: only tries to dlopen libcuda; no driver call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("libcuda not found".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("no CUDA device".into()),
        Err(e) => Err(format!("CUDA driver error: {e:?}")),
    }
}

/// Device facts for metrics (the gpu_worker actor reports these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub total_bytes: usize,
    pub free_bytes: usize,
    pub compute_capability: (i32, i32),
}

/// Info on device `ordinal`, or why there is none.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo, String> {
    probe()?;
    let ctx = CudaContext::new(ordinal).map_err(|e| format!("{e:?}"))?;
    let (free_bytes, total_bytes) = ctx.mem_get_info().map_err(|e| format!("{e:?}"))?;
    Ok(DeviceInfo {
        name: ctx.name().map_err(|e| format!("{e:?}"))?,
        total_bytes,
        free_bytes,
        compute_capability: ctx.compute_capability().map_err(|e| format!("{e:?}"))?,
    })
}

struct Kernels {
    embed: CudaFunction,
    rmsnorm: CudaFunction,
    rope_kv: CudaFunction,
    attention: CudaFunction,
    add: CudaFunction,
    silu_mul: CudaFunction,
    argmax: CudaFunction,
}

struct LayerW {
    attn_norm: CudaSlice<f32>,
    ffn_norm: CudaSlice<f32>,
    wqkv: CudaSlice<u16>,
    wo: CudaSlice<u16>,
    wgu: CudaSlice<u16>,
    wdown: CudaSlice<u16>,
}

/// Device buffers sized for the largest batch; raw pointers cached because they
/// never move (graphs depend on that).
struct Bufs {
    x: CudaSlice<f32>,
    xn: CudaSlice<u16>,
    qkv: CudaSlice<f32>,
    att: CudaSlice<u16>,
    tmp: CudaSlice<f32>,
    gu: CudaSlice<f32>,
    h: CudaSlice<u16>,
    logits: CudaSlice<f32>,
    argmax: CudaSlice<u32>,
    inputs: CudaSlice<i32>,
    kcache: CudaSlice<u16>,
    vcache: CudaSlice<u16>,
    inv_freq: CudaSlice<f64>,
    _workspace: CudaSlice<u8>,
}

/// Raw device pointers of every buffer, taken once after allocation: the buffers
/// never move, and taking them inside graph capture would record events.
struct Ptrs {
    x: u64,
    xn: u64,
    qkv: u64,
    att: u64,
    tmp: u64,
    gu: u64,
    h: u64,
    logits: u64,
    argmax: u64,
    inputs: u64,
    kc: u64,
    vc: u64,
    inv_freq: u64,
    emb: u64,
    out_w: u64,
    out_norm: u64,
    /// Per layer: attn_norm, ffn_norm, wqkv, wo, wgu, wdown.
    layers: Vec<[u64; 6]>,
}

pub struct CudaBackend {
    cfg: ModelConfig,
    p: Ptrs,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
    // Owners of the weight memory behind `p` (read only through those pointers).
    _emb: CudaSlice<u16>,
    _output: Option<CudaSlice<u16>>,
    _out_norm: CudaSlice<f32>,
    _layers: Vec<LayerW>,
    b: Bufs,
    layout: Layout,
    /// Pinned staging for `inputs`.
    host_inputs: cudarc::driver::PinnedHostSlice<i32>,
    num_blocks: usize,
    graphs: HashMap<usize, CudaGraph>,
    use_graphs: bool,
    name: String,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("device", &self.name).finish()
    }
}

// SAFETY: the backend is used by one thread at a time (the engine's owner); the
// CUDA context is bound to the calling thread before each use.
unsafe impl Send for CudaBackend {}

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

impl CudaBackend {
    /// Probe for a device (see `probe`).
    pub fn probe() -> Result<(), String> {
        probe()
    }

    /// Upload `m`'s weights to device 0 and allocate everything `cfg` needs.
    pub fn new(m: &ModelFile, cfg: &EngineConfig) -> Result<CudaBackend, LlmError> {
        probe().map_err(|e| LlmError::Engine(BackendError::Unavailable(e).into()))?;
        Self::build(m, cfg).map_err(|e| LlmError::Engine(e.into()))
    }

    fn build(m: &ModelFile, ecfg: &EngineConfig) -> Result<CudaBackend, BackendError> {
        let c = m.config.clone();
        let ctx = CudaContext::new(0).map_err(dev_err)?;
        // One stream, used by one thread: cudarc's cross-stream event tracking is
        // not needed, and event records must not leak into captured graphs.
        // SAFETY: called before any allocation or launch on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(dev_err)?;
        let (maj, min) = ctx.compute_capability().map_err(dev_err)?;
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture=sm_{maj}{min}")],
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernels::SOURCE, opts).map_err(dev_err)?;
        let module = ctx.load_module(ptx).map_err(dev_err)?;
        let f = |n: &str| module.load_function(n).map_err(dev_err);
        let k = Kernels {
            embed: f("embed")?,
            rmsnorm: f("rmsnorm")?,
            rope_kv: f("rope_kv")?,
            attention: f("attention")?,
            add: f("add_inplace")?,
            silu_mul: f("silu_mul")?,
            argmax: f("argmax")?,
        };
        let blas = CudaBlas::new(stream.clone()).map_err(dev_err)?;

        // Weights: f16 matrices, fused QKV and gate/up like the CPU backend.
        let up_f16 = |names: &[String]| -> Result<CudaSlice<u16>, BackendError> {
            let mut h: Vec<u16> = Vec::new();
            for n in names {
                let t = m.gguf.require_tensor(n).map_err(|e| BackendError::Device(e.to_string()))?;
                let raw = m.gguf.tensor_bytes(&m.bytes, t).map_err(|e| BackendError::Device(e.to_string()))?;
                let mut v = vec![0f32; t.n_elements() as usize];
                dequantize(t.ty, raw, &mut v);
                h.extend(v.iter().map(|&x| crate::f16::f32_to_f16(x)));
            }
            stream.clone_htod(&h).map_err(dev_err)
        };
        let up_f32 = |name: &str| -> Result<CudaSlice<f32>, BackendError> {
            let t = m.gguf.require_tensor(name).map_err(|e| BackendError::Device(e.to_string()))?;
            let raw = m.gguf.tensor_bytes(&m.bytes, t).map_err(|e| BackendError::Device(e.to_string()))?;
            let mut v = vec![0f32; t.n_elements() as usize];
            dequantize(t.ty, raw, &mut v);
            stream.clone_htod(&v).map_err(dev_err)
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let p = |s: &str| format!("blk.{l}.{s}");
            layers.push(LayerW {
                attn_norm: up_f32(&p("attn_norm.weight"))?,
                ffn_norm: up_f32(&p("ffn_norm.weight"))?,
                wqkv: up_f16(&[p("attn_q.weight"), p("attn_k.weight"), p("attn_v.weight")])?,
                wo: up_f16(&[p("attn_output.weight")])?,
                wgu: up_f16(&[p("ffn_gate.weight"), p("ffn_up.weight")])?,
                wdown: up_f16(&[p("ffn_down.weight")])?,
            });
        }
        let emb = up_f16(&["token_embd.weight".to_string()])?;
        let output = match m.gguf.tensor("output.weight") {
            Some(_) => Some(up_f16(&["output.weight".to_string()])?),
            None => None,
        };
        let out_norm = up_f32("output_norm.weight")?;

        let max_tokens = ecfg.max_batched_tokens.max(ecfg.max_num_seqs).max(1);
        let max_seqs = ecfg.max_num_seqs.max(1);
        let max_table = ecfg.max_model_len.min(c.context_len.max(1)).div_ceil(BLOCK_SIZE) + 1;
        let layout = Layout { max_tokens, max_seqs, max_table };
        // The attention kernel keeps a sequence's scores in shared memory.
        let attn_smem = (max_table * BLOCK_SIZE + 3 * c.head_dim) * 4;
        if attn_smem > ATTN_SMEM_BYTES_MAX {
            return Err(BackendError::Unavailable(format!(
                "max_model_len {} needs {attn_smem} B of attention shared memory (limit {ATTN_SMEM_BYTES_MAX})",
                ecfg.max_model_len
            )));
        }
        // One spare block for graph padding rows.
        let num_blocks = ecfg.num_kv_blocks;
        let cache_len = c.n_layer * (num_blocks + 1) * BLOCK_SIZE * c.kv_dim();
        let (qd, kvd, dim, ffn) = (c.q_dim(), c.kv_dim(), c.dim, c.ffn_dim);
        let z32 = |n: usize| stream.alloc_zeros::<f32>(n.max(1)).map_err(dev_err);
        let z16 = |n: usize| stream.alloc_zeros::<u16>(n.max(1)).map_err(dev_err);
        let inv: Vec<f64> =
            (0..c.head_dim / 2).map(|i| (c.rope_base as f64).powf(-2.0 * i as f64 / c.head_dim as f64)).collect();
        let b = Bufs {
            x: z32(max_tokens * dim)?,
            xn: z16(max_tokens * dim.max(qd).max(ffn))?,
            qkv: z32(max_tokens * (qd + 2 * kvd))?,
            att: z16(max_tokens * qd)?,
            tmp: z32(max_tokens * dim)?,
            gu: z32(max_tokens * 2 * ffn)?,
            h: z16(max_tokens * ffn)?,
            logits: z32(max_seqs * c.vocab)?,
            argmax: stream.alloc_zeros::<u32>(max_seqs).map_err(dev_err)?,
            inputs: stream.alloc_zeros::<i32>(layout.len()).map_err(dev_err)?,
            kcache: z16(cache_len)?,
            vcache: z16(cache_len)?,
            inv_freq: stream.clone_htod(&inv).map_err(dev_err)?,
            _workspace: stream.alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES).map_err(dev_err)?,
        };
        // SAFETY: the workspace outlives the handle (both owned by the backend,
        // the handle dropped first as it is declared before `b`).
        unsafe {
            let ws = ptr(&b._workspace, &stream);
            cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ws as *mut _, CUBLAS_WORKSPACE_BYTES);
        }
        // SAFETY: allocation of page-locked host memory; sized by layout.
        let host_inputs = unsafe { ctx.alloc_pinned::<i32>(layout.len()) }.map_err(dev_err)?;
        let name = format!("cuda ({})", ctx.name().unwrap_or_else(|_| "device 0".into()));
        let st = &stream;
        let p = Ptrs {
            x: ptr(&b.x, st),
            xn: ptr(&b.xn, st),
            qkv: ptr(&b.qkv, st),
            att: ptr(&b.att, st),
            tmp: ptr(&b.tmp, st),
            gu: ptr(&b.gu, st),
            h: ptr(&b.h, st),
            logits: ptr(&b.logits, st),
            argmax: ptr(&b.argmax, st),
            inputs: ptr(&b.inputs, st),
            kc: ptr(&b.kcache, st),
            vc: ptr(&b.vcache, st),
            inv_freq: ptr(&b.inv_freq, st),
            emb: ptr(&emb, st),
            out_w: ptr(output.as_ref().unwrap_or(&emb), st),
            out_norm: ptr(&out_norm, st),
            layers: layers
                .iter()
                .map(|l| {
                    [
                        ptr(&l.attn_norm, st),
                        ptr(&l.ffn_norm, st),
                        ptr(&l.wqkv, st),
                        ptr(&l.wo, st),
                        ptr(&l.wgu, st),
                        ptr(&l.wdown, st),
                    ]
                })
                .collect(),
        };
        stream.synchronize().map_err(dev_err)?;
        Ok(CudaBackend {
            cfg: c,
            p,
            ctx,
            stream,
            blas,
            k,
            _emb: emb,
            _output: output,
            _out_norm: out_norm,
            _layers: layers,
            b,
            layout,
            host_inputs,
            num_blocks,
            graphs: HashMap::new(),
            use_graphs: std::env::var_os("TROUPE_CUDA_GRAPHS").is_none_or(|v| v != "0"),
            name,
        })
    }

    /// y[n × out] (f32) = x[n × inn] (f16) · W[out × inn]ᵀ (f16), row-major.
    fn gemm(&self, w: u64, x: u64, y: u64, n: usize, out: usize, inn: usize) -> Result<(), BackendError> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Column-major view: Yᵀ(out × n) = op(A)·B with A = W stored as (inn × out),
        // op = transpose; B = Xᵀ (inn × n).
        // SAFETY: pointers are device buffers sized for n ≤ max_tokens rows.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                out as i32,
                n as i32,
                inn as i32,
                (&alpha) as *const f32 as *const _,
                w as *const _,
                cudaDataType_t::CUDA_R_16F,
                inn as i32,
                x as *const _,
                cudaDataType_t::CUDA_R_16F,
                inn as i32,
                (&beta) as *const f32 as *const _,
                y as *mut _,
                cudaDataType_t::CUDA_R_32F,
                out as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(dev_err)
    }

    /// Enqueue the whole forward pass for `p.n_tokens` rows whose inputs are
    /// already on the device; ends with logits (and argmax when `argmax`).
    /// Makes no allocation and no host sync, so it can be graph-captured.
    fn enqueue(&self, p: Packed, argmax: bool) -> Result<(), BackendError> {
        let c = &self.cfg;
        let s = &self.stream;
        let n = p.n_tokens;
        let (dim, qd, kvd, ffn, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
        let q = &self.p;
        let at = |off: usize| q.inputs + (off * 4) as u64;
        let l = &self.layout;
        let (tokens, pos, slots, ctxs, toff, lrows, tables) = (
            at(l.tokens()),
            at(l.positions()),
            at(l.slots()),
            at(l.ctx()),
            at(l.table_off()),
            at(l.logit_rows()),
            at(l.tables()),
        );
        let (x, xn, qkv, att, tmp, gu, h) = (q.x, q.xn, q.qkv, q.att, q.tmp, q.gu, q.h);
        let (kc, vc, invf) = (q.kc, q.vc, q.inv_freq);
        let rows_cfg =
            |threads: u32| LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let null: u64 = 0;
        let (dim_i, qd_i, kvd_i, ffn_i, hd_i) = (dim as i32, qd as i32, kvd as i32, ffn as i32, hd as i32);
        let (nh, nkv) = (c.n_head as i32, c.n_kv_head as i32);
        let eps = c.rms_eps;
        let emb = q.emb;
        let _ = (qd_i, kvd_i);
        // SAFETY (all launches below): argument lists match the kernel signatures
        // in kernels::SOURCE, and every buffer is sized for max_tokens rows.
        unsafe {
            s.launch_builder(&self.k.embed)
                .arg(&emb)
                .arg(&tokens)
                .arg(&x)
                .arg(&dim_i)
                .launch(rows_cfg(256))
                .map_err(dev_err)?;
            let layer_elems = ((self.num_blocks + 1) * BLOCK_SIZE * kvd) as i64;
            let max_ctx = (l.max_table * BLOCK_SIZE) as u32;
            let attn_smem = (max_ctx + 3 * hd as u32) * 4;
            let scale = 1.0f32 / (hd as f32).sqrt();
            let bs = BLOCK_SIZE as i32;
            for (li, lw) in q.layers.iter().enumerate() {
                let [an, fnorm, wqkv, wo, wgu, wdown] = *lw;
                let loff = li as i64 * layer_elems;
                s.launch_builder(&self.k.rmsnorm)
                    .arg(&x)
                    .arg(&an)
                    .arg(&xn)
                    .arg(&null)
                    .arg(&dim_i)
                    .arg(&eps)
                    .launch(rows_cfg(256))
                    .map_err(dev_err)?;
                self.gemm(wqkv, xn, qkv, n, qd + 2 * kvd, dim)?;
                s.launch_builder(&self.k.rope_kv)
                    .arg(&qkv)
                    .arg(&pos)
                    .arg(&invf)
                    .arg(&kc)
                    .arg(&vc)
                    .arg(&slots)
                    .arg(&nh)
                    .arg(&nkv)
                    .arg(&hd_i)
                    .arg(&loff)
                    .launch(rows_cfg(256))
                    .map_err(dev_err)?;
                let acfg = LaunchConfig {
                    grid_dim: (n as u32, c.n_head as u32, 1),
                    block_dim: (ATTN_THREADS, 1, 1),
                    shared_mem_bytes: attn_smem,
                };
                s.launch_builder(&self.k.attention)
                    .arg(&qkv)
                    .arg(&kc)
                    .arg(&vc)
                    .arg(&ctxs)
                    .arg(&toff)
                    .arg(&tables)
                    .arg(&att)
                    .arg(&nh)
                    .arg(&nkv)
                    .arg(&hd_i)
                    .arg(&loff)
                    .arg(&scale)
                    .arg(&bs)
                    .launch(acfg)
                    .map_err(dev_err)?;
                self.gemm(wo, att, tmp, n, dim, qd)?;
                let count = (n * dim) as i32;
                let add_cfg = LaunchConfig {
                    grid_dim: ((n * dim).div_ceil(256) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                s.launch_builder(&self.k.add).arg(&x).arg(&tmp).arg(&count).launch(add_cfg).map_err(dev_err)?;
                s.launch_builder(&self.k.rmsnorm)
                    .arg(&x)
                    .arg(&fnorm)
                    .arg(&xn)
                    .arg(&null)
                    .arg(&dim_i)
                    .arg(&eps)
                    .launch(rows_cfg(256))
                    .map_err(dev_err)?;
                self.gemm(wgu, xn, gu, n, 2 * ffn, dim)?;
                s.launch_builder(&self.k.silu_mul)
                    .arg(&gu)
                    .arg(&h)
                    .arg(&ffn_i)
                    .launch(rows_cfg(256))
                    .map_err(dev_err)?;
                self.gemm(wdown, h, tmp, n, dim, ffn)?;
                s.launch_builder(&self.k.add).arg(&x).arg(&tmp).arg(&count).launch(add_cfg).map_err(dev_err)?;
            }
            // Final norm on the logit rows only, then the (tied) output GEMM.
            let r = p.n_logit_rows;
            if r > 0 {
                let on = q.out_norm;
                let rcfg = LaunchConfig { grid_dim: (r as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                s.launch_builder(&self.k.rmsnorm)
                    .arg(&x)
                    .arg(&on)
                    .arg(&xn)
                    .arg(&lrows)
                    .arg(&dim_i)
                    .arg(&eps)
                    .launch(rcfg)
                    .map_err(dev_err)?;
                let (out_w, logits) = (q.out_w, q.logits);
                self.gemm(out_w, xn, logits, r, c.vocab, dim)?;
                if argmax {
                    let am = q.argmax;
                    let vocab = c.vocab as i32;
                    let mcfg =
                        LaunchConfig { grid_dim: (r as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
                    s.launch_builder(&self.k.argmax).arg(&logits).arg(&am).arg(&vocab).launch(mcfg).map_err(dev_err)?;
                }
            }
        }
        Ok(())
    }

    /// Pack and upload a batch's inputs (one pinned → device copy).
    fn upload(&mut self, batch: &Batch<'_>, pad_to: Option<usize>) -> Result<Packed, BackendError> {
        batch.validate(self.num_blocks, self.cfg.vocab)?;
        let buf = self.host_inputs.as_mut_slice().map_err(dev_err)?;
        let packed = plan::pack(&self.layout, batch, pad_to, self.num_blocks as u32, buf)
            .map_err(|e| BackendError::InvalidBatch(e.to_string()))?;
        let host = self.host_inputs.as_slice().map_err(dev_err)?;
        let mut dst = self.b.inputs.slice_mut(0..packed.used);
        self.stream.memcpy_htod(&host[..packed.used], &mut dst).map_err(dev_err)?;
        Ok(packed)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn num_kv_blocks(&self) -> usize {
        self.num_blocks
    }

    fn forward(&mut self, batch: &Batch<'_>, logits: &mut Vec<f32>) -> Result<(), BackendError> {
        self.ctx.bind_to_thread().map_err(dev_err)?;
        let p = self.upload(batch, None)?;
        self.enqueue(p, false)?;
        logits.resize(p.n_logit_rows * self.cfg.vocab, 0.0);
        let src = self.b.logits.slice(0..logits.len());
        self.stream.memcpy_dtoh(&src, logits.as_mut_slice()).map_err(dev_err)?;
        self.stream.synchronize().map_err(dev_err)
    }

    fn forward_argmax(&mut self, batch: &Batch<'_>, out: &mut Vec<u32>) -> Result<(), BackendError> {
        self.ctx.bind_to_thread().map_err(dev_err)?;
        let rows = batch.n_logit_rows();
        let graph_bucket = (self.use_graphs && plan::is_pure_decode(batch))
            .then(|| plan::bucket(batch.tokens.len(), GRAPH_BATCH_MAX.min(self.layout.max_seqs)))
            .flatten();
        let p = self.upload(batch, graph_bucket)?;
        match graph_bucket {
            Some(bucket) => {
                if !self.graphs.contains_key(&bucket) {
                    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
                    self.stream
                        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                        .map_err(dev_err)?;
                    let r = self.enqueue(p, true);
                    // No flags: cuGraphInstantiateWithFlags rejects UPLOAD/DEVICE_LAUNCH.
                    let g = self.stream.end_capture(CUgraphInstantiate_flags(0)).map_err(dev_err)?;
                    r?;
                    let g = g.ok_or_else(|| BackendError::Device("empty CUDA graph".into()))?;
                    self.graphs.insert(bucket, g);
                }
                self.graphs[&bucket].launch().map_err(dev_err)?;
            }
            None => self.enqueue(p, true)?,
        }
        out.resize(rows, 0);
        let src = self.b.argmax.slice(0..rows);
        self.stream.memcpy_dtoh(&src, out.as_mut_slice()).map_err(dev_err)?;
        self.stream.synchronize().map_err(dev_err)
    }

    fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<(), BackendError> {
        self.ctx.bind_to_thread().map_err(dev_err)?;
        let per_block = BLOCK_SIZE * self.cfg.kv_dim();
        let layer = (self.num_blocks + 1) * per_block;
        for &(src, dst) in pairs {
            if src as usize >= self.num_blocks || dst as usize >= self.num_blocks {
                return Err(BackendError::InvalidBatch(format!("copy {src} -> {dst} out of range")));
            }
            for l in 0..self.cfg.n_layer {
                let (so, d_o) = (l * layer + src as usize * per_block, l * layer + dst as usize * per_block);
                for cache in [&mut self.b.kcache, &mut self.b.vcache] {
                    let tmp = self.stream.clone_dtod(&cache.slice(so..so + per_block)).map_err(dev_err)?;
                    let mut d = cache.slice_mut(d_o..d_o + per_block);
                    self.stream.memcpy_dtod(&tmp, &mut d).map_err(dev_err)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_explains() {
        // On machines without a GPU this is the fallback path the engine takes.
        if let Err(why) = probe() {
            assert!(!why.is_empty());
        }
    }

    #[test]
    fn kernel_source_names_every_kernel() {
        for n in kernels::NAMES {
            assert!(kernels::SOURCE.contains(&format!("void {n}(")), "{n}");
        }
    }
}
