//! Benchmark driver (work in progress).
