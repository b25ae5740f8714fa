//! CUDA C source of the engine's kernels, compiled at start with NVRTC.
//!
//! Storage conventions: weights, KV cache and GEMM inputs are f16 (held as
//! `unsigned short` and converted with PTX `cvt`, so no header is needed under
//! NVRTC); the residual stream, GEMM outputs and logits are f32. Every kernel
//! reads its sizes and per-token metadata from device memory or arguments that
//! stay fixed for a batch shape, so a decode step can be captured in a CUDA graph.
//! The block/thread shapes each kernel expects are given with its launch in
//! `cuda::mod`.

pub const SOURCE: &str = r#"
typedef unsigned short half_t;

__device__ __forceinline__ float h2f(half_t h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ half_t f2h(float f) {
    half_t h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}

// Block-wide sum (blockDim.x a multiple of 32, at most 1024).
__device__ float block_sum(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    int nw = blockDim.x / 32;
    v = lane < nw ? red[lane] : 0.0f;
    if (warp == 0) for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (threadIdx.x == 0) red[0] = v;
    __syncthreads();
    float r = red[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    int nw = blockDim.x / 32;
    v = lane < nw ? red[lane] : -INFINITY;
    if (warp == 0) for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    if (threadIdx.x == 0) red[0] = v;
    __syncthreads();
    float r = red[0];
    __syncthreads();
    return r;
}

// grid (n), block 256: x[t] = emb[tokens[t]] (f16 -> f32).
extern "C" __global__ void embed(const half_t* emb, const unsigned* tokens, float* x, int dim) {
    int t = blockIdx.x;
    const half_t* row = emb + (size_t)tokens[t] * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) x[(size_t)t * dim + i] = h2f(row[i]);
}

// grid (n), block 256: out[t] = f16(rmsnorm(x[rows ? rows[t] : t]) * w).
extern "C" __global__ void rmsnorm(const float* x, const float* w, half_t* out, const int* rows, int dim, float eps) {
    __shared__ float red[32];
    int t = blockIdx.x;
    int src = rows ? rows[t] : t;
    const float* xr = x + (size_t)src * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float r = rsqrtf(ss / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[(size_t)t * dim + i] = f2h(xr[i] * r * w[i]);
}

// grid (n), block 256. qkv rows are [q (n_head*hd) | k (n_kv*hd) | v (n_kv*hd)] f32.
// Rotates adjacent pairs of q and k (GGUF llama layout), then stores k and v as
// f16 into the layer's cache at the token's slot.
extern "C" __global__ void rope_kv(float* qkv, const int* pos, const double* inv_freq,
                                   half_t* kcache, half_t* vcache, const int* slots,
                                   int n_head, int n_kv, int hd, long long layer_off) {
    int t = blockIdx.x;
    int qd = n_head * hd, kvd = n_kv * hd;
    float* row = qkv + (size_t)t * (qd + 2 * kvd);
    int pairs = (n_head + n_kv) * hd / 2;
    size_t dst = layer_off + (size_t)slots[t] * kvd;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        int i = p % (hd / 2);
        double a = (double)pos[t] * inv_freq[i];
        float c = (float)cos(a), s = (float)sin(a);
        float x0 = row[2 * p], x1 = row[2 * p + 1];
        float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
        row[2 * p] = y0;
        row[2 * p + 1] = y1;
        int e = 2 * p - qd;  // element index inside k
        if (e >= 0) {
            kcache[dst + e] = f2h(y0);
            kcache[dst + e + 1] = f2h(y1);
        }
    }
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) vcache[dst + i] = f2h(row[qd + kvd + i]);
}

// grid (n, n_head), block 128, dynamic shared = (max_ctx + hd + 2*hd) floats.
// Paged attention for query token t, head h over positions 0..ctx[t] of its own
// sequence, through its block table (block_tables + table_off[t]).
extern "C" __global__ void attention(const float* qkv, const half_t* kcache, const half_t* vcache,
                                     const int* ctx_len, const int* table_off, const int* block_tables,
                                     half_t* out, int n_head, int n_kv, int hd, long long layer_off,
                                     float scale, int block_size) {
    extern __shared__ float sm[];
    __shared__ float red[32];
    int t = blockIdx.x, h = blockIdx.y;
    int qd = n_head * hd, kvd = n_kv * hd;
    int kvh = h / (n_head / n_kv);
    int ctx = ctx_len[t];
    float* q = sm;            // hd
    float* acc = sm + hd;     // 2 * hd partial outputs
    float* s = sm + 3 * hd;   // ctx scores
    const float* qrow = qkv + (size_t)t * (qd + 2 * kvd) + h * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) q[i] = qrow[i];
    __syncthreads();
    const int* table = block_tables + table_off[t];
    float mx = -INFINITY;
    for (int p = threadIdx.x; p < ctx; p += blockDim.x) {
        size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
        const half_t* k = kcache + layer_off + slot * kvd + kvh * hd;
        float d = 0.0f;
        for (int i = 0; i < hd; i++) d += q[i] * h2f(k[i]);
        d *= scale;
        s[p] = d;
        mx = fmaxf(mx, d);
    }
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int p = threadIdx.x; p < ctx; p += blockDim.x) {
        float e = __expf(s[p] - mx);
        s[p] = e;
        sum += e;
    }
    sum = block_sum(sum, red);
    // Two groups of threads split the positions; each thread owns one dim.
    int groups = blockDim.x / hd;
    int g = threadIdx.x / hd, d = threadIdx.x % hd;
    if (g < 2 && g < groups) {
        float a = 0.0f;
        for (int p = g; p < ctx; p += (groups < 2 ? groups : 2)) {
            size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
            a += s[p] * h2f(vcache[layer_off + slot * kvd + kvh * hd + d]);
        }
        acc[g * hd + d] = a;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float a = acc[i] + (groups >= 2 ? acc[hd + i] : 0.0f);
        out[(size_t)t * qd + h * hd + i] = f2h(a / sum);
    }
}

// grid (ceil(n*dim/256)), block 256: x += y.
extern "C" __global__ void add_inplace(float* x, const float* y, int count) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) x[i] += y[i];
}

// grid (n), block 256: h[t] = f16(silu(gate) * up) from gu rows [gate | up].
extern "C" __global__ void silu_mul(const float* gu, half_t* h, int f) {
    int t = blockIdx.x;
    const float* g = gu + (size_t)t * 2 * f;
    for (int i = threadIdx.x; i < f; i += blockDim.x) {
        float a = g[i];
        h[(size_t)t * f + i] = f2h(a / (1.0f + __expf(-a)) * g[f + i]);
    }
}

// grid (rows), block 1024: out[r] = argmax(logits[r]) (lowest index on ties).
extern "C" __global__ void argmax(const float* logits, unsigned* out, int vocab) {
    __shared__ float bv[1024];
    __shared__ int bi[1024];
    int r = blockIdx.x;
    const float* l = logits + (size_t)r * vocab;
    float best = -INFINITY; int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = l[i];
        if (v > best || (v == best && i < idx)) { best = v; idx = i; }
    }
    bv[threadIdx.x] = best; bi[threadIdx.x] = idx;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            float v = bv[threadIdx.x + o]; int j = bi[threadIdx.x + o];
            if (v > bv[threadIdx.x] || (v == bv[threadIdx.x] && j < bi[threadIdx.x])) {
                bv[threadIdx.x] = v; bi[threadIdx.x] = j;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[r] = (unsigned)bi[0];
}
"#;

/// Kernel names, in the order `cuda::Kernels` loads them.
pub const NAMES: [&str; 7] = ["embed", "rmsnorm", "rope_kv", "attention", "add_inplace", "silu_mul", "argmax"];
