//! Paged KV cache bookkeeping (the memory itself lives in each backend), and the
//! portable form of a sequence's KV for moving it between engines.
pub mod block_manager;
pub mod transfer;
