//! The plugin's input: `runtimeConfig.portMappings` (the reference portmap's JSON, injected by
//! libcni when the conflist entry declares `"capabilities": {"portMappings": true}`) and the
//! pod addresses from `prevResult`.

use reef_cni::{CniError, CniResult, NetConf};
use reef_firewall::portmap::{PortMapping, Proto};
use serde_json::Value;
use std::net::IpAddr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("runtimeConfig.portMappings must be a list of objects")]
    NotAList,
    #[error("port mapping #{index}: {what}")]
    Mapping { index: usize, what: String },
    #[error("{key} = {value} is not supported by reef-portmap ({why})")]
    Unsupported {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("host port {port} {proto} on {host} is mapped twice, to different container ports")]
    Duplicate {
        port: u16,
        proto: Proto,
        host: String,
    },
    #[error("port mapping of host address {0} has no pod address of its family in prevResult")]
    NoPodAddress(IpAddr),
    #[error("prevResult has no pod address to map ports to")]
    NoPodAddresses,
}

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> CniError {
        CniError::invalid_config(e.to_string())
    }
}

/// One requested mapping, before it is applied to the pod's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

fn port(v: Option<&Value>, name: &str, index: usize) -> Result<u16, ConfigError> {
    let bad = |what: String| ConfigError::Mapping { index, what };
    match v {
        None | Some(Value::Null) => Err(bad(format!("{name} is required"))),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .ok_or_else(|| bad(format!("{name} {n} is not a port (1-65535)"))),
        Some(other) => Err(bad(format!("{name} must be a number, not {other}"))),
    }
}

/// `runtimeConfig.portMappings`; absent or null means none.
pub fn specs(conf: &NetConf) -> Result<Vec<Spec>, ConfigError> {
    check_reference_options(&conf.raw)?;
    let list = match conf.runtime_config.get("portMappings") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ConfigError::NotAList),
    };
    let mut out: Vec<Spec> = Vec::new();
    for (index, m) in list.iter().enumerate() {
        let bad = |what: String| ConfigError::Mapping { index, what };
        let Some(obj) = m.as_object() else {
            return Err(ConfigError::NotAList);
        };
        let host_port = port(obj.get("hostPort"), "hostPort", index)?;
        let container_port = port(obj.get("containerPort"), "containerPort", index)?;
        let proto = match obj.get("protocol") {
            None | Some(Value::Null) => Proto::Tcp,
            Some(Value::String(s)) if s.is_empty() => Proto::Tcp,
            Some(Value::String(s)) => Proto::parse(s)
                .ok_or_else(|| bad(format!("protocol \"{s}\" is not tcp, udp or sctp")))?,
            Some(other) => return Err(bad(format!("protocol must be a string, not {other}"))),
        };
        let host_ip = match obj.get("hostIP") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| bad(format!("hostIP \"{s}\" is not an IP address")))?,
            ),
            Some(other) => return Err(bad(format!("hostIP must be a string, not {other}"))),
        };
        let spec = Spec {
            host_ip,
            host_port,
            container_port,
            proto,
        };
        // Runtimes sometimes repeat a mapping; the same host side to two targets is an error.
        if let Some(prev) = out.iter().find(|s| {
            s.host_ip == spec.host_ip && s.host_port == spec.host_port && s.proto == spec.proto
        }) {
            if prev.container_port != spec.container_port {
                return Err(ConfigError::Duplicate {
                    port: host_port,
                    proto,
                    host: host_ip.map_or_else(|| "every address".into(), |a| a.to_string()),
                });
            }
            continue;
        }
        out.push(spec);
    }
    Ok(out)
}

/// Options of the reference portmap that Reef does not implement: accepted only at their
/// defaults, so a conflist written for the reference plugin never silently changes meaning.
fn check_reference_options(raw: &Value) -> Result<(), ConfigError> {
    if let Some(v) = raw.get("snat").filter(|v| !v.is_null()) {
        if v != &Value::Bool(true) {
            return Err(ConfigError::Unsupported {
                key: "snat",
                value: v.to_string(),
                why: "hairpin and localhost traffic is always masqueraded, other traffic never",
            });
        }
    }
    if let Some(v) = raw.get("markMasqBit").filter(|v| !v.is_null()) {
        if v.as_u64() != Some(13) {
            return Err(ConfigError::Unsupported {
                key: "markMasqBit",
                value: v.to_string(),
                why: "the mark bit is fixed at 13 (0x2000) in the host's one table",
            });
        }
    }
    for key in ["externalSetMarkChain", "conditionsV4", "conditionsV6"] {
        let set = match raw.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(ConfigError::Unsupported {
                key,
                value: raw.get(key).map(|v| v.to_string()).unwrap_or_default(),
                why: "these are iptables rule fragments; reef-portmap uses nftables",
            });
        }
    }
    Ok(())
}

/// The pod's addresses in a result: IPs on an interface that has a sandbox, or every IP
/// that names no interface.
pub fn pod_ips(prev: &CniResult) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) => prev.interfaces.get(i).is_some_and(|i| i.sandbox.is_some()),
            None => true,
        })
        .map(|ip| ip.address.ip())
        .collect();
    ips.dedup();
    ips
}

/// Every mapping to install: each spec for each pod address of its family (a spec without
/// hostIP, or with `0.0.0.0`/`::`, maps every local address of the family it applies to).
pub fn mappings(specs: &[Spec], pod_ips: &[IpAddr]) -> Result<Vec<PortMapping>, ConfigError> {
    if !specs.is_empty() && pod_ips.is_empty() {
        return Err(ConfigError::NoPodAddresses);
    }
    let mut out = Vec::new();
    for s in specs {
        let targets: Vec<&IpAddr> = pod_ips
            .iter()
            .filter(|ip| s.host_ip.is_none_or(|h| h.is_ipv4() == ip.is_ipv4()))
            .collect();
        if targets.is_empty() {
            if let Some(h) = s.host_ip {
                return Err(ConfigError::NoPodAddress(h));
            }
        }
        // One address per family: a second address of a family would compete for the key.
        let mut seen_v4 = false;
        let mut seen_v6 = false;
        for ip in targets {
            let seen = if ip.is_ipv4() {
                &mut seen_v4
            } else {
                &mut seen_v6
            };
            if std::mem::replace(seen, true) {
                continue;
            }
            out.push(
                PortMapping {
                    host_ip: s.host_ip,
                    host_port: s.host_port,
                    proto: s.proto,
                    pod_ip: *ip,
                    container_port: s.container_port,
                }
                .normalized(),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> NetConf {
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    fn base(pm: Value) -> Value {
        json!({"cniVersion": "1.0.0", "name": "n", "type": "reef-portmap",
               "runtimeConfig": {"portMappings": pm}})
    }

    #[test]
    fn parses_the_reference_json() {
        let c = conf(base(json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": "198.18.0.1"},
            {"hostPort": 8080, "containerPort": 80},
            {"hostPort": 9000, "containerPort": 9000, "protocol": "", "hostIP": ""}
        ])));
        let s = specs(&c).unwrap();
        assert_eq!(s.len(), 3, "the repeated mapping is folded: {s:?}");
        assert_eq!(s[0].proto, Proto::Tcp);
        assert_eq!(s[1].proto, Proto::Udp);
        assert_eq!(s[1].host_ip, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(s[2].host_ip, None);
        assert!(specs(&conf(json!({"cniVersion": "1.0.0", "name": "n"})))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rejects_bad_mappings() {
        for bad in [
            json!({"containerPort": 80}),
            json!({"hostPort": 0, "containerPort": 80}),
            json!({"hostPort": 70000, "containerPort": 80}),
            json!({"hostPort": "80", "containerPort": 80}),
            json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}),
            json!({"hostPort": 80, "containerPort": 80, "hostIP": "nope"}),
        ] {
            assert!(specs(&conf(base(json!([bad.clone()])))).is_err(), "{bad}");
        }
        assert_eq!(
            specs(&conf(base(json!({"hostPort": 1})))),
            Err(ConfigError::NotAList)
        );
        let dup =
            json!([{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}]);
        assert!(matches!(
            specs(&conf(base(dup))),
            Err(ConfigError::Duplicate { port: 80, .. })
        ));
        let mut c = base(json!([]));
        c["snat"] = json!(false);
        assert!(specs(&conf(c.clone())).is_err());
        c["snat"] = json!(true);
        c["markMasqBit"] = json!(13);
        assert!(specs(&conf(c)).is_ok());
    }

    #[test]
    fn maps_each_family_once() {
        let v4: IpAddr = "10.0.0.2".parse().unwrap();
        let v6: IpAddr = "fd00::2".parse().unwrap();
        let any = Spec {
            host_ip: None,
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp,
        };
        let m = mappings(&[any], &[v4, v6]).unwrap();
        assert_eq!(m.len(), 2);
        let only4 = Spec {
            host_ip: Some("198.18.0.1".parse().unwrap()),
            ..any
        };
        let m = mappings(&[only4], &[v4, v6]).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].pod_ip, v4);
        assert_eq!(
            mappings(&[only4], &[v6]),
            Err(ConfigError::NoPodAddress("198.18.0.1".parse().unwrap()))
        );
        let all4 = Spec {
            host_ip: Some("0.0.0.0".parse().unwrap()),
            ..any
        };
        let m = mappings(&[all4], &[v4, v6]).unwrap();
        assert_eq!((m.len(), m[0].host_ip), (1, None));
        assert_eq!(mappings(&[any], &[]), Err(ConfigError::NoPodAddresses));
    }

    #[test]
    fn pod_ips_skip_host_side_interfaces() {
        let prev = CniResult::from_json(&json!({
            "interfaces": [{"name": "br0"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.0.0.1/24", "interface": 0},
                    {"address": "10.0.0.2/24", "interface": 1},
                    {"address": "fd00::2/64"}]
        }))
        .unwrap();
        let want: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        assert_eq!(pod_ips(&prev), want);
    }
}
