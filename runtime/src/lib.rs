//! reef-run's command line and CNI side (conflist, chain, libcni cache, with their error and
//! log helpers) as a library: reef-docgen renders the man page and completions from the one
//! definition the binary parses with, and the fuzz targets parse conflists with the runtime's
//! own code. The runtime itself is the binary in `main.rs`.

pub mod cli;
pub mod cni;
pub mod error;
pub mod log;
