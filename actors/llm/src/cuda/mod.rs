//! CUDA backend (issue 6). Placeholder until the cudarc backend lands: probing
//! always reports "not built", so backend selection falls back to the CPU.

use crate::backend::BackendError;
use crate::engine::EngineConfig;
use crate::{LlmError, ModelFile};

#[derive(Debug)]
pub struct CudaBackend;

impl CudaBackend {
    pub fn probe() -> Result<(), String> {
        Err("CUDA backend not built yet".into())
    }
    pub fn new(_m: &ModelFile, _cfg: &EngineConfig) -> Result<CudaBackend, LlmError> {
        Err(LlmError::Engine(crate::EngineError::Backend(BackendError::Unavailable(
            "CUDA backend not built yet".into(),
        ))))
    }
}

impl crate::backend::Backend for CudaBackend {
    fn name(&self) -> String {
        "cuda".into()
    }
    fn config(&self) -> &crate::ModelConfig {
        unreachable!("CudaBackend cannot be constructed yet")
    }
    fn num_kv_blocks(&self) -> usize {
        0
    }
    fn forward(&mut self, _: &crate::Batch<'_>, _: &mut Vec<f32>) -> Result<(), BackendError> {
        Err(BackendError::Unavailable("cuda".into()))
    }
    fn copy_blocks(&mut self, _: &[(u32, u32)]) -> Result<(), BackendError> {
        Err(BackendError::Unavailable("cuda".into()))
    }
}
