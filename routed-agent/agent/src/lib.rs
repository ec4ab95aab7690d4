//! reef-agent: the per-host daemon of a Reef cluster. It registers the node, keeps a lease as
//! its heartbeat, watches the cluster state in etcd and programs the kernel to match it, one
//! manager per concern (see [`managers`]).

pub mod log;

pub mod agent;
pub mod cli;
pub mod desired;
pub mod error;
pub mod managers;
pub mod metrics;
pub mod problem;
pub mod reconcile;
pub mod registry;
pub mod serve;
pub mod underlay;
pub mod view;
