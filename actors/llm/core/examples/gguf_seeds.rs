//! Write the fuzz seed corpus: synthetic GGUF files (never the real model),
//! named *.seed because the repository ignores *.gguf.
//! `cargo run -p troupe-llm --example gguf_seeds -- fuzz/corpus/gguf_parse`

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus/gguf_parse".into()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("sample.seed"), troupe_llm::gguf::writer::sample_file())?;
    std::fs::write(dir.join("tiny_model.seed"), troupe_llm::gguf::writer::tiny_model(1))?;
    Ok(())
}
