//! reef-run's CNI side (conflist, chain, libcni cache) with its error and log helpers, as a
//! library so the fuzz targets parse conflists with the runtime's own code (the runtime
//! itself is the binary in `main.rs`).

pub mod cni;
pub mod error;
pub mod log;
