//! The `kv` system's wire protocols: what a client sends to `kv.store` (one durable,
//! replicated entity per key) and `kv.ranges` (a singleton handing out disjoint ranges
//! of named counters). No I/O and no runtime here, so the SDK can speak them.

/// `kv.store`: one entity per key.
pub mod store {
    use serde::{Deserialize, Serialize};
    use troupe_wire::Protocol;

    pub struct KvStore;

    impl Protocol for KvStore {
        type Msg = KvMsg;
        type Reply = KvReply;
        const NAME: &'static str = "kv.store";
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum KvMsg {
        Get,
        Put {
            value: String,
        },
        Delete,
        /// Adds `by` to the value read as an integer (missing = 0).
        Incr {
            by: i64,
        },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum KvReply {
        Value { value: Option<String>, version: u64 },
        Written { version: u64 },
        Deleted { existed: bool, version: u64 },
        Counter { value: i64, version: u64 },
    }
}

/// `kv.ranges`: disjoint ranges of named counters.
pub mod ranges {
    use serde::{Deserialize, Serialize};
    use troupe_wire::Protocol;

    pub struct Ranges;

    impl Protocol for Ranges {
        type Msg = RangesMsg;
        type Reply = RangesReply;
        const NAME: &'static str = "kv.ranges";
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum RangesMsg {
        /// Reserve `size` numbers of counter `name`.
        Allocate { name: String, size: u64 },
        /// The next number of `name`, without reserving it.
        Peek { name: String },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum RangesReply {
        /// `start..end` is yours. `node` is where the singleton runs.
        Range {
            start: u64,
            end: u64,
            node: String,
        },
        Next {
            next: u64,
            node: String,
        },
    }
}
