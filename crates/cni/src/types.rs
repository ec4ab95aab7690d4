//! Network configuration and result types. One canonical in-memory form (the 1.1.0 superset)
//! is converted to whatever version the runtime asked for when printed.

use crate::error::{codes, CniError};
use crate::version::Version;
use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// The plugin's network configuration as received on stdin (a conflist entry with `name` and
/// `cniVersion` injected by the runtime). Plugin-specific keys stay in `raw`.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub plugin_type: String,
    pub ipam: Option<Value>,
    pub dns: Option<Dns>,
    pub prev_result: Option<CniResult>,
    pub runtime_config: Map<String, Value>,
    pub raw: Value,
}

impl NetConf {
    /// Decodes and validates stdin: code 6 for bad JSON, 1 for an unknown version, 7 for a bad
    /// network name.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(codes::DECODE, "failed to decode network configuration")
                .with_details(e.to_string())
        })?;
        let obj = raw.as_object().ok_or_else(|| {
            CniError::new(codes::DECODE, "network configuration must be a JSON object")
        })?;
        let version_str = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0");
        let cni_version = Version::parse(version_str)?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        validate_network_name(&name)?;
        let plugin_type = obj
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let dns = match obj.get("dns") {
            Some(v) if !v.is_null() => Some(Dns::from_json(v)?),
            _ => None,
        };
        let prev_result = match obj.get("prevResult") {
            Some(v) if !v.is_null() => {
                Some(CniResult::from_json(v).map_err(|e| e.context("invalid prevResult"))?)
            }
            _ => None,
        };
        let runtime_config = obj
            .get("runtimeConfig")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            ipam: obj.get("ipam").filter(|v| !v.is_null()).cloned(),
            dns,
            prev_result,
            runtime_config,
            raw,
        })
    }

    /// Deserialises the plugin-specific part of the configuration.
    pub fn plugin_config<T: serde::de::DeserializeOwned>(&self) -> Result<T, CniError> {
        serde_json::from_value(self.raw.clone()).map_err(|e| {
            CniError::invalid_config(format!("invalid {} configuration", self.plugin_type))
                .with_details(e.to_string())
        })
    }

    /// `cni.dev/valid-attachments` of a GC request: (containerID, ifname) pairs.
    pub fn valid_attachments(&self) -> Result<Vec<(String, String)>, CniError> {
        let Some(list) = self.raw.get("cni.dev/valid-attachments") else {
            return Ok(Vec::new());
        };
        let arr = list
            .as_array()
            .ok_or_else(|| CniError::invalid_config("cni.dev/valid-attachments must be a list"))?;
        arr.iter()
            .map(|a| {
                let cid = a.get("containerID").and_then(Value::as_str);
                let ifn = a.get("ifname").and_then(Value::as_str);
                match (cid, ifn) {
                    (Some(c), Some(i)) => Ok((c.to_string(), i.to_string())),
                    _ => Err(CniError::invalid_config(
                        "cni.dev/valid-attachments entries need containerID and ifname",
                    )
                    .with_details(a.to_string())),
                }
            })
            .collect()
    }
}

/// Network names follow the container-ID rules of the spec: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::invalid_config("missing network name"));
    }
    if !is_identifier(name) {
        return Err(
            CniError::invalid_config("invalid characters found in network name")
                .with_details(name.to_string()),
        );
    }
    Ok(())
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// Netns path for interfaces inside the container, absent for host-side ones.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with the prefix length of its subnet.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `CniResult::interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }

    pub fn from_json(v: &Value) -> Result<Route, CniError> {
        let dst = v
            .get("dst")
            .and_then(Value::as_str)
            .ok_or_else(|| CniError::new(codes::DECODE, "route without dst"))?;
        let dst = parse_net(dst)?;
        let gw = opt_ip(v.get("gw"))?;
        let num = |k: &str| -> Result<Option<u32>, CniError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(n) => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        CniError::new(codes::DECODE, format!("route {k} must be a number"))
                    }),
            }
        };
        Ok(Route {
            dst,
            gw,
            mtu: num("mtu")?,
            advmss: num("advmss")?,
            priority: num("priority")?,
            table: num("table")?,
            // A scope is one byte on the wire: 509 must not become 253 (link).
            scope: num("scope")?
                .map(|s| {
                    u8::try_from(s).map_err(|_| {
                        CniError::new(codes::DECODE, format!("route scope {s} is not 0-255"))
                    })
                })
                .transpose()?,
        })
    }

    pub fn to_json(&self, version: Version) -> Value {
        let mut m = Map::new();
        m.insert("dst".into(), json!(self.dst.to_string()));
        if let Some(gw) = self.gw {
            m.insert("gw".into(), json!(gw.to_string()));
        }
        if version.has_route_attributes() {
            for (k, v) in [
                ("mtu", self.mtu),
                ("advmss", self.advmss),
                ("priority", self.priority),
                ("table", self.table),
                ("scope", self.scope.map(u32::from)),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), json!(v));
                }
            }
        }
        Value::Object(m)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    pub fn from_json(v: &Value) -> Result<Dns, CniError> {
        let list = |k: &str| -> Result<Vec<String>, CniError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|s| {
                        s.as_str().map(str::to_string).ok_or_else(|| {
                            CniError::new(codes::DECODE, format!("dns.{k} must hold strings"))
                        })
                    })
                    .collect(),
                Some(_) => Err(CniError::new(
                    codes::DECODE,
                    format!("dns.{k} must be a list"),
                )),
            }
        };
        Ok(Dns {
            nameservers: list("nameservers")?,
            domain: v.get("domain").and_then(Value::as_str).map(str::to_string),
            search: list("search")?,
            options: list("options")?,
        })
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if !self.nameservers.is_empty() {
            m.insert("nameservers".into(), json!(self.nameservers));
        }
        if let Some(d) = &self.domain {
            m.insert("domain".into(), json!(d));
        }
        if !self.search.is_empty() {
            m.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            m.insert("options".into(), json!(self.options));
        }
        Value::Object(m)
    }
}

/// The result of ADD (and the `prevResult` of a chained plugin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// Reads a result of any supported version (0.3.x/0.4.0 `ips[].version` is ignored:
    /// the family follows from the address).
    pub fn from_json(v: &Value) -> Result<CniResult, CniError> {
        let arr = |k: &str| {
            v.get(k)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let interfaces = arr("interfaces")
            .iter()
            .map(|i| {
                Ok(Interface {
                    name: i
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| CniError::new(codes::DECODE, "interface without name"))?
                        .to_string(),
                    mac: i.get("mac").and_then(Value::as_str).map(str::to_string),
                    mtu: i
                        .get("mtu")
                        .and_then(Value::as_u64)
                        .and_then(|m| u32::try_from(m).ok()),
                    sandbox: i
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        let ips = arr("ips")
            .iter()
            .map(|ip| {
                let address = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .ok_or_else(|| CniError::new(codes::DECODE, "ip without address"))?;
                let interface = match ip.get("interface") {
                    None | Some(Value::Null) => None,
                    Some(n) => Some(
                        n.as_u64()
                            .and_then(|n| usize::try_from(n).ok())
                            .ok_or_else(|| {
                                CniError::new(codes::DECODE, "ip interface must be an index")
                            })?,
                    ),
                };
                if let Some(i) = interface {
                    if i >= interfaces.len() {
                        return Err(CniError::new(
                            codes::DECODE,
                            format!("ip interface index {i} out of range"),
                        ));
                    }
                }
                Ok(IpConfig {
                    address: parse_net(address)?,
                    gateway: opt_ip(ip.get("gateway"))?,
                    interface,
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        let routes = arr("routes")
            .iter()
            .map(Route::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        let dns = match v.get("dns") {
            Some(d) if !d.is_null() => Dns::from_json(d)?,
            _ => Dns::default(),
        };
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }

    /// Prints the result in the shape of `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    o.insert("name".into(), json!(i.name));
                    if let Some(mac) = &i.mac {
                        o.insert("mac".into(), json!(mac));
                    }
                    if let (Some(mtu), true) = (i.mtu, version >= Version::V1_1_0) {
                        o.insert("mtu".into(), json!(mtu));
                    }
                    if let Some(s) = &i.sandbox {
                        o.insert("sandbox".into(), json!(s));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut o = Map::new();
                    if version.ip_has_version_field() {
                        let fam = if ip.address.is_ipv4() { "4" } else { "6" };
                        o.insert("version".into(), json!(fam));
                    }
                    o.insert("address".into(), json!(ip.address.to_string()));
                    if let Some(gw) = ip.gateway {
                        o.insert("gateway".into(), json!(gw.to_string()));
                    }
                    if let Some(i) = ip.interface {
                        o.insert("interface".into(), json!(i));
                    }
                    Value::Object(o)
                })
                .collect();
            m.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(|r| r.to_json(version)).collect();
            m.insert("routes".into(), Value::Array(routes));
        }
        m.insert("dns".into(), self.dns.to_json());
        Value::Object(m)
    }
}

pub fn parse_net(s: &str) -> Result<IpNetwork, CniError> {
    s.parse::<IpNetwork>().map_err(|e| {
        CniError::new(codes::DECODE, format!("invalid CIDR \"{s}\"")).with_details(e.to_string())
    })
}

fn opt_ip(v: Option<&Value>) -> Result<Option<IpAddr>, CniError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| CniError::new(codes::DECODE, format!("invalid IP address \"{s}\""))),
        Some(other) => Err(CniError::new(
            codes::DECODE,
            format!("invalid IP address {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "reef0", "mac": "aa:bb:cc:dd:ee:ff"},
                           {"name": "eth0", "mac": "aa:bb:cc:dd:ee:00", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                    {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "priority": 10}],
            "dns": {"nameservers": ["10.1.0.1"]}
        })
    }

    #[test]
    fn result_roundtrip_and_downgrade() {
        let r = CniResult::from_json(&sample()).unwrap();
        assert_eq!(r.ips.len(), 2);
        assert_eq!(r.routes[0].mtu, Some(1400));
        let v11 = r.to_json(Version::V1_1_0);
        assert_eq!(CniResult::from_json(&v11).unwrap(), r);
        let v10 = r.to_json(Version::V1_0_0);
        assert!(v10["routes"][0].get("mtu").is_none());
        assert!(v10["ips"][0].get("version").is_none());
        let v04 = r.to_json(Version::V0_4_0);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        assert_eq!(v04["cniVersion"], "0.4.0");
    }

    #[test]
    fn route_scope_out_of_range_is_decode_error() {
        let mut v = sample();
        v["routes"][0]["scope"] = json!(253);
        assert_eq!(CniResult::from_json(&v).unwrap().routes[0].scope, Some(253));
        v["routes"][0]["scope"] = json!(509);
        let e = CniResult::from_json(&v).unwrap_err();
        assert_eq!(e.code, codes::DECODE);
        assert!(e.msg.contains("scope 509"), "{e}");
    }

    #[test]
    fn bad_interface_index_is_decode_error() {
        let mut v = sample();
        v["ips"][0]["interface"] = json!(7);
        assert_eq!(CniResult::from_json(&v).unwrap_err().code, codes::DECODE);
    }

    #[test]
    fn netconf_validation() {
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, codes::DECODE);
        let e = NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#).unwrap_err();
        assert_eq!(e.code, codes::INCOMPATIBLE_VERSION);
        let e =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"bad/name","type":"t"}"#).unwrap_err();
        assert_eq!(e.code, codes::INVALID_CONFIG);
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments().unwrap(),
            vec![("a".into(), "eth0".into())]
        );
    }
}
