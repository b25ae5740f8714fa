//! `troupe lab llm-serving`: the LLM serving system's design decisions measured with the
//! real engine (`troupe-llm`, SmolLM2-135M Q4_1, CPU backend), on a fixed seed:
//!
//! (a) continuous (iteration-level) vs static batching of one Poisson request set;
//! (b) the prefix cache on vs off, many requests sharing a long system prompt;
//! (c) unified vs disaggregated prefill/decode with two engines on two threads, the KV
//!     moved in-process through the wire codec (bincode, as `WorkerReply::KvPart`);
//! (d) routing policies (the real `route::Router`) on a simulated cluster calibrated
//!     from (a) and (b) (`crate::lab::route_sim`).
//!
//! The drivers and the simulation are pure and tested in `crate::lab`; this
//! file only owns engines, threads and the wall clock. Writes PNG plots, `summary.txt`
//! and `report.json` into `--out`.

use anyhow::{Context, bail};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::lab::route_sim::{PolicyResult, SimConfig, simulate};
use crate::lab::{
    Batching, Clock, Produced, Req, RunSummary, StepEngine, Timeline, cdf, drive, mean, mixed_workload, quantile,
    summarize,
};
use crate::proto::{Blob, WorkerReply};
use crate::route::Policy;
use troupe_chart::{BarChart, Line, LineChart, render_bars_png, render_lines_png};
use troupe_llm::{Engine, EngineConfig, EngineError, KvBlocks, Message, ModelFile, SamplingParams, ScheduleError};

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the plots, summary.txt and report.json (created if missing).
    #[arg(long, default_value = "lab-results/llm-serving")]
    pub out: PathBuf,
    /// Seed of every workload: the same seed gives the same requests.
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Smaller workloads (about a minute on two cores) instead of the full ones.
    #[arg(long)]
    pub quick: bool,
    /// CPU threads per engine in (a) and (b); (c) runs two engines with half each.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The GGUF model (default: SmolLM2-135M from the model cache).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

const PLOT_W: u32 = 1000;
const PLOT_H: u32 = 520;
/// KV blocks per wire chunk, as the worker's default `kv_chunk_blocks`.
const KV_CHUNK_BLOCKS: usize = 8;
const MAX_STEPS: u64 = 1_000_000;

/// Wall clock from a shared start.
struct Wall(Instant);

impl Clock for Wall {
    fn now(&mut self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
    fn wait_until(&mut self, t: f64) {
        let now = self.now();
        if t > now {
            std::thread::sleep(Duration::from_secs_f64(t - now));
        }
    }
}

/// The real engine behind the driver; prompts and sampling per request id.
struct Eng {
    e: Engine,
    jobs: HashMap<u64, (Vec<u32>, SamplingParams)>,
}

impl StepEngine for Eng {
    fn submit(&mut self, r: &Req) -> Result<(), String> {
        let (p, s) = self.jobs.remove(&r.id).ok_or_else(|| format!("no prompt for request {}", r.id))?;
        self.e.add_request(r.id, p, s, 0).map_err(|e| e.to_string())
    }
    fn step(&mut self) -> Result<Vec<Produced>, String> {
        let out = self.e.step().map_err(|e| e.to_string())?;
        Ok(out
            .into_iter()
            .map(|o| Produced { id: o.id, tokens: o.new_tokens, finished: o.finished.is_some() })
            .collect())
    }
    fn idle(&self) -> bool {
        !self.e.has_work()
    }
}

fn engine(m: &ModelFile, threads: usize, seqs: usize, blocks: usize, prefix: bool) -> anyhow::Result<Engine> {
    let cfg = EngineConfig {
        max_num_seqs: seqs,
        max_batched_tokens: 512,
        num_kv_blocks: blocks,
        enable_prefix_caching: prefix,
        threads,
        max_waiting: 4096,
        ..EngineConfig::default()
    };
    let b = m.cpu_backend(&cfg).context("building the CPU backend")?;
    Ok(Engine::new(Box::new(b), m.tokenizer.clone(), cfg).context("building the engine")?.with_chat(m.chat.clone()))
}

/// Synthetic prompt `s` of `n` tokens (content does not change the cost; as bench_engine).
fn synth_prompt(s: u64, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + s as usize * 104_729) % 40_000 + 100) as u32).collect()
}

fn fixed_len(n: usize) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) }
}

fn line(label: &str, points: Vec<(f64, f64)>) -> Line {
    Line { label: label.into(), points }
}

fn chart(title: &str, x: &str, y: &str, lines: Vec<Line>) -> LineChart {
    LineChart { title: title.into(), x_desc: x.into(), y_desc: y.into(), lines, levels: Vec::new(), shade: None }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary_line(s: &mut String, name: &str, r: &RunSummary) {
    let _ = writeln!(
        s,
        "    {name:<22} {:>7.1} {:>8.1} {:>9.0} {:>9.0} {:>8.1} {:>8.1}",
        r.output_tok_s, r.total_s, r.ttft_p50_ms, r.ttft_p99_ms, r.tpot_p50_ms, r.tpot_p99_ms
    );
}

fn summary_header(s: &mut String) {
    let _ = writeln!(
        s,
        "    {:<22} {:>7} {:>8} {:>9} {:>9} {:>8} {:>8}",
        "", "tok/s", "total s", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99"
    );
}

/// Cumulative output tokens over time, for a throughput plot.
fn tokens_over_time(tl: &[Timeline]) -> Vec<(f64, f64)> {
    let mut ev: Vec<(f64, usize)> = tl.iter().filter_map(|t| t.finish_s.map(|f| (f, t.tokens.len()))).collect();
    ev.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut acc = 0usize;
    let mut pts = vec![(0.0, 0.0)];
    for (t, n) in ev {
        acc += n;
        pts.push((t, acc as f64));
    }
    pts
}

struct Ctx<'a> {
    m: &'a ModelFile,
    a: &'a Args,
    s: String,
    report: serde_json::Map<String, serde_json::Value>,
    plots: Vec<(&'static str, Vec<u8>)>,
}

// ---------------------------------------------------------------- (a)

/// Returns the continuous run's TPOT p50 (ms), for the routing simulation.
fn batching(c: &mut Ctx<'_>) -> anyhow::Result<f64> {
    let (n, rate, prompt, out) = if c.a.quick { (16, 4.0, (16, 128), (8, 48)) } else { (32, 3.0, (16, 192), (8, 64)) };
    let slots = 16;
    let reqs = mixed_workload(n, rate, prompt, out, c.a.seed);
    let mut runs = Vec::new();
    for (name, b) in [("continuous", Batching::Continuous), ("static", Batching::Static { batch: slots })] {
        eprintln!("(a) {name} batching: {n} requests ...");
        let mut e = Eng {
            e: engine(c.m, c.a.threads, slots, 1024, false)?,
            jobs: reqs.iter().map(|r| (r.id, (synth_prompt(r.id, r.prompt_len), fixed_len(r.max_tokens)))).collect(),
        };
        let tl = drive(&mut e, &reqs, b, &mut Wall(Instant::now()), MAX_STEPS).map_err(anyhow::Error::msg)?;
        runs.push((name, summarize(&tl), tl, e.e.stats().steps));
    }
    let _ = writeln!(
        c.s,
        "(a) continuous vs static batching: {n} requests, Poisson {rate}/s, prompt {}-{} tokens, output {}-{} tokens \
         (fixed lengths, greedy), 16 slots, prefix cache off",
        prompt.0, prompt.1, out.0, out.1
    );
    summary_header(&mut c.s);
    for (name, r, _, steps) in &runs {
        summary_line(&mut c.s, &format!("{name} ({steps} steps)"), r);
    }
    let (cont, stat) = (&runs[0].1, &runs[1].1);
    let _ = writeln!(
        c.s,
        "    continuous/static: throughput x{:.2}, TTFT p50 x{:.2}, total time x{:.2}",
        cont.output_tok_s / stat.output_tok_s.max(1e-9),
        cont.ttft_p50_ms / stat.ttft_p50_ms.max(1e-9),
        cont.total_s / stat.total_s.max(1e-9)
    );
    c.report.insert(
        "batching".into(),
        serde_json::json!({
            "requests": reqs, "continuous": runs[0].1, "static": runs[1].1,
            "continuous_timelines": runs[0].2, "static_timelines": runs[1].2,
        }),
    );
    let ttft = |tl: &[Timeline]| cdf(&tl.iter().filter_map(Timeline::ttft).collect::<Vec<_>>());
    c.plots.push((
        "batching_ttft_cdf.png",
        render_lines_png(
            &chart(
                "(a) TTFT distribution, continuous vs static batching",
                "time to first token (s)",
                "fraction of requests",
                vec![line("continuous", ttft(&runs[0].2)), line("static", ttft(&runs[1].2))],
            ),
            PLOT_W,
            PLOT_H,
        )?,
    ));
    c.plots.push((
        "batching_tokens.png",
        render_lines_png(
            &chart(
                "(a) output tokens completed over time",
                "time since first arrival (s)",
                "output tokens of finished requests",
                vec![line("continuous", tokens_over_time(&runs[0].2)), line("static", tokens_over_time(&runs[1].2))],
            ),
            PLOT_W,
            PLOT_H,
        )?,
    ));
    Ok(cont.tpot_p50_ms)
}

// ---------------------------------------------------------------- (b)

const SYSTEM_PROMPT: &str = "You are the support assistant of Northwind Outfitters, a company that sells \
outdoor equipment online and in twelve stores. Follow these rules in every answer. Be brief: two or three \
sentences unless the customer asks for detail. Orders ship within two business days from the Portland \
warehouse; express shipping costs twelve dollars and arrives in two days; standard shipping is free above \
fifty dollars and takes five to seven days. Returns are accepted within sixty days with a receipt; worn \
items can be returned only if defective. Refunds go back to the original payment method within ten days \
of the warehouse receiving the item. Gift cards never expire and cannot be exchanged for cash. Tents, \
sleeping bags and backpacks carry a lifetime warranty against manufacturing defects; electronics such as \
headlamps and GPS units carry two years. Price matching applies to identical items sold by authorised \
retailers within fourteen days of purchase. Never promise a delivery date that is not in the rules above. \
Never ask for a full card number. If a customer is angry, apologise once and offer a concrete next step. \
If a question is about safety in the mountains, give general advice and recommend a local guide. Members \
of the Northwind Club get ten percent off full-price items and free express shipping twice a year. Store \
hours are nine to eight on weekdays and ten to six on weekends. Rentals of tents and kayaks are available \
in the Portland, Denver and Boise stores only, by the day or the week, with a refundable deposit.";

const QUESTIONS: [&str; 24] = [
    "Where is my order? I bought a tent three days ago.",
    "Can I return boots I wore on one hike?",
    "How much is express shipping?",
    "Do gift cards expire?",
    "My headlamp broke after a year. Is it covered?",
    "Can you match the price of a backpack I saw cheaper elsewhere?",
    "What are your store hours on Sunday?",
    "Can I rent a kayak in Seattle?",
    "How long does a refund take?",
    "Is shipping free for a forty dollar order?",
    "What does the Northwind Club give me?",
    "My sleeping bag zipper failed after five years. What can I do?",
    "Is it safe to climb Mount Hood in March?",
    "Can I pay with a gift card and get change in cash?",
    "I am very angry, my package is late!",
    "Do you ship to Canada?",
    "Can I return a jacket without a receipt?",
    "What is the deposit for a tent rental?",
    "How do I contact the Denver store?",
    "Can I change the address on my order?",
    "Are GPS units covered for three years?",
    "Do members pay for express shipping?",
    "What size backpack do I need for a weekend trip?",
    "Can I return a kayak paddle after seventy days?",
];

struct PrefixRun {
    summary: RunSummary,
    tl: Vec<Timeline>,
    prefill_tokens: u64,
    queries: u64,
    hits: u64,
}

/// Returns the measured prefill cost, ms per token, for the routing simulation.
fn prefix_cache(c: &mut Ctx<'_>) -> anyhow::Result<f64> {
    let (n, rate, max_tokens) = if c.a.quick { (8, 1.0, 16) } else { (16, 0.8, 24) };
    let probe = engine(c.m, c.a.threads, 16, 1024, false)?;
    let stop = probe.chat_stop_ids();
    let prompts: Vec<Vec<u32>> = (0..n)
        .map(|i| probe.render_chat(&[Message::new("system", SYSTEM_PROMPT), Message::new("user", QUESTIONS[i % 24])]))
        .collect::<Result<_, _>>()
        .context("rendering the chat prompts")?;
    drop(probe);
    let reqs: Vec<Req> = mixed_workload(n, rate, (0, 0), (0, 0), c.a.seed ^ 0xb)
        .into_iter()
        .zip(&prompts)
        .map(|(r, p)| Req { prompt_len: p.len(), max_tokens, ..r })
        .collect();
    let params = SamplingParams { stop_token_ids: stop, ..SamplingParams::greedy(max_tokens) };

    // Calibration for (d): one prompt alone, cache off, best of two.
    let mut e = engine(c.m, c.a.threads, 16, 1024, false)?;
    let mut best = f64::INFINITY;
    for round in 0..2u64 {
        e.add_request(1000 + round, prompts[0].clone(), SamplingParams::greedy(1), 0)?;
        let t = Instant::now();
        while e.has_work() {
            e.step()?;
        }
        best = best.min(ms(t.elapsed()) / prompts[0].len() as f64);
    }
    drop(e);

    let mut runs = Vec::new();
    for on in [false, true] {
        eprintln!("(b) prefix cache {}: {n} requests ...", if on { "on" } else { "off" });
        let mut e = Eng {
            e: engine(c.m, c.a.threads, 16, 1024, on)?,
            jobs: reqs.iter().map(|r| (r.id, (prompts[r.id as usize].clone(), params.clone()))).collect(),
        };
        let tl = drive(&mut e, &reqs, Batching::Continuous, &mut Wall(Instant::now()), MAX_STEPS)
            .map_err(anyhow::Error::msg)?;
        let st = e.e.stats();
        runs.push(PrefixRun {
            summary: summarize(&tl),
            tl,
            prefill_tokens: st.prefill_tokens,
            queries: st.prefix_queries,
            hits: st.prefix_hits,
        });
    }
    let same = runs[0].tl.iter().zip(&runs[1].tl).filter(|(a, b)| a.tokens == b.tokens).count();
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let _ = writeln!(
        c.s,
        "\n(b) prefix cache: {n} chat requests sharing a {}-token system prompt (prompts {}-{} tokens), Poisson {rate}/s, \
         greedy, up to {max_tokens} tokens",
        c.m.tokenizer.encode(SYSTEM_PROMPT, false).map_or(0, |t| t.len()),
        prompts.iter().map(Vec::len).min().unwrap_or(0),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
    );
    let _ = writeln!(
        c.s,
        "    {:<10} {:>9} {:>9} {:>9} {:>15} {:>14} {:>8}",
        "cache", "TTFT p50", "TTFT p99", "TTFT mean", "prefill tokens", "block hits", "total s"
    );
    for (on, r) in ["off", "on"].iter().zip(&runs) {
        let hit = if r.queries > 0 { 100.0 * r.hits as f64 / r.queries as f64 } else { 0.0 };
        let _ = writeln!(
            c.s,
            "    {on:<10} {:>9.0} {:>9.0} {:>9.0} {:>7} of {:>5} {:>5}/{:<5} {:>3.0}% {:>6.1}",
            r.summary.ttft_p50_ms,
            r.summary.ttft_p99_ms,
            r.summary.ttft_mean_ms,
            r.prefill_tokens,
            prompt_tokens,
            r.hits,
            r.queries,
            hit,
            r.summary.total_s
        );
    }
    let _ = writeln!(
        c.s,
        "    outputs identical with and without the cache (greedy): {same}/{n}; prefill alone, cache off: {best:.2} ms/token"
    );
    c.report.insert(
        "prefix_cache".into(),
        serde_json::json!({
            "requests": n, "rate": rate, "max_tokens": max_tokens, "prompt_tokens": prompt_tokens,
            "identical_outputs": same, "prefill_ms_per_token_alone": best,
            "off": {"summary": runs[0].summary, "prefill_tokens": runs[0].prefill_tokens, "block_queries": runs[0].queries, "block_hits": runs[0].hits},
            "on": {"summary": runs[1].summary, "prefill_tokens": runs[1].prefill_tokens, "block_queries": runs[1].queries, "block_hits": runs[1].hits},
        }),
    );
    let per_req = |r: &PrefixRun| r.tl.iter().map(|t| (t.id as f64, t.ttft().unwrap_or(0.0) * 1e3)).collect::<Vec<_>>();
    c.plots.push((
        "prefix_ttft.png",
        render_lines_png(
            &chart(
                "(b) TTFT per request, shared system prompt, prefix cache off vs on",
                "request (arrival order)",
                "TTFT (ms)",
                vec![line("cache off", per_req(&runs[0])), line("cache on", per_req(&runs[1]))],
            ),
            PLOT_W,
            PLOT_H,
        )?,
    ));
    Ok(best)
}

// ---------------------------------------------------------------- (c)

/// A finished prefill on its way to the decode engine: the wire chunks as encoded.
struct Transfer {
    id: u64,
    first_token: u32,
    n_tokens: usize,
    n_layer: usize,
    kv_dim: usize,
    frames: Vec<Vec<u8>>,
    kv_bytes: usize,
    prefill_done_s: f64,
    export_ms: f64,
    ser_ms: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct TransferCost {
    id: u64,
    prompt_tokens: usize,
    kv_bytes: usize,
    wire_bytes: usize,
    /// Arrival to first token sampled on the prefill engine (queue + prefill).
    prefill_ms: f64,
    export_ms: f64,
    ser_ms: f64,
    deser_ms: f64,
    import_ms: f64,
    /// Prefill done to import done (channel, decode-side queueing, deserialize, import).
    handoff_ms: f64,
}

fn encode_kv(kv: &KvBlocks) -> anyhow::Result<Vec<Vec<u8>>> {
    kv.chunks(KV_CHUNK_BLOCKS)
        .into_iter()
        .map(|c| troupe_wire::codec::encode(&WorkerReply::KvPart(Blob(c))).context("encoding a KV chunk"))
        .collect()
}

fn decode_kv(t: &Transfer) -> anyhow::Result<KvBlocks> {
    let parts = t
        .frames
        .iter()
        .map(|f| match troupe_wire::codec::decode::<WorkerReply>(f).context("decoding a KV chunk")? {
            WorkerReply::KvPart(Blob(b)) => Ok(b),
            other => bail!("expected a KV chunk, got {other:?}"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    KvBlocks::from_chunks(t.n_tokens, t.n_layer, t.kv_dim, &parts).context("reassembling the KV")
}

/// The prefill engine: every request is computed, its first token sampled, its KV
/// exported and encoded, then sent to the decode thread.
fn prefill_side(
    mut e: Engine,
    reqs: &[Req],
    prompts: &HashMap<u64, Vec<u32>>,
    start: Instant,
    tx: mpsc::Sender<Transfer>,
) -> anyhow::Result<()> {
    let mut clock = Wall(start);
    let (mut next, mut sent) = (0usize, 0usize);
    while sent < reqs.len() {
        let now = clock.now();
        while next < reqs.len() && reqs[next].arrival_s <= now {
            let r = &reqs[next];
            e.add_request_held(r.id, prompts[&r.id].clone(), SamplingParams::greedy(1), 0)?;
            next += 1;
        }
        if !e.has_work() {
            match reqs.get(next) {
                Some(r) => clock.wait_until(r.arrival_s),
                None => bail!("prefill side idle with {} transfers unsent", reqs.len() - sent),
            }
            continue;
        }
        for o in e.step()? {
            if o.finished.is_none() {
                continue;
            }
            let done = clock.now();
            let first_token = *o.new_tokens.first().context("a prefill finished without a token")?;
            let t = Instant::now();
            let kv = e.export_held(o.id).context("the finished prefill holds no KV")??;
            let export_ms = ms(t.elapsed());
            let t = Instant::now();
            let frames = encode_kv(&kv)?;
            let ser_ms = ms(t.elapsed());
            let msg = Transfer {
                id: o.id,
                first_token,
                n_tokens: kv.n_tokens,
                n_layer: kv.n_layer,
                kv_dim: kv.kv_dim,
                frames,
                kv_bytes: kv.bytes(),
                prefill_done_s: done,
                export_ms,
                ser_ms,
            };
            tx.send(msg).context("the decode thread stopped")?;
            sent += 1;
        }
    }
    Ok(())
}

/// The decode engine: imports each transferred KV (retrying after a step when full) and
/// decodes to the end.
fn decode_side(
    mut e: Engine,
    reqs: &[Req],
    prompts: &HashMap<u64, Vec<u32>>,
    start: Instant,
    rx: mpsc::Receiver<Transfer>,
) -> anyhow::Result<(Vec<Timeline>, Vec<TransferCost>)> {
    let mut clock = Wall(start);
    let index: HashMap<u64, usize> = reqs.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    let mut tl: Vec<Timeline> =
        reqs.iter().map(|r| Timeline { id: r.id, arrival_s: r.arrival_s, ..Timeline::default() }).collect();
    let mut costs: Vec<TransferCost> = Vec::new();
    let mut pending: Vec<(Transfer, KvBlocks, f64)> = Vec::new();
    let (mut received, mut done) = (0usize, 0usize);
    while done < reqs.len() {
        let incoming = if !e.has_work() && pending.is_empty() {
            rx.recv_timeout(Duration::from_secs(120)).ok().into_iter().collect::<Vec<_>>()
        } else {
            rx.try_iter().collect()
        };
        if incoming.is_empty() && !e.has_work() && pending.is_empty() {
            bail!("decode side: nothing arrived for 120 s ({done}/{} finished)", reqs.len());
        }
        for t in incoming {
            received += 1;
            let s = Instant::now();
            let kv = decode_kv(&t)?;
            let deser = ms(s.elapsed());
            pending.push((t, kv, deser));
        }
        let mut still = Vec::new();
        for (t, kv, deser) in pending.drain(..) {
            let i = index[&t.id];
            let s = Instant::now();
            let r =
                e.import_request(t.id, prompts[&t.id].clone(), t.first_token, &kv, fixed_len(reqs[i].max_tokens), 0);
            match r {
                Ok(()) => {
                    let import_ms = ms(s.elapsed());
                    tl[i].submitted_s = clock.now();
                    costs.push(TransferCost {
                        id: t.id,
                        prompt_tokens: t.n_tokens,
                        kv_bytes: t.kv_bytes,
                        wire_bytes: t.frames.iter().map(Vec::len).sum(),
                        prefill_ms: (t.prefill_done_s - reqs[i].arrival_s) * 1e3,
                        export_ms: t.export_ms,
                        ser_ms: t.ser_ms,
                        deser_ms: deser,
                        import_ms,
                        handoff_ms: (clock.now() - t.prefill_done_s) * 1e3,
                    });
                }
                Err(EngineError::Schedule(ScheduleError::NoRoom { .. } | ScheduleError::Busy(_))) => {
                    still.push((t, kv, deser))
                }
                Err(err) => return Err(err).context("importing a KV"),
            }
        }
        pending = still;
        if !e.has_work() {
            continue;
        }
        for o in e.step()? {
            let Some(&i) = index.get(&o.id) else { continue };
            let now = clock.now();
            let x = &mut tl[i];
            if !o.new_tokens.is_empty() && x.first_token_s.is_none() {
                x.first_token_s = Some(now);
            }
            x.tokens.extend_from_slice(&o.new_tokens);
            if o.finished.is_some() && x.finish_s.is_none() {
                x.finish_s = Some(now);
                done += 1;
            }
        }
    }
    debug_assert_eq!(received, reqs.len());
    costs.sort_by_key(|c| c.id);
    Ok((tl, costs))
}

fn disaggregation(c: &mut Ctx<'_>, prefill_ms_per_token: f64) -> anyhow::Result<()> {
    let (n, rate, prompt, out) =
        if c.a.quick { (8, 1.5, (128, 384), (16, 16)) } else { (12, 1.0, (128, 448), (32, 32)) };
    let threads = (c.a.threads / 2).max(1);
    let reqs = mixed_workload(n, rate, prompt, out, c.a.seed ^ 0xc);
    let prompts: HashMap<u64, Vec<u32>> = reqs.iter().map(|r| (r.id, synth_prompt(r.id + 500, r.prompt_len))).collect();

    eprintln!("(c) unified: two engines, {n} requests ...");
    let halves: Vec<Vec<Req>> = (0..2u64).map(|k| reqs.iter().filter(|r| r.id % 2 == k).cloned().collect()).collect();
    let engines = [engine(c.m, threads, 16, 512, false)?, engine(c.m, threads, 16, 512, false)?];
    let mut unified: Vec<Timeline> = Vec::new();
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = halves
            .iter()
            .zip(engines)
            .map(|(half, e)| {
                let prompts = &prompts;
                s.spawn(move || -> anyhow::Result<Vec<Timeline>> {
                    let mut e = Eng {
                        e,
                        jobs: half.iter().map(|r| (r.id, (prompts[&r.id].clone(), fixed_len(r.max_tokens)))).collect(),
                    };
                    drive(&mut e, half, Batching::Continuous, &mut Wall(start), MAX_STEPS).map_err(anyhow::Error::msg)
                })
            })
            .collect();
        for h in handles {
            unified.extend(h.join().map_err(|_| anyhow::anyhow!("an engine thread panicked"))??);
        }
        Ok(())
    })?;
    unified.sort_by_key(|t| t.id);

    eprintln!("(c) disaggregated: prefill engine + decode engine, {n} requests ...");
    let pe = engine(c.m, threads, 32, 512, false)?;
    let de = engine(c.m, threads, 16, 512, false)?;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let (disagg, costs) = std::thread::scope(|s| -> anyhow::Result<_> {
        let (reqs, prompts) = (&reqs, &prompts);
        let p = s.spawn(move || prefill_side(pe, reqs, prompts, start, tx));
        let d = s.spawn(move || decode_side(de, reqs, prompts, start, rx));
        let dr = d.join().map_err(|_| anyhow::anyhow!("the decode thread panicked"))?;
        p.join().map_err(|_| anyhow::anyhow!("the prefill thread panicked"))??;
        dr
    })?;
    let same = unified.iter().zip(&disagg).filter(|(a, b)| a.tokens == b.tokens).count();
    let prefill_est = prefill_ms_per_token * mean(&reqs.iter().map(|r| r.prompt_len as f64).collect::<Vec<_>>());
    let (su, sd) = (summarize(&unified), summarize(&disagg));
    let col = |f: fn(&TransferCost) -> f64| costs.iter().map(f).collect::<Vec<f64>>();
    let kv_per_token = costs.iter().map(|x| x.kv_bytes).sum::<usize>() as f64
        / costs.iter().map(|x| x.prompt_tokens).sum::<usize>().max(1) as f64;
    let _ = writeln!(
        c.s,
        "\n(c) unified vs disaggregated, two engines ({threads} thread(s) each) on two threads: {n} requests, Poisson {rate}/s, \
         prompt {}-{} tokens, {} output tokens",
        prompt.0, prompt.1, out.0
    );
    summary_header(&mut c.s);
    summary_line(&mut c.s, "unified x2", &su);
    summary_line(&mut c.s, "prefill + decode", &sd);
    let _ = writeln!(
        c.s,
        "    KV per request: {:.0} KiB mean, {:.0} KiB max ({:.1} KiB per prompt token, f16); on the wire (bincode \
         KvPart frames of {KV_CHUNK_BLOCKS} blocks): {:.0} KiB mean",
        mean(&costs.iter().map(|x| x.kv_bytes as f64 / 1024.0).collect::<Vec<_>>()),
        costs.iter().map(|x| x.kv_bytes as f64 / 1024.0).fold(0.0, f64::max),
        kv_per_token / 1024.0,
        mean(&costs.iter().map(|x| x.wire_bytes as f64 / 1024.0).collect::<Vec<_>>()),
    );
    let stat = |v: &[f64]| format!("{:.2} / {:.2}", mean(v), quantile(v, 0.99));
    let _ = writeln!(
        c.s,
        "    per request, ms mean / p99: export {}, serialize {}, deserialize {}, import {}; prefill (arrival to first \
         token on the prefill engine) {}; handoff (prefill done to imported) {}",
        stat(&col(|x| x.export_ms)),
        stat(&col(|x| x.ser_ms)),
        stat(&col(|x| x.deser_ms)),
        stat(&col(|x| x.import_ms)),
        stat(&col(|x| x.prefill_ms)),
        stat(&col(|x| x.handoff_ms)),
    );
    let moved = mean(&col(|x| x.export_ms + x.ser_ms + x.deser_ms + x.import_ms));
    let _ = writeln!(
        c.s,
        "    export+serialize+deserialize+import = {moved:.2} ms per request, against ~{prefill_est:.0} ms to compute the \
         same prefill ({prefill_ms_per_token:.2} ms/token from (b) x mean prompt); outputs identical to the unified run: \
         {same}/{n}",
    );
    let _ = writeln!(
        c.s,
        "    NOT included: the network. In the real system the frames go over QUIC between nodes; at 10 Gbit/s the mean \
         frame set would add ~{:.2} ms of wire time plus a round trip. Included: copy out of the cache, bincode both ways, \
         an in-process channel, the copy into the decode engine's cache.",
        mean(&costs.iter().map(|x| x.wire_bytes as f64 * 8.0 / 10e9 * 1e3).collect::<Vec<_>>()),
    );
    c.report.insert(
        "disaggregation".into(),
        serde_json::json!({
            "requests": reqs, "threads_per_engine": threads, "unified": su, "disaggregated": sd,
            "identical_outputs": same, "transfers": costs, "network_included": false,
            "prefill_compute_ms_estimate": prefill_est, "unified_timelines": unified, "disaggregated_timelines": disagg,
        }),
    );
    let bars = BarChart {
        title: "(c) disaggregated: cost per request of moving the KV, vs its prefill".into(),
        y_desc: "ms (mean)".into(),
        categories: vec![
            "export".into(),
            "serialize".into(),
            "deserialize".into(),
            "import".into(),
            "prefill compute (est.)".into(),
        ],
        series: vec![(
            "in-process, no network".into(),
            vec![
                mean(&col(|x| x.export_ms)),
                mean(&col(|x| x.ser_ms)),
                mean(&col(|x| x.deser_ms)),
                mean(&col(|x| x.import_ms)),
                prefill_est,
            ],
        )],
    };
    c.plots.push(("disagg_costs.png", render_bars_png(&bars, PLOT_W, PLOT_H)?));
    let ttft = |tl: &[Timeline]| cdf(&tl.iter().filter_map(Timeline::ttft).collect::<Vec<_>>());
    c.plots.push((
        "disagg_ttft_cdf.png",
        render_lines_png(
            &chart(
                "(c) TTFT distribution, two unified engines vs prefill + decode engines",
                "time to first token (s)",
                "fraction of requests",
                vec![line("unified x2", ttft(&unified)), line("prefill + decode", ttft(&disagg))],
            ),
            PLOT_W,
            PLOT_H,
        )?,
    ));
    let tpot = |tl: &[Timeline]| cdf(&tl.iter().filter_map(Timeline::tpot).map(|x| x * 1e3).collect::<Vec<_>>());
    c.plots.push((
        "disagg_tpot_cdf.png",
        render_lines_png(
            &chart(
                "(c) TPOT distribution: decode without prefills in its batches",
                "time per output token (ms)",
                "fraction of requests",
                vec![line("unified x2", tpot(&unified)), line("prefill + decode", tpot(&disagg))],
            ),
            PLOT_W,
            PLOT_H,
        )?,
    ));
    Ok(())
}

// ---------------------------------------------------------------- (d)

fn routing(c: &mut Ctx<'_>, prefill_ms_per_token: f64, tpot_ms: f64) -> anyhow::Result<()> {
    let mut cfg = SimConfig {
        workers: 4,
        cache_blocks: 192,
        system_prompts: 8,
        system_len: 512,
        conversations: if c.a.quick { 150 } else { 400 },
        turns: 4,
        user_len: (16, 64),
        output_len: (16, 96),
        conversation_rate: 1.0,
        think_s: 30.0,
        prefill_ms_per_token,
        tpot_ms,
        seed: c.a.seed,
    };
    // Offer 70% of the cluster's prefill capacity before any cache hit.
    cfg.conversation_rate = 0.7 / cfg.prefill_utilization_uncached();
    let results: Vec<PolicyResult> =
        [Policy::Affinity, Policy::LeastLoaded, Policy::RoundRobin].iter().map(|p| simulate(&cfg, *p)).collect();
    let _ = writeln!(
        c.s,
        "\n(d) routing policies, simulated: {} workers, prefix cache {} blocks each (LRU of block hashes), {} system prompts \
         of {} tokens, {} conversations x {} turns (session ids), {:.3} new conversations/s (70% of prefill capacity \
         uncached), think time {} s",
        cfg.workers,
        cfg.cache_blocks,
        cfg.system_prompts,
        cfg.system_len,
        cfg.conversations,
        cfg.turns,
        cfg.conversation_rate,
        cfg.think_s
    );
    let _ = writeln!(
        c.s,
        "    calibration: prefill {prefill_ms_per_token:.2} ms per uncached token (measured in (b): one prompt alone, cache \
         off), decode {tpot_ms:.1} ms per output token (TPOT p50 of continuous batching in (a)); one prefill at a time \
         per worker, decodes in parallel"
    );
    let _ = writeln!(
        c.s,
        "    {:<14} {:>9} {:>10} {:>10} {:>10} {:>11} {:>11} {:>10}  requests per worker",
        "policy", "hit rate", "TTFT mean", "TTFT p99", "lat mean", "lat p99", "prefill tok", "imbalance"
    );
    for r in &results {
        let _ = writeln!(
            c.s,
            "    {:<14} {:>8.1}% {:>8.0}ms {:>8.0}ms {:>8.0}ms {:>9.0}ms {:>11} {:>9.2}x  {:?}",
            r.policy,
            r.token_hit_rate * 100.0,
            r.ttft_mean_ms,
            r.ttft_p99_ms,
            r.latency_mean_ms,
            r.latency_p99_ms,
            r.prefill_tokens,
            r.load_imbalance,
            r.requests_per_worker
        );
    }
    let _ = writeln!(
        c.s,
        "    (hit rate = prompt tokens served from a worker's prefix cache; imbalance = busiest worker's busy time / mean)"
    );
    c.report.insert("routing".into(), serde_json::json!({"config": cfg, "results": results}));
    let cats: Vec<String> = results.iter().map(|r| r.policy.clone()).collect();
    c.plots.push((
        "routing_hits.png",
        render_bars_png(
            &BarChart {
                title: "(d) routing: prefix-cache hit rate and load imbalance per policy (simulated)".into(),
                y_desc: "%".into(),
                categories: cats.clone(),
                series: vec![
                    ("hit rate, % of prompt tokens".into(), results.iter().map(|r| r.token_hit_rate * 100.0).collect()),
                    (
                        "busiest worker, % of mean busy time".into(),
                        results.iter().map(|r| r.load_imbalance * 100.0).collect(),
                    ),
                ],
            },
            PLOT_W,
            PLOT_H,
        )?,
    ));
    c.plots.push((
        "routing_latency.png",
        render_bars_png(
            &BarChart {
                title: "(d) routing: request latency per policy (simulated, calibrated)".into(),
                y_desc: "seconds".into(),
                categories: cats,
                series: vec![
                    ("TTFT mean".into(), results.iter().map(|r| r.ttft_mean_ms / 1e3).collect()),
                    ("TTFT p99".into(), results.iter().map(|r| r.ttft_p99_ms / 1e3).collect()),
                    ("latency mean".into(), results.iter().map(|r| r.latency_mean_ms / 1e3).collect()),
                    ("latency p99".into(), results.iter().map(|r| r.latency_p99_ms / 1e3).collect()),
                ],
            },
            PLOT_W,
            PLOT_H,
        )?,
    ));
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let path = match &a.model {
        Some(p) => p.clone(),
        None => troupe_llm::fetch::locate("smollm2-135m")
            .ok_or_else(|| anyhow::anyhow!("{}", troupe_llm::fetch::missing_model_help("smollm2-135m")))?,
    };
    let m = ModelFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    eprintln!(
        "running the llm-serving lab ({} scale, seed {}, {} threads, model {}) ...",
        if a.quick { "quick" } else { "full" },
        a.seed,
        a.threads,
        path.display()
    );
    let mut c = Ctx { m: &m, a: &a, s: String::new(), report: serde_json::Map::new(), plots: Vec::new() };
    let _ = writeln!(
        c.s,
        "llm-serving lab: SmolLM2-135M Q4_1, CPU backend, {} threads, seed {}, {} scale\n",
        a.threads,
        a.seed,
        if a.quick { "quick" } else { "full" }
    );
    let load_before = loadavg();
    let tpot_ms = batching(&mut c)?;
    let prefill_ms = prefix_cache(&mut c)?;
    disaggregation(&mut c, prefill_ms)?;
    routing(&mut c, prefill_ms, tpot_ms)?;
    let _ = writeln!(
        c.s,
        "\nmachine load (1-min load average, /proc/loadavg) before: {load_before}, after: {}; other processes share \
         the cores, so absolute times are depressed and noisy; compare within a section",
        loadavg()
    );
    c.report.insert("loadavg_before".into(), load_before.into());
    c.report.insert("seed".into(), a.seed.into());
    c.report.insert("quick".into(), a.quick.into());
    c.report.insert("threads".into(), a.threads.into());

    let mut written = Vec::new();
    for (name, png) in &c.plots {
        let p = a.out.join(name);
        std::fs::write(&p, png).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    let p = a.out.join("summary.txt");
    std::fs::write(&p, &c.s).with_context(|| format!("writing {}", p.display()))?;
    written.push(p);
    let p = a.out.join("report.json");
    std::fs::write(&p, serde_json::to_string_pretty(&c.report)?).with_context(|| format!("writing {}", p.display()))?;
    written.push(p);
    print!("{}", c.s);
    println!("done in {:.1} s; wrote:", started.elapsed().as_secs_f64());
    for p in written {
        println!("  {}", p.display());
    }
    Ok(())
}
