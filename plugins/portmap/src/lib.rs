//! reef-portmap's configuration (port mappings and the pod's addresses from prevResult), as
//! a library so the fuzz targets parse it with the plugin's own code (the plugin itself is
//! the binary in `main.rs`).

pub mod config;
