//! A cancellable token stream over one request, for callers that want an
//! iterator (the CLI) rather than driving `Engine::step` themselves. Cancelling
//! from another thread (e.g. Ctrl-C) takes effect at the next step boundary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::{Engine, StepOutput};
use crate::{EngineError, RequestId, SamplingParams};

#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct TokenStream<'e> {
    engine: &'e mut Engine,
    id: RequestId,
    cancel: CancelToken,
    done: bool,
}

impl<'e> TokenStream<'e> {
    pub fn new(
        engine: &'e mut Engine,
        id: RequestId,
        prompt: Vec<u32>,
        params: SamplingParams,
        cancel: CancelToken,
    ) -> Result<TokenStream<'e>, EngineError> {
        engine.add_request(id, prompt, params, 0)?;
        Ok(TokenStream { engine, id, cancel, done: false })
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<StepOutput, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.cancel.is_cancelled() {
                self.engine.cancel(self.id);
            }
            let outs = match self.engine.step() {
                Ok(o) => o,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if let Some(o) = outs.into_iter().find(|o| o.id == self.id) {
                self.done = o.finished.is_some();
                return Some(Ok(o));
            }
            if !self.engine.has_work() {
                self.done = true;
            }
        }
        None
    }
}
