//! Copy-and-go example: talk to the `kv` system of a running cluster with typed
//! messages, stream nothing, and read the membership.
//!
//! ```text
//! troupe up &                                # in the repository root
//! cargo run -p troupe-client --example kv -- cluster.toml
//! ```
//!
//! A protocol is just two serde types; declaring the same shapes as the actor kind
//! (here `kv.store`, see actors/kv/shell/src/store.rs) is all a client needs — it does not link
//! the runtime.

use serde::{Deserialize, Serialize};
use troupe_client::wire::introspect::{NodeReply, NodeRequest};
use troupe_client::{ActorPath, Client, ClientConfig, Protocol};

struct KvStore;

impl Protocol for KvStore {
    type Msg = KvMsg;
    type Reply = KvReply;
    const NAME: &'static str = "kv.store";
}

#[derive(Debug, Serialize, Deserialize)]
enum KvMsg {
    Get,
    Put { value: String },
    Delete,
    Incr { by: i64 },
}

#[derive(Debug, Serialize, Deserialize)]
enum KvReply {
    Value { value: Option<String>, version: u64 },
    Written { version: u64 },
    Deleted { existed: bool, version: u64 },
    Counter { value: i64, version: u64 },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let file = std::env::args().nth(1).unwrap_or_else(|| "cluster.toml".into());
    let client = Client::connect(ClientConfig::from_cluster_file(file.as_ref(), "cli")?).await?;
    println!("connected to {}", client.node().await.unwrap_or_default());

    let key: ActorPath = "/kv/store/greeting".parse()?;
    let w = client.ask::<KvStore>(&key, &KvMsg::Put { value: "hello from the SDK".into() }).await?;
    println!("put -> {w:?}");
    let r = client.ask::<KvStore>(&key, &KvMsg::Get).await?;
    println!("get -> {r:?}");
    let c = client.ask::<KvStore>(&"/kv/store/visits".parse()?, &KvMsg::Incr { by: 1 }).await?;
    println!("incr -> {c:?}");

    if let NodeReply::Members(ms) = client.node_request("n1", NodeRequest::Members).await? {
        for m in ms {
            println!("member {} {:?} epoch {}", m.name, m.state, m.epoch);
        }
    }
    Ok(())
}
