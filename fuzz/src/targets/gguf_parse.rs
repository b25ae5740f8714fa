//! The GGUF reader and everything that consumes its output (a model file may come from
//! anywhere): any byte string gives Ok or Err, never a panic, hang or huge allocation.
//! Seeds are synthetic (`cargo run -p troupe-llm --example gguf_seeds`).

use troupe_llm::gguf::{GgufFile, quant::dequantize};

/// Dequantize only small tensors (bounded work per input).
const DEQUANT_ELEMENTS_MAX: u64 = 1 << 16;

pub fn run(data: &[u8]) {
    let Ok(f) = GgufFile::parse(data) else { return };
    for t in &f.tensors {
        let Ok(bytes) = f.tensor_bytes(data, t) else { continue };
        if t.n_elements() <= DEQUANT_ELEMENTS_MAX {
            let mut out = vec![0f32; t.n_elements() as usize];
            dequantize(t.ty, bytes, &mut out);
        }
    }
    let _ = troupe_llm::tokenizer::Tokenizer::from_gguf(&f).map(|t| t.encode("héllo <|im_start|> 123", true));
    let _ = troupe_llm::ChatTemplate::from_gguf(&f);
    let _ = troupe_llm::ModelConfig::from_gguf(&f);
}
