//! Cluster membership and transport. Not constructed yet: until a node joins a cluster
//! (SWIM + QUIC, next commits) every path resolves to this node and remote calls
//! report `Unreachable`.
use crate::node::Node;
use crate::placement::Candidate;
use crate::reply::ReplyStream;
use crate::store::{Recovered, StoreError, WriteOp};
use std::time::Duration;
use troupe_wire::introspect::{ChaosCommand, MemberInfo, Metric};
use troupe_wire::{ActorPath, RemoteError, RequestKind, TraceId};

pub struct Cluster;

impl Cluster {
    pub fn candidates(&self) -> Vec<Candidate> {
        vec![]
    }
    pub fn members(&self) -> Vec<MemberInfo> {
        vec![]
    }
    pub fn metrics(&self) -> Vec<Metric> {
        vec![]
    }
    pub fn chaos(&self, _c: ChaosCommand) -> String {
        String::new()
    }
    pub async fn shutdown(&self) {}
    pub fn send(
        &self,
        node: &str,
        _p: &ActorPath,
        _k: RequestKind,
        _t: TraceId,
        _b: Vec<u8>,
    ) -> Result<(), RemoteError> {
        Err(RemoteError::Unreachable { node: node.into(), reason: String::new() })
    }
    pub async fn ask(
        &self,
        node: &str,
        _p: &ActorPath,
        _t: TraceId,
        _b: Vec<u8>,
        _d: Duration,
    ) -> Result<Vec<u8>, RemoteError> {
        Err(RemoteError::Unreachable { node: node.into(), reason: String::new() })
    }
    pub fn stream<R: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        _p: &ActorPath,
        _t: TraceId,
        _b: Vec<u8>,
    ) -> Result<ReplyStream<R>, RemoteError> {
        Err(RemoteError::Unreachable { node: node.into(), reason: String::new() })
    }
    pub async fn replicate(&self, node: &Node, _p: &ActorPath, _rf: u64, op: WriteOp) -> Result<(), StoreError> {
        node.store().write(vec![op]).await
    }
    pub async fn recover(&self, node: &Node, p: &ActorPath) -> Result<Recovered, StoreError> {
        node.store().load(&p.to_string())
    }
}
