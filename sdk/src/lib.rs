//! troupe-client: the SDK (lands with the client issue).
