//! Keel write-ahead log (work in progress).
