//! route_localnet, for `127.0.0.1:hostPort` mappings, and only while it is needed.
//!
//! A connection from the host to 127.0.0.1:hostPort is DNATed to the pod; its replies come
//! back to the host-side interface toward the pod (the bridge, or a routed pod's host veth)
//! and are de-NATed to 127.0.0.1, which the kernel routes only with route_localnet=1 there.
//!
//! - ADD turns it on for the interfaces that route to the pod, after putting the loopback
//!   guard (`reef_netlink::tc`) on them; a guard already there is left as is, so every ADD
//!   also re-checks it. The guard drops pods' packets to 127.0.0.0/8 and survives a firewall
//!   reload, unlike the table's own input-chain rules.
//! - DEL, GC and a failed ADD give it back: an interface with Reef's guard that no remaining
//!   IPv4 mapping routes through gets its previous route_localnet (recorded in the guard)
//!   and loses the guard.
//!
//! Deciding "no mapping needs it" and enabling it must not interleave (a DEL could switch it
//! off between another ADD's enable and its mappings), so both run under a lock scoped to
//! the network namespace: an abstract unix socket name, which the kernel keeps per netns and
//! frees when its holder dies.

use reef_cni::{codes, skel::validate_ifname, CniError, CniResult};
use reef_firewall::portmap::{PortMapping, LOCALNET_REPLY_MARK};
use reef_firewall::FirewallDriver;
use reef_netlink::{Netlink, RouteInfo};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

const LOCK_NAME: &[u8] = b"reef-portmap/route_localnet";
const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LocalnetError {
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: reef_netlink::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("list port mappings: {0}")]
    Firewall(#[from] reef_firewall::Error),
    #[error("another reef-portmap held the route_localnet lock for {0:?}")]
    LockTimeout(Duration),
}

impl From<LocalnetError> for CniError {
    fn from(e: LocalnetError) -> CniError {
        let code = match e {
            LocalnetError::Firewall(_) => codes::FIREWALL,
            _ => codes::NETLINK,
        };
        CniError::new(code, "route_localnet for 127.0.0.1 port mappings")
            .with_details(e.to_string())
    }
}

fn nl(context: impl Into<String>) -> impl FnOnce(reef_netlink::Error) -> LocalnetError {
    let context = context.into();
    move |source| LocalnetError::Netlink { context, source }
}

type Result<T> = std::result::Result<T, LocalnetError>;

/// Held while route_localnet decisions are made in this network namespace.
pub struct Lock {
    _socket: UnixDatagram,
}

impl Lock {
    pub fn take() -> Result<Lock> {
        let addr =
            SocketAddr::from_abstract_name(LOCK_NAME).map_err(|source| LocalnetError::Io {
                context: "route_localnet lock name".into(),
                source,
            })?;
        let start = Instant::now();
        loop {
            match UnixDatagram::bind_addr(&addr) {
                Ok(s) => return Ok(Lock { _socket: s }),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if start.elapsed() > LOCK_WAIT {
                        return Err(LocalnetError::LockTimeout(LOCK_WAIT));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(source) => {
                    return Err(LocalnetError::Io {
                        context: "take the route_localnet lock".into(),
                        source,
                    })
                }
            }
        }
    }
}

fn key(ifname: &str) -> String {
    format!("net/ipv4/conf/{ifname}/route_localnet")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| LocalnetError::Io {
            context: "start the netlink runtime".into(),
            source,
        })
}

/// Turns route_localnet on, behind the guard, on the host-side interfaces of `prev` that
/// route to the pod (a bridge's ports are skipped: the bridge itself routes).
pub fn enable(prev: &CniResult) -> Result<()> {
    runtime()?.block_on(async {
        let netlink = Netlink::current().map_err(nl("open rtnetlink"))?;
        for i in prev.interfaces.iter().filter(|i| i.sandbox.is_none()) {
            if validate_ifname(&i.name).is_err() {
                continue;
            }
            let link = netlink
                .link_by_name(&i.name)
                .await
                .map_err(nl(format!("look up {}", i.name)))?;
            let Some(link) = link.filter(|l| l.controller.is_none()) else {
                continue; // not in this namespace, or a bridge port
            };
            let found = netlink
                .loopback_guard(link.index)
                .await
                .map_err(nl(format!("read the loopback guard of {}", i.name)))?;
            if found.is_none() {
                let before = reef_netlink::sysctl::get(&key(&i.name))
                    .map_err(nl(format!("read route_localnet of {}", i.name)))?;
                netlink
                    .add_loopback_guard(link.index, before == "1", LOCALNET_REPLY_MARK)
                    .await
                    .map_err(nl(format!(
                        "guard {} against pods reaching 127.0.0.1",
                        i.name
                    )))?;
            }
            reef_netlink::sysctl::set(&key(&i.name), "1")
                .map_err(nl(format!("enable route_localnet on {}", i.name)))?;
        }
        Ok(())
    })
}

/// Interfaces with route_localnet=1 now (cheap: /proc only), the candidates for `release`.
pub fn enabled_interfaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv4/conf") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !matches!(n.as_str(), "all" | "default" | "lo"))
        .filter(|n| reef_netlink::sysctl::get(&key(n)).is_ok_and(|v| v == "1"))
        .collect()
}

/// The interface a pod address is routed through: the longest matching main-table route.
fn route_oif(routes: &[RouteInfo], ip: IpAddr) -> Option<u32> {
    routes
        .iter()
        .filter(|r| r.dst.contains(ip))
        .max_by_key(|r| (r.dst.prefix(), std::cmp::Reverse(r.priority.unwrap_or(0))))
        .and_then(|r| r.oif)
}

/// Gives back route_localnet on every guarded interface among `candidates` that no installed
/// IPv4 mapping routes through. Call with the lock held, after the mappings changed.
pub fn release(fw: &mut dyn FirewallDriver, candidates: &[String]) -> Result<()> {
    if candidates.is_empty() {
        return Ok(());
    }
    let mappings: Vec<PortMapping> = fw.port_mappings()?;
    let pods: BTreeSet<IpAddr> = mappings
        .iter()
        .map(|m| m.pod_ip)
        .filter(IpAddr::is_ipv4)
        .collect();
    runtime()?.block_on(async {
        let netlink = Netlink::current().map_err(nl("open rtnetlink"))?;
        let routes = netlink
            .routes(false, false)
            .await
            .map_err(nl("list IPv4 routes"))?;
        let needed: BTreeSet<u32> = pods
            .iter()
            .filter_map(|ip| route_oif(&routes, *ip))
            .collect();
        for name in candidates {
            let Some(link) = netlink
                .link_by_name(name)
                .await
                .map_err(nl(format!("look up {name}")))?
            else {
                continue;
            };
            if needed.contains(&link.index) {
                continue;
            }
            let Some(guard) = netlink
                .loopback_guard(link.index)
                .await
                .map_err(nl(format!("read the loopback guard of {name}")))?
            else {
                continue; // not Reef's doing
            };
            // Off first, then the guard goes: never route_localnet without the guard.
            let restored = if guard.previous_route_localnet {
                "1"
            } else {
                "0"
            };
            reef_netlink::sysctl::set(&key(name), restored)
                .map_err(nl(format!("restore route_localnet on {name}")))?;
            netlink
                .remove_loopback_guard(link.index, guard)
                .await
                .map_err(nl(format!("remove the loopback guard of {name}")))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnetwork::IpNetwork;

    fn route(dst: &str, oif: u32, priority: Option<u32>) -> RouteInfo {
        let mut r = RouteInfo::new(dst.parse::<IpNetwork>().expect("net"), None);
        r.oif = Some(oif);
        r.priority = priority;
        r
    }

    #[test]
    fn the_longest_prefix_then_the_lowest_metric_decides_the_interface() {
        let routes = [
            route("0.0.0.0/0", 1, None),
            route("10.88.0.0/16", 2, None),
            route("10.88.0.7/32", 3, Some(100)),
            route("10.88.0.7/32", 4, Some(10)),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(route_oif(&routes, ip("10.88.0.7")), Some(4));
        assert_eq!(route_oif(&routes, ip("10.88.0.8")), Some(2));
        assert_eq!(route_oif(&routes, ip("192.0.2.1")), Some(1));
        assert_eq!(route_oif(&routes[1..], ip("192.0.2.1")), None);
    }
}
