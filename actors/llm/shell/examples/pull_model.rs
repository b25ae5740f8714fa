//! Pull the project's model into the cache (what `troupe models pull smollm2-135m`
//! does), for CI and for tests run before the root binary is built.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "smollm2-135m".into());
    let dir = troupe_llm::fetch::cache_dir();
    let p = troupe_llm_shell::fetch::pull(&name, &dir, true)?;
    println!("{}", p.display());
    Ok(())
}
