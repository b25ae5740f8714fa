//! The actor-kind registry: factories registered in code, named by topology files.
//!
//! A factory checks a kind's parameters at config load time (so a bad value is a
//! config error with a line number, not a crash at start), builds the behavior once
//! per node, and starts incarnations of it.

use crate::actor::{Behavior, FromParams, Shell, ShellArgs};
use crate::config::KindSpec;
use crate::node::{KindFactory, KindInstance, KindRegistry, Node};
use crate::slot::{ErasedSlot, LocalSlot};
use crate::stats::ActorEntry;
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell};
use std::marker::PhantomData;
use std::sync::Arc;
use troupe_wire::{ActorPath, JsonCodec, JsonOf, Protocol};

struct BehaviorFactory<B: Behavior + FromParams> {
    name: String,
    json: JsonOf<B::Proto>,
    _b: PhantomData<fn() -> B>,
}

fn parse_params<B: FromParams>(params: &toml::Table) -> Result<B::Params, String> {
    toml::Value::Table(params.clone()).try_into::<B::Params>().map_err(|e| e.message().to_string())
}

impl<B: Behavior + FromParams> KindFactory for BehaviorFactory<B> {
    fn name(&self) -> &str {
        &self.name
    }
    fn json(&self) -> &dyn JsonCodec {
        &self.json
    }
    fn check_params(&self, params: &toml::Table) -> Result<(), String> {
        B::check(&parse_params::<B>(params)?)
    }
    fn instantiate(&self, node: &Node, spec: Arc<KindSpec>) -> Result<Arc<dyn KindInstance>, String> {
        let behavior = B::from_params(parse_params::<B>(&spec.params)?, &spec, node)?;
        Ok(Arc::new(BehaviorInstance { behavior: Arc::new(behavior), spec }))
    }
}

struct BehaviorInstance<B: Behavior> {
    behavior: Arc<B>,
    spec: Arc<KindSpec>,
}

impl<B: Behavior> KindInstance for BehaviorInstance<B> {
    fn spec(&self) -> &Arc<KindSpec> {
        &self.spec
    }
    fn new_slot(&self, path: ActorPath, entry: Arc<ActorEntry>) -> Arc<dyn ErasedSlot> {
        Arc::new(LocalSlot::<B::Proto>::new(path, entry))
    }
    fn start(
        &self,
        node: Node,
        slot: Arc<dyn ErasedSlot>,
        supervisor: ActorCell,
    ) -> BoxFuture<'static, Result<ActorCell, String>> {
        let behavior = self.behavior.clone();
        let spec = self.spec.clone();
        Box::pin(async move {
            let path = slot.path().clone();
            let slot = slot
                .as_any()
                .downcast::<LocalSlot<B::Proto>>()
                .map_err(|_| format!("slot of {path} has another protocol than `{}`", B::Proto::NAME))?;
            let args = ShellArgs { node, path, spec, slot };
            let (actor, _join) =
                Shell { behavior }.spawn_linked_erased(args, supervisor).await.map_err(|e| e.to_string())?;
            Ok(actor)
        })
    }
}

impl<B: Behavior> Shell<B> {
    async fn spawn_linked_erased(
        self,
        args: ShellArgs<B::Proto>,
        supervisor: ActorCell,
    ) -> Result<(ActorCell, ractor::concurrency::JoinHandle<()>), ractor::SpawnErr> {
        let (r, j) = Actor::spawn_linked(None, self, args, supervisor).await?;
        Ok((r.get_cell(), j))
    }
}

impl KindRegistry {
    /// Registers behavior `B` under `name` (e.g. `kv.store`).
    pub fn register<B: Behavior + FromParams>(&mut self, name: &str) -> &mut Self {
        let f = BehaviorFactory::<B> { name: name.to_string(), json: JsonOf::new(), _b: PhantomData };
        self.map.insert(name.to_string(), Arc::new(f));
        self
    }
}
