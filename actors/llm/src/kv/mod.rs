//! Paged KV cache bookkeeping (the memory itself lives in each backend).
pub mod block_manager;
