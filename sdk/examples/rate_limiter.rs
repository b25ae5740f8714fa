//! Copy-and-go example: check rate limits from any Rust program through the SDK, without
//! linking the runtime. The protocol types come from the light `troupe-limiter` crate.
//!
//! ```text
//! troupe up &                                # in the repository root
//! cargo run -p troupe-client --example rate_limiter -- cluster.toml
//! ```
//!
//! The request goes to the limiter agent of the node the client is connected to; that node
//! plans the check with its rules and asks the shards owning the limits, wherever they are.

use troupe_client::{Client, ClientConfig};
use troupe_limiter::proto::{CheckItem, LimiterService, ServiceMsg, ServiceReply, agent_path};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let file = std::env::args().nth(1).unwrap_or_else(|| "cluster.toml".into());
    let client = Client::connect(ClientConfig::from_cluster_file(file.as_ref(), "cli")?).await?;
    let node = client.node().await.unwrap_or_default();
    println!("connected to {node}");
    let agent = agent_path(&node)?;

    // One LLM request: 1 request and ~1200 tokens against the user's and the org's limits,
    // admitted only if all four allow (rules of the shipped topology).
    let checks = vec![
        CheckItem::new("llm-requests", "user-42"),
        CheckItem::new("llm-tokens", "user-42").cost(1_200),
        CheckItem::new("llm-org-requests", "org-acme"),
        CheckItem::new("llm-org-tokens", "org-acme").cost(1_200),
    ];
    match client.ask::<LimiterService>(&agent, &ServiceMsg::Check { checks }).await? {
        ServiceReply::Verdict(v) => {
            println!("allowed: {} (rules v{})", v.allowed, v.rules_version);
            for r in &v.results {
                println!(
                    "  {:16} {:10} remaining {:>6} of {:>6} ({:?})",
                    r.rule, r.key, r.decision.remaining, r.decision.limit, r.mode
                );
            }
            for (name, value) in v.headers() {
                println!("  {name}: {value}");
            }
            // The real token count is known after generation: settle the estimate.
            for receipt in v.receipts().filter(|r| r.rule.ends_with("tokens")) {
                client
                    .ask::<LimiterService>(&agent, &ServiceMsg::Adjust { receipt: receipt.clone(), actual: 730 })
                    .await?;
            }
        }
        other => println!("unexpected answer: {other:?}"),
    }

    // Bad input is an error that says what is wrong.
    let bad = ServiceMsg::Check { checks: vec![CheckItem::new("no-such-rule", "x")] };
    if let Err(e) = client.ask::<LimiterService>(&agent, &bad).await {
        println!("refused as expected: {e}");
    }
    Ok(())
}
