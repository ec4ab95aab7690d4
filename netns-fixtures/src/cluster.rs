//! Ready-made topologies: one underlay with N hosts (+ etcd), or two routed underlays.

use std::io;

use crate::{EtcdHost, Router, SimHost, TlsMaterial, Underlay};

/// Subnet of the first underlay of a [`Cluster`].
pub const SUBNET_A: &str = "198.18.1.0/24";
/// Subnet of the second underlay of [`Cluster::two_subnets`].
pub const SUBNET_B: &str = "198.18.2.0/24";

/// A set of simulated hosts, all owned here and torn down on drop (etcd first, then hosts,
/// routers, underlays, TLS files).
///
/// Subnets are the fixed [`SUBNET_A`] / [`SUBNET_B`] in every instance: each cluster's
/// namespaces are private to it, so parallel clusters cannot clash, and fixed addresses make
/// failures easier to read.
///
/// Hosts are named `h1`, `h2`, ... and get .1, .2, ... in order; the etcd host (if any) is
/// added after them (so it has the next address), routers have .254.
#[derive(Debug)]
pub struct Cluster {
    pub etcd: Option<EtcdHost>,
    pub hosts: Vec<SimHost>,
    pub routers: Vec<Router>,
    pub underlays: Vec<Underlay>,
    pub tls: Option<TlsMaterial>,
}

impl Cluster {
    /// One underlay ([`SUBNET_A`]) with `hosts` hosts and, if `with_etcd`, a plain-HTTP etcd
    /// host.
    pub fn new(hosts: usize, with_etcd: bool) -> io::Result<Cluster> {
        let mut cluster = Cluster::empty(vec![Underlay::new(SUBNET_A)?]);
        cluster.add_hosts(0, hosts)?;
        if with_etcd {
            cluster.start_etcd(false)?;
        }
        Ok(cluster)
    }

    /// Like [`Cluster::new`] with etcd, but etcd requires TLS client certificates; the
    /// material is in [`Cluster::tls`].
    pub fn with_tls_etcd(hosts: usize) -> io::Result<Cluster> {
        let mut cluster = Cluster::empty(vec![Underlay::new(SUBNET_A)?]);
        cluster.add_hosts(0, hosts)?;
        cluster.start_etcd(true)?;
        Ok(cluster)
    }

    /// Two underlays ([`SUBNET_A`], [`SUBNET_B`]) joined by a router, `per_subnet` hosts on
    /// each: `hosts[..per_subnet]` on A, `hosts[per_subnet..]` on B. Every host can reach the
    /// other subnet through the router. No etcd; add one with [`Cluster::start_etcd`].
    pub fn two_subnets(per_subnet: usize) -> io::Result<Cluster> {
        let mut a = Underlay::new(SUBNET_A)?;
        let mut b = Underlay::new(SUBNET_B)?;
        let router = Router::join(&mut a, &mut b)?;
        let mut cluster = Cluster::empty(vec![a, b]);
        cluster.routers.push(router);
        cluster.add_hosts(0, per_subnet)?;
        cluster.add_hosts(1, per_subnet)?;
        Ok(cluster)
    }

    fn empty(underlays: Vec<Underlay>) -> Cluster {
        Cluster {
            etcd: None,
            hosts: Vec::new(),
            routers: Vec::new(),
            underlays,
            tls: None,
        }
    }

    fn add_hosts(&mut self, underlay: usize, n: usize) -> io::Result<()> {
        for _ in 0..n {
            let name = format!("h{}", self.hosts.len() + 1);
            let host = self.underlays[underlay].add_host(&name)?;
            self.hosts.push(host);
        }
        Ok(())
    }

    /// Adds another host (named `h<N+1>`) on underlay number `underlay` and returns it.
    pub fn add_host(&mut self, underlay: usize) -> io::Result<&SimHost> {
        self.add_hosts(underlay, 1)?;
        Ok(&self.hosts[self.hosts.len() - 1])
    }

    /// Starts etcd on a new host of the first underlay (reachable from the second one through
    /// the router). With `tls`, generates [`Cluster::tls`] first. Fails if etcd is there.
    pub fn start_etcd(&mut self, tls: bool) -> io::Result<&mut EtcdHost> {
        if self.etcd.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the cluster already has an etcd host",
            ));
        }
        if tls && self.tls.is_none() {
            self.tls = Some(TlsMaterial::generate(&[])?);
        }
        let material = if tls { self.tls.as_ref() } else { None };
        let etcd = EtcdHost::start(&mut self.underlays[0], material)?;
        Ok(self.etcd.insert(etcd))
    }

    /// The first underlay.
    pub fn underlay(&self) -> &Underlay {
        &self.underlays[0]
    }

    /// Host `i` (0-based: `host(0)` is `h1`). Panics if out of range.
    pub fn host(&self, i: usize) -> &SimHost {
        &self.hosts[i]
    }

    /// The etcd host. Panics if the cluster has none.
    pub fn etcd(&self) -> &EtcdHost {
        self.etcd.as_ref().expect("cluster started without etcd")
    }

    /// The etcd endpoint, if the cluster has etcd.
    pub fn etcd_endpoint(&self) -> Option<String> {
        self.etcd.as_ref().map(EtcdHost::endpoint)
    }

    /// Paths of every namespace the cluster owns (for leak checks).
    pub fn netns_paths(&self) -> Vec<std::path::PathBuf> {
        let mut paths: Vec<_> = self
            .underlays
            .iter()
            .map(|u| u.ns().path().to_path_buf())
            .collect();
        paths.extend(self.routers.iter().map(|r| r.ns().path().to_path_buf()));
        paths.extend(self.hosts.iter().map(|h| h.ns().path().to_path_buf()));
        paths.extend(self.etcd.iter().map(|e| e.host().ns().path().to_path_buf()));
        paths
    }
}
