//! The directory: which node owns a path and which nodes hold its durable state, as a
//! pure function of a kind's placement, the cluster file's roster and the live view.
//!
//! The node shell ([`troupe-runtime`'s `Node::owner_of`]) and the simulator call the
//! same functions, so what the simulator finds about ownership under partitions holds
//! for the real node.
//!
//! A replicated kind (`rf` > 1) keeps each path on a fixed replica set: the first
//! `rf` eligible nodes of the cluster file's roster in the path's rendezvous order,
//! whoever is live. Its owner is the first member of that set that is live in the
//! view; when none is, the path is unavailable (it does not move to a node that holds
//! no copy). Writes need a majority of the set ([`crate::replication`]), so the set
//! never shrinks to what one side of a partition sees.
//!
//! **Invariant:** two nodes with the same view compute the same owner; every node
//! computes the same replica set (placement's hash is fixed, the roster is the
//! cluster file); a per-node path is owned by the node it names whatever the view
//! says (it is that node's agent, alive or not).

use crate::placement::{self, Candidate};
use std::borrow::Cow;
use troupe_wire::{ActorPath, RemoteError};

/// Where a kind's actors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// One instance in the cluster (key `main`), moved when its node dies.
    Singleton,
    /// One instance on every node that has `role` (all nodes when `None`); the key is
    /// the node name.
    PerNode,
    /// Keyed entities, activated on first message on the owner of the key.
    Sharded,
}

impl Placement {
    pub const NAMES: [&'static str; 3] = ["singleton", "per_node", "sharded"];
}

/// The key of a singleton.
pub const SINGLETON_KEY: &str = "main";

/// What the directory needs to know of a kind.
#[derive(Debug, Clone, Copy)]
pub struct Kind<'a> {
    pub system: &'a str,
    pub name: &'a str,
    pub placement: Placement,
    /// Nodes eligible to host it (by role); `None` = every node.
    pub role: Option<&'a str>,
    /// Copies of each path's durable state (1: not replicated).
    pub rf: u64,
}

/// The nodes of the cluster file (not the live view): per-node paths name them, and
/// replica sets are drawn from them.
pub trait Roster {
    /// The roles of `node`, or `None` when the cluster has no such node.
    fn roles(&self, node: &str) -> Option<&[String]>;
    /// Every node of the cluster: (name, roles, placement weight).
    fn members(&self) -> Vec<(&str, &[String], f64)>;
}

/// The string placement hashes for `path`: a singleton hashes its kind, so every
/// key a caller might misspell still lands on one node.
pub fn placement_key<'p>(kind: &Kind<'_>, path: &'p ActorPath) -> Cow<'p, str> {
    match kind.placement {
        Placement::Singleton => Cow::Owned(format!("/{}/{}", kind.system, kind.name)),
        _ => Cow::Borrowed(path.as_str()),
    }
}

fn unknown(path: &ActorPath, reason: String) -> RemoteError {
    RemoteError::UnknownPath { path: path.to_string(), reason }
}

fn nobody(key: &str) -> RemoteError {
    RemoteError::Unreachable { node: "-".into(), reason: format!("no live node can host {key}") }
}

/// The node that owns `path` in the view `live`.
pub fn owner_of(
    kind: &Kind<'_>,
    path: &ActorPath,
    live: &[Candidate],
    roster: &dyn Roster,
) -> Result<String, RemoteError> {
    match kind.placement {
        Placement::PerNode => {
            let node = path.key().split('.').next().unwrap_or("");
            let roles = roster.roles(node).ok_or_else(|| unknown(path, format!("no node `{node}` in the cluster")))?;
            if let Some(r) = kind.role
                && !roles.iter().any(|x| x == r)
            {
                return Err(unknown(path, format!("node `{node}` does not have role `{r}`")));
            }
            Ok(node.to_string())
        }
        Placement::Singleton | Placement::Sharded => {
            if kind.placement == Placement::Singleton && path.key() != SINGLETON_KEY {
                return Err(unknown(path, format!("`{}` is a singleton; its key is `{SINGLETON_KEY}`", kind.name)));
            }
            let key = placement_key(kind, path);
            if kind.rf > 1 {
                let set = fixed_set(kind, &key, roster);
                return set.iter().find(|n| live.iter().any(|c| c.name == **n)).map(|n| n.to_string()).ok_or_else(
                    || RemoteError::Unreachable {
                        node: "-".into(),
                        reason: format!("none of the replicas of {key} ({}) is live", set.join(", ")),
                    },
                );
            }
            placement::owner(&key, live, kind.role).map(|c| c.name.clone()).ok_or_else(|| nobody(&key))
        }
    }
}

fn fixed_set<'r>(kind: &Kind<'_>, key: &str, roster: &'r dyn Roster) -> Vec<&'r str> {
    placement::top(key, roster.members().into_iter(), kind.role, kind.rf.max(1) as usize)
}

/// The nodes that hold `path`'s durable state: the first `rf` eligible nodes of the
/// roster in its rendezvous order (fewer when the cluster has fewer), live or not.
/// The owner in any view is one of them ([`owner_of`]); the order is the roster's,
/// not owner first.
pub fn replica_set(kind: &Kind<'_>, path: &ActorPath, roster: &dyn Roster) -> Vec<String> {
    if kind.placement == Placement::PerNode {
        return vec![path.key().split('.').next().unwrap_or("").to_string()];
    }
    fixed_set(kind, &placement_key(kind, path), roster).into_iter().map(str::to_string).collect()
}

/// Votes needed among a replica set of `n` nodes: a strict majority, so two sides of
/// any partition never both have one.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Where a path is to be served from, seen from node `me`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `me` owns it: serve (activating it first if it is not running).
    Here,
    /// Another node owns it.
    Remote(String),
}

/// Routes `path` from `me`: its owner in the view, or here.
pub fn route(
    me: &str,
    kind: &Kind<'_>,
    path: &ActorPath,
    live: &[Candidate],
    roster: &dyn Roster,
) -> Result<Route, RemoteError> {
    let owner = owner_of(kind, path, live, roster)?;
    Ok(if owner == me { Route::Here } else { Route::Remote(owner) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Book(BTreeMap<String, Vec<String>>);
    impl Roster for Book {
        fn roles(&self, node: &str) -> Option<&[String]> {
            self.0.get(node).map(Vec::as_slice)
        }
        fn members(&self) -> Vec<(&str, &[String], f64)> {
            self.0.iter().map(|(n, r)| (n.as_str(), r.as_slice(), 1.0)).collect()
        }
    }

    fn cand(name: &str, roles: &[&str]) -> Candidate {
        Candidate { name: name.into(), roles: roles.iter().map(|r| r.to_string()).collect(), weight: 1.0 }
    }

    fn world() -> (Book, Vec<Candidate>) {
        let live = vec![cand("n1", &["gpu"]), cand("n2", &[]), cand("n3", &["gpu"])];
        let book = Book(live.iter().map(|c| (c.name.clone(), c.roles.clone())).collect());
        (book, live)
    }

    const SHARDED: Kind<'static> = Kind { system: "s", name: "k", placement: Placement::Sharded, role: None, rf: 1 };

    #[test]
    fn a_replica_set_is_fixed_and_its_owner_is_its_first_live_member() {
        let (book, live) = world();
        let rf3 = Kind { rf: 3, ..SHARDED };
        let rf2 = Kind { rf: 2, ..SHARDED };
        for i in 0..50 {
            let p = ActorPath::new("s", "k", &format!("key{i}")).unwrap();
            let set = replica_set(&rf2, &p, &book);
            assert_eq!(set.len(), 2);
            assert_ne!(set[0], set[1]);
            assert_eq!(replica_set(&Kind { rf: 9, ..SHARDED }, &p, &book).len(), 3, "capped by the roster");
            // With everyone live, the owner is the unreplicated owner and heads the set.
            assert_eq!(owner_of(&rf2, &p, &live, &book).unwrap(), owner_of(&SHARDED, &p, &live, &book).unwrap());
            assert_eq!(owner_of(&rf2, &p, &live, &book).unwrap(), set[0]);
            // The set does not follow the view: with its first member down, the next
            // member owns; with both down, nobody does (the third node holds no copy).
            let without = |gone: &[&String]| -> Vec<Candidate> {
                live.iter().filter(|c| !gone.contains(&&c.name)).cloned().collect()
            };
            assert_eq!(replica_set(&rf2, &p, &book), set);
            assert_eq!(owner_of(&rf2, &p, &without(&[&set[0]]), &book).unwrap(), set[1]);
            let err = owner_of(&rf2, &p, &without(&[&set[0], &set[1]]), &book).unwrap_err();
            assert!(err.to_string().contains("none of the replicas"), "{err}");
            // rf 3 of 3 nodes: every node holds a copy.
            assert_eq!(replica_set(&rf3, &p, &book).len(), 3);
        }
        assert_eq!((majority(1), majority(2), majority(3), majority(4), majority(5)), (1, 2, 2, 3, 3));
    }

    #[test]
    fn roles_and_singletons_and_per_node_paths() {
        let (book, live) = world();
        let gpu = Kind { role: Some("gpu"), ..SHARDED };
        for i in 0..20 {
            let p = ActorPath::new("s", "k", &format!("key{i}")).unwrap();
            assert_ne!(owner_of(&gpu, &p, &live, &book).unwrap(), "n2");
        }
        let single = Kind { placement: Placement::Singleton, ..SHARDED };
        let wrong = ActorPath::new("s", "k", "other").unwrap();
        assert!(matches!(owner_of(&single, &wrong, &live, &book), Err(RemoteError::UnknownPath { .. })));
        let per = Kind { placement: Placement::PerNode, role: Some("gpu"), ..SHARDED };
        let n2 = ActorPath::new("s", "k", "n2").unwrap();
        let err = owner_of(&per, &n2, &live, &book).unwrap_err();
        assert!(err.to_string().contains("does not have role `gpu`"), "{err}");
        // A per-node path belongs to its node even while the view has nobody.
        let n3 = ActorPath::new("s", "k", "n3").unwrap();
        assert_eq!(owner_of(&per, &n3, &[], &book).unwrap(), "n3");
        assert_eq!(route("n1", &per, &n3, &live, &book).unwrap(), Route::Remote("n3".into()));
        assert!(matches!(owner_of(&SHARDED, &n3, &[], &book), Err(RemoteError::Unreachable { .. })));
    }
}
