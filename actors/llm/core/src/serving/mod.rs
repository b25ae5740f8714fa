//! LLM serving's pure parts (system 01, docs/llm-serving.md), next to the engine so the
//! SDK, the lab and property tests use them without the runtime: the wire protocol
//! between gateway, router and workers (`proto`), the priority queue with aging
//! (`queue`), the circuit breaker (`breaker`), routing by session, prefix and load
//! (`route`), active/warm scaling decisions (`scale`) and the OpenAI API's request
//! parsing and response shapes (`openai`). The actor shells around them are
//! `troupe-llm-shell`. Time is an input everywhere; nothing here does I/O.

pub mod breaker;
pub mod openai;
pub mod proto;
pub mod queue;
pub mod route;
pub mod scale;
