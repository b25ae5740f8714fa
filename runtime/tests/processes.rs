//! An actor runs a program with `Ctx::run_process`: the actor keeps answering while
//! the job runs, the outcome arrives as a message, and a cancel kills the job.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_runtime::process::{Canceller, Exit, Job, Sandbox, Workdir};
use troupe_runtime::{
    ActorError, ActorPath, Behavior, Ctx, FromParams, KindRegistry, KindSpec, MsgOf, Node, Protocol, Reply, ReplyOf,
    config,
};

struct Run;
impl Protocol for Run {
    type Msg = RunMsg;
    type Reply = String;
    const NAME: &'static str = "test.run";
}

#[derive(Serialize, Deserialize)]
enum RunMsg {
    /// Starts `sh -c SCRIPT` in the sandbox, with DIR as its work directory; answers
    /// "started".
    Start(String, std::path::PathBuf),
    /// Answers at once, job or no job.
    Ping,
    /// Cancels the running job.
    Cancel,
    /// The last outcome: "EXIT|STDOUT", or "" while none.
    Last,
    /// The job ended (sent by the runner, not by clients).
    Done(String),
}

struct Runner;
impl FromParams for Runner {
    type Params = toml::Table;
    fn from_params(_: toml::Table, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(Runner)
    }
}

#[derive(Default)]
struct St {
    cancel: Option<Canceller>,
    last: String,
}

impl Behavior for Runner {
    type Proto = Run;
    type State = St;
    async fn init(&self, _: &Ctx<Run>) -> Result<St, ActorError> {
        Ok(St::default())
    }
    async fn handle(
        &self,
        ctx: &Ctx<Run>,
        st: &mut St,
        msg: MsgOf<Self>,
        reply: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        match msg {
            RunMsg::Start(script, dir) => {
                let sandbox = Sandbox { workdir: Workdir::Bind(dir), ..Sandbox::default() };
                let job = Job::new("/bin/sh").arg("-c").arg(script).sandbox(sandbox);
                let cancel = ctx
                    .run_process(job, |outcome| {
                        RunMsg::Done(match outcome {
                            Ok(o) => format!("{}|{}", o.exit, o.stdout_text().trim()),
                            Err(e) => format!("error|{e}"),
                        })
                    })
                    .map_err(|e| troupe_runtime::fail(e.to_string()))?;
                st.cancel = Some(cancel);
                reply.send("started".into()).await;
            }
            RunMsg::Ping => reply.send("pong".into()).await,
            RunMsg::Cancel => {
                if let Some(c) = &st.cancel {
                    c.cancel();
                }
                reply.send("cancelling".into()).await;
            }
            RunMsg::Last => reply.send(st.last.clone()).await,
            RunMsg::Done(text) => st.last = text,
        }
        Ok(())
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("troupe-proc-{}-{name}", std::process::id()))
}

async fn node() -> Node {
    let d = temp("node");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("systems")).unwrap();
    std::fs::write(
        d.join("cluster.toml"),
        "[cluster]\nname = \"t\"\nsystems = [\"run\"]\nseeds = [\"n1\"]\n[[nodes]]\nname = \"n1\"\naddr = \"127.0.0.1:1\"\ngossip = \"127.0.0.1:2\"\nadmin = \"127.0.0.1:3\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("systems/run.toml"),
        "[system]\nname = \"run\"\n[kinds.run]\nfactory = \"test.run\"\nplacement = \"sharded\"\n",
    )
    .unwrap();
    let mut kinds = KindRegistry::new();
    kinds.register::<Runner>("test.run");
    let loaded = config::load(&d.join("cluster.toml"), &kinds).unwrap_or_else(|e| panic!("{e}"));
    Node::start(Arc::new(loaded), kinds, "n1").await.unwrap()
}

/// Polls `Last` until the job's outcome arrived (bounded).
async fn last(h: &troupe_runtime::ActorHandle<Run>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = h.ask(RunMsg::Last).await.unwrap();
        if !text.is_empty() {
            return text;
        }
        assert!(Instant::now() < deadline, "the job's outcome never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_runs_a_job_and_stays_responsive() {
    let n = node().await;
    let h = n.handle::<Run>(ActorPath::new("run", "run", "a").unwrap());
    // The job cannot end before the test lets it (a file in its work directory), so
    // an answer meanwhile shows the actor is not blocked by it.
    let work = temp("work-a");
    std::fs::create_dir_all(&work).unwrap();
    let script = "while [ ! -e /work/go ]; do sleep 0.02; done; echo finished";
    assert_eq!(h.ask(RunMsg::Start(script.into(), work.clone())).await.unwrap(), "started");
    assert_eq!(h.ask(RunMsg::Ping).await.unwrap(), "pong");
    assert_eq!(h.ask(RunMsg::Last).await.unwrap(), "", "an outcome before the job could end");
    std::fs::write(work.join("go"), "").unwrap();
    assert_eq!(last(&h).await, format!("{}|finished", Exit::Code(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_cancels_its_job() {
    let n = node().await;
    let h = n.handle::<Run>(ActorPath::new("run", "run", "b").unwrap());
    let work = temp("work-b");
    std::fs::create_dir_all(&work).unwrap();
    h.ask(RunMsg::Start("sleep 600; echo never".into(), work)).await.unwrap();
    h.ask(RunMsg::Cancel).await.unwrap();
    assert_eq!(last(&h).await, format!("{}|", Exit::Cancelled));
}
