//! Fault class tests: see `tests/faults.rs`.
