//! The `--etcd*` flags shared by reef-agent and reefctl (feature `cli`).

use crate::{EtcdConfig, TlsFiles};
use std::path::PathBuf;

/// How to reach etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated.
    #[arg(long, env = "REEF_ETCD", value_delimiter = ',', global = true)]
    pub etcd: Vec<String>,
    /// CA certificate to verify etcd's server certificate.
    #[arg(long, global = true)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (with --etcd-key) for etcd's client-cert-auth.
    #[arg(long, global = true)]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, global = true)]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    pub fn config(&self) -> EtcdConfig {
        let tls = (self.etcd_ca.is_some() || self.etcd_cert.is_some()).then(|| TlsFiles {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        });
        EtcdConfig {
            endpoints: self.etcd.clone(),
            tls,
        }
    }
}
