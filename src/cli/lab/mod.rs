//! `troupe lab <system>`: seeded simulations of a system's key design decisions, written
//! as PNG plots and a text summary into a folder. Each system adds one subcommand.

pub mod url_shortener;

#[derive(clap::Subcommand)]
pub enum LabCmd {
    /// URL shortener: clicks lost with 301 vs 302, enumeration of sequential vs permuted
    /// codes, cache hit rate vs cache size on a Zipf workload.
    UrlShortener(url_shortener::Args),
}

pub fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::UrlShortener(a) => url_shortener::run(a),
    }
}
