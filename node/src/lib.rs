//! Keel consensus node (work in progress).
