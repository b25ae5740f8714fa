//! Topology files (`systems/*.toml`): the actor kinds of one system, where they are
//! placed, how they are supervised, their bounds and parameters, and the JSON routes
//! the runtime's gateway exposes for them. A topology holds no code: each kind names
//! a factory registered in code, and loading checks that it exists and accepts the
//! parameters.

use super::diag::{Diags, Doc, suggest};
use super::reader::Tbl;
use crate::supervision::policy::{Intensity, Strategy};
use std::path::PathBuf;
use troupe_wire::path::check_name;

/// A checked topology file: one system's actor kinds and HTTP routes.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The topology file itself.
    pub file: PathBuf,
    /// System name; the file must be named `<name>.toml`.
    pub name: String,
    /// Free-form description (`[system] description`), empty when absent.
    pub description: String,
    /// Other systems this one calls; they must be enabled too.
    pub requires: Vec<String>,
    /// How the system's supervisor treats its kind supervisors (`[system.supervision]`).
    pub supervision: SupervisionSpec,
    /// In declaration order, which is start order.
    pub kinds: Vec<KindSpec>,
    /// HTTP routes the gateway exposes for this system (`[[routes]]`).
    pub routes: Vec<RouteSpec>,
}

impl Topology {
    /// The kind named `name` in this system, if declared.
    pub fn kind(&self, name: &str) -> Option<&KindSpec> {
        self.kinds.iter().find(|k| k.name == name)
    }
}

/// Where a kind's actors live (the directory's, in `troupe-core`).
pub use troupe_core::directory::Placement;

/// The actor kinds a configuration may name: loading checks factories and their
/// params through this, without knowing the node (`KindRegistry` is the one the node
/// uses).
pub trait KindCatalog {
    /// Whether a kind named `factory` is registered.
    fn contains(&self, factory: &str) -> bool;
    /// Checks `params` for the registered kind `factory`.
    fn check_params(&self, factory: &str, params: &toml::Table) -> Result<(), String>;
    /// Every registered kind's name, for "did you mean".
    fn names(&self) -> Vec<&str>;
}

/// A `supervision` table: restart strategy and restart limits of one supervisor.
/// Defaults to one-for-one with the default intensity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SupervisionSpec {
    /// Which children restart when one fails (default `one_for_one`).
    pub strategy: Strategy,
    /// How many restarts within how long before the supervisor gives up, and the
    /// backoff between restarts (milliseconds).
    pub intensity: Intensity,
}

impl Default for SupervisionSpec {
    fn default() -> Self {
        Self { strategy: Strategy::OneForOne, intensity: Intensity::default() }
    }
}

/// One `[kinds.<name>]` table: an actor kind of a system, with its placement,
/// bounds, supervision and parameters (cluster overrides already merged in).
#[derive(Debug, Clone, PartialEq)]
pub struct KindSpec {
    /// The system this kind belongs to.
    pub system: String,
    /// Kind name, unique in its system.
    pub name: String,
    /// Name of the registered factory that builds its actors (default
    /// `<system>.<kind>`).
    pub factory: String,
    /// Singleton, per node or sharded (`placement`, required).
    pub placement: Placement,
    /// Nodes eligible to host it (by role); `None` = every node.
    pub role: Option<String>,
    /// Messages one actor's mailbox holds; beyond that sends fail with
    /// `MailboxFull` (default 1024).
    pub mailbox_cap: u64,
    /// Sharded entities idle this long are stopped (their state is durable).
    pub passivate_after_ms: Option<u64>,
    /// Remembered entities (`remember = true`, sharded kinds only): an entity that
    /// started and did not passivate is started again on its new owner when its node
    /// dies, and on its owner when the whole cluster restarts, without waiting for a
    /// message ([`crate::remember`]).
    pub remember: bool,
    /// Copies of each durable write, this node included, before it is acknowledged.
    pub replication_factor: u64,
    /// How the kind's supervisor restarts its actors (`[kinds.<name>.supervision]`).
    pub supervision: SupervisionSpec,
    /// Parameters handed to the factory, checked by it at load time.
    pub params: toml::Table,
    /// Which certificate roles besides cluster nodes may tell, ask or stream this
    /// kind through a node (`allow = ["client", "admin"]`, the default; `["admin"]`
    /// for operator-only kinds; `[]` for nodes only). Others get `Unauthorized`.
    pub allow: Vec<String>,
}

/// The roles a kind's `allow` may name (nodes are always allowed).
pub const ROLES: [&str; 2] = ["client", "admin"];

impl KindSpec {
    /// The key of the one actor of a singleton kind (also a route's default key).
    pub fn singleton_key() -> &'static str {
        troupe_core::directory::SINGLETON_KEY
    }

    /// What the directory needs to know of this kind.
    pub fn place(&self) -> troupe_core::directory::Kind<'_> {
        troupe_core::directory::Kind {
            system: &self.system,
            name: &self.name,
            placement: self.placement,
            role: self.role.as_deref(),
            rf: self.replication_factor,
        }
    }
}

/// One `[[routes]]` table: an HTTP route of the gateway that sends a message to an
/// actor of this system and answers with its reply as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// HTTP method, upper case: GET, POST, PUT, DELETE or PATCH.
    pub method: String,
    /// axum syntax: `/kv/{key}`.
    pub path: String,
    /// The kind of this system the message goes to.
    pub kind: String,
    /// Template for the entity key, from path parameters: `{key}`.
    pub key: String,
    /// The message variant to send; the body's fields and the path parameters fill it.
    pub message: String,
    /// Whether the JSON body fills the message's fields.
    pub body: bool,
    /// The credential a caller must present (`auth = "none" | "service" | "admin"`);
    /// by default none for GET and the service token for every other method.
    pub auth: Option<crate::cluster::tokens::Role>,
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn supervision(t: Option<Tbl<'_>>) -> SupervisionSpec {
    let Some(t) = t else {
        return SupervisionSpec::default();
    };
    let d = Intensity::default();
    let strategy = match t.opt_str("strategy") {
        None => Strategy::OneForOne,
        Some(s) => Strategy::parse(&s).unwrap_or_else(|| {
            t.error(
                "strategy",
                format!("unknown supervision strategy `{s}`"),
                Some(suggest(&s, Strategy::NAMES, "strategies")),
            );
            Strategy::OneForOne
        }),
    };
    let intensity = Intensity {
        max_restarts: t.u64_in("max_restarts", d.max_restarts as u64, 0, 10_000, "restarts") as u32,
        within_ms: t.u64_in("within_ms", d.within_ms, 1, 86_400_000, "milliseconds"),
        backoff_initial_ms: t.u64_in("backoff_initial_ms", d.backoff_initial_ms, 0, 600_000, "milliseconds"),
        backoff_max_ms: t.u64_in("backoff_max_ms", d.backoff_max_ms, 0, 3_600_000, "milliseconds"),
    };
    if intensity.backoff_initial_ms > intensity.backoff_max_ms {
        t.error(
            "backoff_initial_ms",
            "backoff_initial_ms is larger than backoff_max_ms",
            Some("the backoff doubles from the initial value up to the max".into()),
        );
    }
    t.finish();
    SupervisionSpec { strategy, intensity }
}

/// Reads and checks one topology file against the registered kinds. `overrides` is
/// the cluster file's `[overrides.<system>]` table.
pub fn load_topology(
    doc: &Doc,
    diags: &Diags,
    kinds: &dyn KindCatalog,
    overrides: Option<&toml::Table>,
) -> Option<Topology> {
    let root = Tbl::root(doc, diags);
    let Some(sys) = root.table("system") else {
        doc.error(
            diags,
            "",
            "the topology file has no [system] table",
            Some("add [system] with `name` and `description`".into()),
        );
        return None;
    };
    let name = sys.req_str("name").unwrap_or_default();
    if !name.is_empty()
        && let Err(e) = check_name("system name", &name)
    {
        sys.error("name", e.to_string(), None);
    }
    let stem = doc.file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if !name.is_empty() && stem != name {
        sys.error(
            "name",
            format!("system `{name}` is in file `{stem}.toml`"),
            Some(format!("name the file `{name}.toml` or the system `{stem}`")),
        );
    }
    let description = sys.opt_str("description").unwrap_or_default();
    let requires = sys.strs("requires");
    let sup = supervision(sys.table("supervision"));
    sys.finish();

    let mut kind_specs = Vec::new();
    match root.table("kinds") {
        None => doc.error(
            diags,
            "system",
            format!("system `{name}` declares no actor kinds"),
            Some("add a [kinds.<name>] table with `factory` and `placement`".into()),
        ),
        Some(ks) => {
            for kname in ks.table.keys() {
                let Some(k) = ks.table(kname) else { continue };
                if let Err(e) = check_name("kind name", kname) {
                    doc.key_error(diags, &k.path, e.to_string(), None);
                }
                let factory = k.opt_str("factory").unwrap_or_else(|| format!("{name}.{kname}"));
                let known_kind = kinds.contains(&factory);
                if !known_kind {
                    let known = kinds.names();
                    let at = if k.has("factory") { "factory" } else { "" };
                    let msg = format!("unknown actor kind `{factory}`");
                    let help = Some(suggest(&factory, known.iter().copied(), "registered kinds"));
                    if at.is_empty() { doc.key_error(diags, &k.path, msg, help) } else { k.error(at, msg, help) }
                }
                let placement = match k.req_str("placement").as_deref() {
                    None => Placement::Sharded,
                    Some("singleton") => Placement::Singleton,
                    Some("per_node") => Placement::PerNode,
                    Some("sharded") => Placement::Sharded,
                    Some(other) => {
                        k.error(
                            "placement",
                            format!("unknown placement `{other}`"),
                            Some(suggest(other, Placement::NAMES, "placements")),
                        );
                        Placement::Sharded
                    }
                };
                let role = k.opt_str("role");
                let mailbox_cap = k.u64_in("mailbox_cap", 1024, 1, 1 << 24, "messages");
                let passivate_after_ms = k.opt_u64_in("passivate_after_ms", 100, 86_400_000, "milliseconds");
                if passivate_after_ms.is_some() && placement != Placement::Sharded {
                    k.error(
                        "passivate_after_ms",
                        "only sharded entities are passivated",
                        Some("remove passivate_after_ms or use placement = \"sharded\"".into()),
                    );
                }
                let remember = k.bool("remember", false);
                if remember && placement != Placement::Sharded {
                    k.error(
                        "remember",
                        "only sharded entities are remembered (singletons and per-node actors always run)",
                        Some("remove remember or use placement = \"sharded\"".into()),
                    );
                }
                let replication_factor = k.u64_in("replication_factor", 1, 1, 7, "copies");
                let allow =
                    if k.has("allow") { k.strs("allow") } else { ROLES.iter().map(|r| r.to_string()).collect() };
                for r in &allow {
                    if !ROLES.contains(&r.as_str()) {
                        k.error(
                            "allow",
                            format!("unknown role `{r}` (cluster nodes are always allowed)"),
                            Some(suggest(r, ROLES, "roles")),
                        );
                    }
                }
                let supervision_spec = supervision(k.table("supervision"));
                let mut params = match k.raw("params") {
                    None => toml::Table::new(),
                    Some(toml::Value::Table(t)) => t.clone(),
                    Some(v) => {
                        k.error("params", format!("`params` must be a table, not {}", v.type_str()), None);
                        toml::Table::new()
                    }
                };
                if let Some(toml::Value::Table(o)) = overrides.and_then(|o| o.get(kname)) {
                    for (key, v) in o {
                        params.insert(key.clone(), v.clone());
                    }
                }
                if known_kind && let Err(e) = kinds.check_params(&factory, &params) {
                    let help = Some(format!("see the parameters of `{factory}` in docs/ (the kind's params struct)"));
                    k.error("params", format!("bad params for `{factory}`: {e}"), help);
                }
                k.finish();
                kind_specs.push(KindSpec {
                    system: name.clone(),
                    name: kname.clone(),
                    factory,
                    placement,
                    role,
                    mailbox_cap,
                    passivate_after_ms,
                    remember,
                    replication_factor,
                    supervision: supervision_spec,
                    params,
                    allow,
                });
            }
            ks.finish();
        }
    }

    let mut routes = Vec::new();
    for r in root.tables("routes") {
        let method = r.req_str("method").unwrap_or_default().to_ascii_uppercase();
        if !method.is_empty() && !METHODS.contains(&method.as_str()) {
            r.error("method", format!("unknown HTTP method `{method}`"), Some(suggest(&method, METHODS, "methods")));
        }
        let path = r.req_str("path").unwrap_or_default();
        if !path.starts_with('/') || path.contains("/:") {
            r.error("path", format!("route path `{path}` must start with `/` and use `{{param}}` segments"), None);
        }
        let kind = r.req_str("kind").unwrap_or_default();
        if !kind.is_empty() && !kind_specs.iter().any(|k| k.name == kind) {
            r.error(
                "kind",
                format!("route targets unknown kind `{kind}`"),
                Some(suggest(&kind, kind_specs.iter().map(|k| k.name.as_str()), "kinds of this system")),
            );
        }
        let key = r.opt_str("key").unwrap_or_else(|| KindSpec::singleton_key().into());
        for param in template_params(&key) {
            if !path.contains(&format!("{{{param}}}")) {
                r.error("key", format!("key template uses `{{{param}}}`, which the path does not have"), None);
            }
        }
        let message = r.req_str("message").unwrap_or_default();
        let body = r.bool("body", matches!(method.as_str(), "POST" | "PUT" | "PATCH"));
        use crate::cluster::tokens::Role;
        let default_auth = if method == "GET" { "none" } else { "service" };
        let auth = match r.opt_str("auth").as_deref().unwrap_or(default_auth) {
            "none" => None,
            "service" => Some(Role::Service),
            "admin" => Some(Role::Admin),
            other => {
                r.error(
                    "auth",
                    format!("unknown credential `{other}`"),
                    Some(suggest(other, ["none", "service", "admin"], "credentials")),
                );
                None
            }
        };
        r.finish();
        routes.push(RouteSpec { method, path, kind, key, message, body, auth });
    }
    root.finish();
    Some(Topology { file: doc.file.clone(), name, description, requires, supervision: sup, kinds: kind_specs, routes })
}

/// The `{name}` parameters of a template.
pub fn template_params(t: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push(&rest[open + 1..open + close]);
        rest = &rest[open + close + 1..];
    }
    out
}
