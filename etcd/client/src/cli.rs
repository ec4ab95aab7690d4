//! The `--etcd*` flags shared by reef-agent and reefctl (feature `cli`).

use crate::{EtcdConfig, TlsFiles};
use std::path::PathBuf;

/// How to reach etcd.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated, e.g. http://10.0.0.5:2379 (required: this flag or
    /// $REEF_ETCD).
    #[arg(
        long,
        env = "REEF_ETCD",
        value_delimiter = ',',
        global = true,
        value_name = "URL,..."
    )]
    pub etcd: Vec<String>,
    /// CA certificate (PEM) to verify etcd's server certificate (https endpoints).
    #[arg(long, global = true, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM, with --etcd-key) for etcd's --client-cert-auth.
    #[arg(long, global = true, value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of the --etcd-cert client certificate.
    #[arg(long, global = true, value_name = "FILE")]
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
