//! Configuration errors, one class per test: each message names the file, the line
//! and the fix, and every error of a load is reported at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;
use troupe_runtime::config::{self, Diag};
use troupe_runtime::{
    ActorError, Behavior, Ctx, FromParams, KindRegistry, KindSpec, MsgOf, Node, Protocol, Reply, ReplyOf,
};

struct Echo;
impl Protocol for Echo {
    type Msg = String;
    type Reply = String;
    const NAME: &'static str = "test.echo";
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoParams {
    #[serde(default)]
    prefix: String,
    #[serde(default = "one")]
    repeat: u32,
}
fn one() -> u32 {
    1
}

struct EchoActor;
impl FromParams for EchoActor {
    type Params = EchoParams;
    fn from_params(_: EchoParams, _: &KindSpec, _: &Node) -> Result<Self, String> {
        Ok(EchoActor)
    }
    fn check(p: &EchoParams) -> Result<(), String> {
        let _ = &p.prefix;
        if p.repeat == 0 { Err("repeat must be at least 1".into()) } else { Ok(()) }
    }
}
impl Behavior for EchoActor {
    type Proto = Echo;
    type State = ();
    async fn init(&self, _: &Ctx<Echo>) -> Result<(), ActorError> {
        Ok(())
    }
    async fn handle(
        &self,
        _: &Ctx<Echo>,
        _: &mut (),
        m: MsgOf<Self>,
        r: Reply<ReplyOf<Self>>,
    ) -> Result<(), ActorError> {
        r.send(m).await;
        Ok(())
    }
}

fn kinds() -> KindRegistry {
    let mut k = KindRegistry::new();
    k.register::<EchoActor>("test.echo");
    k
}

const CLUSTER: &str = r#"
[cluster]
name = "t"
systems = ["echo"]
seeds = ["n1"]

[[nodes]]
name = "n1"
addr = "127.0.0.1:7101"
gossip = "127.0.0.1:7201"
admin = "127.0.0.1:7301"
roles = ["gateway"]
"#;

const ECHO: &str = r#"
[system]
name = "echo"

[kinds.echo]
factory = "test.echo"
placement = "sharded"
mailbox_cap = 16
"#;

fn load(cluster: &str, systems: &[(&str, &str)]) -> Result<config::Loaded, Vec<Diag>> {
    let dir = std::env::temp_dir().join(format!("troupe-cfg-{}-{}", std::process::id(), rand_id()));
    std::fs::create_dir_all(dir.join("systems")).unwrap();
    std::fs::write(dir.join("cluster.toml"), cluster).unwrap();
    for (name, text) in systems {
        std::fs::write(dir.join(format!("systems/{name}.toml")), text).unwrap();
    }
    let r = config::load(&dir.join("cluster.toml"), &kinds()).map_err(|e| e.0);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// The one error expected, with its text rendered like the CLI prints it.
fn only_error(r: Result<config::Loaded, Vec<Diag>>) -> (Diag, String) {
    let errs = r.expect_err("the configuration should be rejected");
    assert_eq!(errs.len(), 1, "expected one error, got: {errs:#?}");
    let text = errs[0].to_string();
    (errs[0].clone(), text)
}

fn file_name(d: &Diag) -> String {
    PathBuf::from(&d.file).file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn valid_configuration_loads() {
    let l = load(CLUSTER, &[("echo", ECHO)]).unwrap();
    assert_eq!(l.topologies[0].kinds[0].mailbox_cap, 16);
}

#[test]
fn unknown_kind_names_the_factory_and_suggests() {
    let bad = ECHO.replace("test.echo", "test.ecoh");
    let (d, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert_eq!((file_name(&d).as_str(), d.line), ("echo.toml", 6));
    assert!(text.contains("unknown actor kind `test.ecoh`"), "{text}");
    assert!(text.contains("did you mean `test.echo`"), "{text}");
}

#[test]
fn bad_placement_lists_the_valid_ones() {
    let bad = ECHO.replace("\"sharded\"", "\"shardd\"");
    let (d, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert_eq!(d.line, 7);
    assert!(text.contains("unknown placement `shardd`") && text.contains("did you mean `sharded`"), "{text}");
}

#[test]
fn a_kinds_allowed_roles_default_to_every_client_and_unknown_ones_are_refused() {
    let l = load(CLUSTER, &[("echo", ECHO)]).unwrap();
    assert_eq!(l.topologies[0].kinds[0].allow, vec!["client".to_string(), "admin".to_string()]);
    let admins = ECHO.replace("placement = \"sharded\"", "placement = \"sharded\"\nallow = [\"admin\"]");
    let l = load(CLUSTER, &[("echo", &admins)]).unwrap();
    assert_eq!(l.topologies[0].kinds[0].allow, vec!["admin".to_string()]);
    let bad = ECHO.replace("placement = \"sharded\"", "placement = \"sharded\"\nallow = [\"admn\"]");
    let (_, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert!(text.contains("unknown role `admn`") && text.contains("did you mean `admin`"), "{text}");
}

#[test]
fn missing_dependency_says_what_to_enable() {
    let bad = ECHO.replace("name = \"echo\"", "name = \"echo\"\nrequires = [\"rate-limiter\"]");
    let (d, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert_eq!(d.line, 4);
    assert!(text.contains("requires `rate-limiter`, which the cluster does not enable"), "{text}");
    assert!(text.contains("add \"rate-limiter\" to `systems`"), "{text}");
}

#[test]
fn out_of_range_value_names_the_unit() {
    let bad = ECHO.replace("mailbox_cap = 16", "mailbox_cap = 0");
    let (d, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert_eq!(d.line, 8);
    assert!(text.contains("`mailbox_cap` = 0 is out of range") && text.contains("(messages)"), "{text}");
}

#[test]
fn wrong_type_is_reported() {
    let bad = ECHO.replace("mailbox_cap = 16", "mailbox_cap = \"lots\"");
    let (_, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert!(text.contains("must be an integer (messages), not string"), "{text}");
}

#[test]
fn unknown_field_suggests_the_close_one() {
    let bad = ECHO.replace("mailbox_cap = 16", "mailbox_capp = 16");
    let (d, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert_eq!(d.line, 8);
    assert!(
        text.contains("unknown field `mailbox_capp` in [kinds.echo]") && text.contains("did you mean `mailbox_cap`"),
        "{text}"
    );
}

#[test]
fn bad_params_are_checked_by_the_kind() {
    let bad = format!("{ECHO}\n[kinds.echo.params]\nrepeat = 0\n");
    let (_, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert!(text.contains("bad params for `test.echo`: repeat must be at least 1"), "{text}");
    let bad = format!("{ECHO}\n[kinds.echo.params]\nrepaet = 2\n");
    let (_, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert!(text.contains("unknown field `repaet`"), "{text}");
}

#[test]
fn syntax_error_points_at_the_line() {
    let bad = ECHO.replace("mailbox_cap = 16", "mailbox_cap = = 16");
    let errs = load(CLUSTER, &[("echo", &bad)]).unwrap_err();
    assert!(errs.iter().all(|d| d.line == 8), "{errs:#?}");
    assert!(errs[0].message.starts_with("TOML syntax"), "{errs:#?}");
}

#[test]
fn missing_topology_file_lists_what_exists() {
    let c = CLUSTER.replace("systems = [\"echo\"]", "systems = [\"echo\", \"ekho\"]");
    let (d, text) = only_error(load(&c, &[("echo", ECHO)]));
    assert_eq!((file_name(&d).as_str(), d.line), ("cluster.toml", 4));
    assert!(text.contains("no topology file for system `ekho`") && text.contains("did you mean `echo`"), "{text}");
}

#[test]
fn cluster_file_errors_bad_address_duplicate_and_unknown_seed() {
    let c = format!(
        "{CLUSTER}\n[[nodes]]\nname = \"n1\"\naddr = \"localhost\"\ngossip = \"127.0.0.1:7202\"\nadmin = \"127.0.0.1:7301\"\n"
    )
    .replace("seeds = [\"n1\"]", "seeds = [\"n9\"]");
    let errs = load(&c, &[("echo", ECHO)]).unwrap_err();
    let all: String = errs.iter().map(|d| d.to_string()).collect();
    assert!(all.contains("`addr` = \"localhost\" is not a socket address"), "{all}");
    assert!(all.contains("seed `n9` is not a node of this cluster"), "{all}");
    assert!(errs.len() >= 2, "{all}");
}

#[test]
fn role_that_no_node_has_is_a_placement_error() {
    let bad = ECHO.replace("placement = \"sharded\"", "placement = \"per_node\"\nrole = \"gpu\"");
    let (_, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert!(text.contains("runs on nodes with role `gpu`, and no node has it"), "{text}");
}

#[test]
fn a_kind_placed_by_label_needs_a_node_with_it_and_roles_cannot_look_like_labels() {
    let by_label = ECHO.replace("placement = \"sharded\"", "placement = \"sharded\"\nrole = \"zone=b\"");
    let (_, text) = only_error(load(CLUSTER, &[("echo", &by_label)]));
    assert!(text.contains("runs on nodes with label `zone=b`, and no node has it"), "{text}");
    assert!(text.contains("add `zone = \"b\"` to the [nodes.labels]"), "{text}");
    let labelled = format!("{CLUSTER}labels = {{ zone = \"b\", rack = \"r7\" }}\n");
    let l = load(&labelled, &[("echo", &by_label)]).unwrap();
    let n1 = l.cluster.node("n1").unwrap();
    assert_eq!(n1.placement_roles, vec!["gateway".to_string(), "rack=r7".into(), "zone=b".into()]);
    let (_, text) =
        only_error(load(&CLUSTER.replace("roles = [\"gateway\"]", "roles = [\"zone=b\"]"), &[("echo", ECHO)]));
    assert!(text.contains("role `zone=b` has a `=`") && text.contains("[nodes.labels]"), "{text}");
}

#[test]
fn a_kind_placed_by_gpu_model_needs_a_node_with_that_gpu() {
    let by_gpu = ECHO.replace("placement = \"sharded\"", "placement = \"sharded\"\nrole = \"gpu=H100\"");
    let (_, text) = only_error(load(CLUSTER, &[("echo", &by_gpu)]));
    assert!(text.contains("runs on nodes with a `H100` GPU (`gpu=H100`), and no node has it"), "{text}");
    assert!(text.contains("add a [[nodes.gpus]] entry with model = \"H100\""), "{text}");
    let with_gpu = format!("{CLUSTER}[[nodes.gpus]]\nmodel = \"H100\"\nmemory_gib = 80\ncount = 2\n");
    let l = load(&with_gpu, &[("echo", &by_gpu)]).unwrap();
    let n1 = l.cluster.node("n1").unwrap();
    assert_eq!(n1.placement_roles, vec!["gateway".to_string(), "gpu=H100".into()]);
    assert_eq!((n1.gpus[0].memory_gib, n1.gpus[0].count), (80, 2));
    // `gpu` is not a free-form label: the GPUs say it.
    let (_, text) = only_error(load(&format!("{CLUSTER}labels = {{ gpu = \"H100\" }}\n"), &[("echo", ECHO)]));
    assert!(text.contains("the label `gpu` is reserved"), "{text}");
}

#[test]
fn every_error_is_reported_at_once() {
    let bad = ECHO.replace("test.echo", "nope").replace("mailbox_cap = 16", "mailbox_cap = -1\ncolour = \"blue\"");
    let c = CLUSTER.replace("name = \"t\"", "name = \"t\"\nsytems_dir = \"x\"");
    let errs = load(&c, &[("echo", &bad)]).unwrap_err();
    let files: Vec<String> = errs.iter().map(file_name).collect();
    assert!(errs.len() >= 4, "{errs:#?}");
    assert!(files.contains(&"cluster.toml".to_string()) && files.contains(&"echo.toml".to_string()));
    let rendered = troupe_runtime::ConfigErrors(errs).to_string();
    assert!(rendered.contains("errors in the configuration"), "{rendered}");
    assert!(rendered.contains("  --> "), "{rendered}");
}

#[test]
fn split_brain_strategies_load_and_bad_ones_say_what_to_write() {
    use troupe_runtime::config::SplitBrain;
    let l = load(CLUSTER, &[("echo", ECHO)]).unwrap();
    assert_eq!(l.cluster.split_brain, SplitBrain::KeepMajority, "keep-majority is the default");
    let c = format!("{CLUSTER}\n[split_brain]\nstrategy = \"keep-oldest\"\n");
    assert_eq!(load(&c, &[("echo", ECHO)]).unwrap().cluster.split_brain, SplitBrain::KeepOldest);
    let c = format!("{CLUSTER}\n[split_brain]\nstrategy = \"static-quorum\"\nquorum = 1\n");
    assert_eq!(load(&c, &[("echo", ECHO)]).unwrap().cluster.split_brain, SplitBrain::StaticQuorum(1));
    let c = format!("{CLUSTER}\n[split_brain]\nstrategy = \"keep-majorty\"\n");
    let (d, text) = only_error(load(&c, &[("echo", ECHO)]));
    assert_eq!(file_name(&d), "cluster.toml");
    assert!(text.contains("unknown split-brain strategy `keep-majorty`") && text.contains("keep-majority"), "{text}");
    let c = format!("{CLUSTER}\n[split_brain]\nstrategy = \"static-quorum\"\n");
    let (_, text) = only_error(load(&c, &[("echo", ECHO)]));
    assert!(text.contains("static-quorum needs `quorum`") && text.contains("quorum = 1"), "{text}");
    // Two nodes, a quorum of one: both halves of a split would serve.
    let two = format!(
        "{CLUSTER}\n[[nodes]]\nname = \"n2\"\naddr = \"127.0.0.1:7102\"\ngossip = \"127.0.0.1:7202\"\nadmin = \"127.0.0.1:7302\"\n\n[split_brain]\nstrategy = \"static-quorum\"\nquorum = 1\n"
    );
    let (_, text) = only_error(load(&two, &[("echo", ECHO)]));
    assert!(text.contains("a quorum of 1 of 2 nodes lets both sides of a split serve"), "{text}");
}

#[test]
fn node_names_that_would_share_a_certificate_file_are_refused() {
    for reserved in ["ca", "client-ops"] {
        let bad = CLUSTER.replace("\"n1\"", &format!("\"{reserved}\""));
        let (_, text) = only_error(load(&bad, &[("echo", ECHO)]));
        assert!(text.contains(&format!("node name `{reserved}` is reserved")), "{text}");
    }
}

#[test]
fn remember_is_for_sharded_kinds_only() {
    let ok = ECHO.replace("placement = \"sharded\"", "placement = \"sharded\"\nremember = true");
    assert!(load(CLUSTER, &[("echo", &ok)]).unwrap().topologies[0].kinds[0].remember);
    let bad = ECHO.replace("placement = \"sharded\"", "placement = \"singleton\"\nremember = true");
    let (_, text) = only_error(load(CLUSTER, &[("echo", &bad)]));
    assert!(text.contains("only sharded entities are remembered"), "{text}");
}

#[test]
fn tracing_defaults_and_a_bad_otlp_endpoint_says_how_to_write_it() {
    let l = load(CLUSTER, &[("echo", ECHO)]).unwrap();
    assert_eq!((l.cluster.tracing.retention_ms, l.cluster.tracing.otlp_endpoint.as_deref()), (86_400_000, None));
    assert_eq!(l.cluster.tracing.service_name, "troupe-t");
    let bad = format!("{CLUSTER}\n[tracing]\notlp_endpoint = \"https://collector:4318\"\n");
    let (_, text) = only_error(load(&bad, &[("echo", ECHO)]));
    assert!(text.contains("not an http:// URL") && text.contains("http://host:port/v1/traces"), "{text}");
}
