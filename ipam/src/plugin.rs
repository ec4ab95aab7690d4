//! The CNI verbs of reef-ipam over either store: the embedded local store (`ranges`), or the
//! cluster store on etcd (`etcd` + `nodeName`). Used by the `reef-ipam` binary and,
//! in-process, by Reef's main plugins (which saves a process start per ADD/DEL).

use crate::cluster::{ClusterError, ClusterIpamConfig, ClusterStore};
use crate::{Handle, IpamConfig, IpamError, LocalStore};
use reef_cni::ipam::InProcessIpam;
use reef_cni::{codes, CmdArgs, CniError, CniResult, Dns, IpConfig, Plugin, Route};
use reef_schema::WorkloadRecord;
use serde_json::Value;
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

/// The `reef-ipam` plugin.
pub struct ReefIpam;

/// The `ipam.type` that selects this plugin.
pub const PLUGIN_TYPE: &str = "reef-ipam";

fn ipam_err(e: IpamError) -> CniError {
    CniError::new(e.cni_code(), e.to_string())
}

fn ipam_section(args: &CmdArgs) -> Result<&Value, CniError> {
    args.conf
        .ipam
        .as_ref()
        .ok_or_else(|| CniError::invalid_config("missing ipam section"))
}

fn open(args: &CmdArgs) -> Result<(IpamConfig, LocalStore), CniError> {
    let cfg = IpamConfig::from_ipam_value(ipam_section(args)?)
        .map_err(|e| CniError::invalid_config(e.to_string()))?;
    let store = LocalStore::open(&cfg.data_dir, &args.conf.name).map_err(ipam_err)?;
    Ok((cfg, store))
}

/// The cluster store's section, when the config selects it.
fn cluster_config(args: &CmdArgs) -> Result<Option<ClusterIpamConfig>, CniError> {
    match ClusterIpamConfig::from_ipam_value(ipam_section(args)?) {
        None => Ok(None),
        Some(r) => r.map(Some).map_err(cluster_err),
    }
}

fn cluster_err(e: ClusterError) -> CniError {
    CniError::new(e.cni_code(), e.to_string())
}

/// Runs one cluster-store operation on its own runtime. When the caller is already inside a
/// runtime (reef-bridge calls IPAM in-process from async code), it runs on a short-lived
/// thread, because a runtime cannot block inside another.
fn with_cluster<T, F>(cfg: &ClusterIpamConfig, op: F) -> Result<T, CniError>
where
    T: Send,
    F: for<'a> FnOnce(
            &'a mut ClusterStore,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, ClusterError>> + Send + 'a>,
        > + Send,
{
    let run = move || -> Result<T, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::io("failed to start runtime", &e))?;
        rt.block_on(async {
            let mut store = ClusterStore::open(cfg).await?;
            op(&mut store).await
        })
        .map_err(cluster_err)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(run)
                .join()
                .unwrap_or_else(|_| Err(CniError::new(codes::INTERNAL, "IPAM thread panicked")))
        })
    } else {
        run()
    }
}

fn handle(args: &CmdArgs) -> Handle {
    Handle::new(args.container_id.clone(), args.ifname.clone())
}

/// The addresses the runtime says this attachment holds (libcni sends the cached result).
fn prev_ips(args: &CmdArgs) -> Vec<IpAddr> {
    args.conf
        .prev_result
        .as_ref()
        .map(|r| r.ips.iter().map(|i| i.address.ip()).collect())
        .unwrap_or_default()
}

fn routes(ipam: &Value) -> Result<Vec<Route>, CniError> {
    match ipam.get("routes") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|r| Route::from_json(r).map_err(|e| CniError::invalid_config(e.msg)))
            .collect(),
        Some(_) => Err(CniError::invalid_config("ipam.routes must be a list")),
    }
}

/// `resolvConf`: DNS settings read from a resolv.conf-format file, as host-local does.
fn dns_from_resolv_conf(ipam: &Value) -> Result<Dns, CniError> {
    let Some(path) = ipam.get("resolvConf").and_then(Value::as_str) else {
        return Ok(Dns::default());
    };
    // Bounded and type-checked: a FIFO or device named here must not hang the plugin.
    let bytes = reef_cni::file::read_bounded(Path::new(path), reef_cni::file::MAX_USER_FILE)
        .map_err(|e| {
            CniError::new(codes::IO, "failed to read resolvConf").with_details(e.to_string())
        })?;
    let text = String::from_utf8_lossy(&bytes);
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(String::from)),
            Some("domain") => dns.domain = words.next().map(String::from),
            Some("search") => dns.search = words.map(String::from).collect(),
            Some("options") => dns.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    Ok(dns)
}

impl InProcessIpam for ReefIpam {
    fn type_name(&self) -> &str {
        PLUGIN_TYPE
    }

    fn add_for(&self, args: &CmdArgs, host_interface: Option<&str>) -> Result<CniResult, CniError> {
        self.allocate(args, host_interface)
    }

    /// DEL that reports what it released: exactly the addresses this attachment still held,
    /// which in-process callers use to clean up only what is theirs.
    fn release(&self, args: &CmdArgs) -> Result<Vec<IpAddr>, CniError> {
        if let Some(cfg) = cluster_config(args)? {
            let (cid, ifn) = (args.container_id.clone(), args.ifname.clone());
            return with_cluster(&cfg, move |s| {
                Box::pin(async move { s.release(&cid, &ifn).await })
            });
        }
        let (_, store) = open(args)?;
        store
            .release(&handle(args), &prev_ips(args))
            .map_err(ipam_err)
    }

    /// GC that reports the addresses it released.
    fn collect_garbage(&self, args: &CmdArgs) -> Result<Vec<IpAddr>, CniError> {
        let valid: HashSet<Handle> = args
            .conf
            .valid_attachments()?
            .into_iter()
            .map(|(c, i)| Handle::new(c, i))
            .collect();
        if let Some(cfg) = cluster_config(args)? {
            let pairs: HashSet<(String, String)> = valid
                .into_iter()
                .map(|h| (h.container_id, h.ifname))
                .collect();
            return with_cluster(&cfg, move |s| Box::pin(async move { s.gc(&pairs).await }));
        }
        let (_, store) = open(args)?;
        let released = store.gc(&valid).map_err(ipam_err)?;
        for (ip, h) in &released {
            eprintln!(
                "reef-ipam: GC released {ip} held by {}/{}",
                h.container_id, h.ifname
            );
        }
        Ok(released.into_iter().map(|(ip, _)| ip).collect())
    }
}

/// The workload record of an attachment: Kubernetes identity from CNI_ARGS, labels from the
/// `labels` capability (runtimeConfig), and the host-side interface when the caller knows it.
pub fn workload_of(args: &CmdArgs, host_interface: Option<&str>) -> WorkloadRecord {
    let labels = args
        .conf
        .runtime_config
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    WorkloadRecord {
        node: String::new(),
        network: args.conf.name.clone(),
        container_id: args.container_id.clone(),
        ifname: args.ifname.clone(),
        ips: Vec::new(),
        namespace: args.arg("K8S_POD_NAMESPACE").map(String::from),
        name: args.arg("K8S_POD_NAME").map(String::from),
        labels,
        host_interface: host_interface.map(String::from),
    }
}

impl ReefIpam {
    /// ADD; in cluster mode the workload record (see `workload_of`) is written in the same
    /// transaction as the addresses.
    fn allocate(
        &self,
        args: &CmdArgs,
        host_interface: Option<&str>,
    ) -> Result<CniResult, CniError> {
        let section = ipam_section(args)?;
        let routes = routes(section)?;
        let dns = dns_from_resolv_conf(section)?;
        let ips: Vec<IpConfig> = if let Some(cfg) = cluster_config(args)? {
            let (cid, ifn) = (args.container_id.clone(), args.ifname.clone());
            let workload = workload_of(args, host_interface);
            with_cluster(&cfg, move |s| {
                Box::pin(async move { s.allocate_for(&cid, &ifn, Some(workload)).await })
            })?
            .into_iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: None,
            })
            .collect()
        } else {
            let (cfg, store) = open(args)?;
            store
                .allocate(&cfg, &handle(args))
                .map_err(ipam_err)?
                .into_iter()
                .map(|a| IpConfig {
                    address: a.address,
                    gateway: a.gateway,
                    interface: None,
                })
                .collect()
        };
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes,
            dns,
        })
    }
}

impl Plugin for ReefIpam {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        self.allocate(args, None)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.release(args).map(|_| ())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        if args.conf.prev_result.is_none() {
            return Err(CniError::invalid_config("CHECK needs prevResult"));
        }
        if let Some(cfg) = cluster_config(args)? {
            let (cid, ifn, want) = (
                args.container_id.clone(),
                args.ifname.clone(),
                prev_ips(args),
            );
            return with_cluster(&cfg, move |s| {
                Box::pin(async move { s.check(&cid, &ifn, &want).await })
            })
            .map_err(|e| match e.code {
                105 => CniError::new(codes::CHECK_FAILED, e.msg),
                _ => e,
            });
        }
        let (_, store) = open(args)?;
        store
            .check(&handle(args), &prev_ips(args))
            .map_err(|e| CniError::new(codes::CHECK_FAILED, e.to_string()))
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.collect_garbage(args).map(|_| ())
    }

    /// STATUS: any reason the store cannot serve an ADD is "plugin not available" (50).
    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        if let Some(cfg) = cluster_config(args)? {
            return with_cluster(&cfg, |s| Box::pin(async move { s.status().await }))
                .map_err(|e| CniError::new(codes::NOT_AVAILABLE, e.msg).with_details(e.details));
        }
        let (cfg, store) = open(args)
            .map_err(|e| CniError::new(codes::NOT_AVAILABLE, e.msg).with_details(e.details))?;
        store
            .status(&cfg)
            .map_err(|e| CniError::new(codes::NOT_AVAILABLE, e.to_string()))
    }
}
