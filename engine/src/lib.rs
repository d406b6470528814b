//! Keel storage engine: a multi-group raft log store and a memtable key-value store (work in progress).
