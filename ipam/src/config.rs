//! Parsing and validation of the `ipam` object of a CNI network config.
//!
//! The accepted format is the one of the reference `host-local` IPAM plugin
//! (containernetworking/plugins), so existing configs keep working:
//!
//! ```json
//! { "type": "reef-ipam",
//!   "ranges": [ [ { "subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10",
//!                   "rangeEnd": "10.1.0.50", "gateway": "10.1.0.1" } ],
//!               [ { "subnet": "fd00::/64" } ] ],
//!   "dataDir": "/var/lib/reef/networks" }
//! ```
//!
//! The legacy single-range form (`subnet`/`rangeStart`/`rangeEnd`/`gateway` at the top
//! level) is accepted too and, like host-local, becomes the *first* range set. Keys this
//! crate does not use (`routes`, `resolvConf`, ...) are ignored: the caller handles them.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

/// Where records live when the config has no `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/reef/networks";

/// A config that cannot be used. The caller reports these as CNI error 7 ("invalid
/// network config").
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid ipam config: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid ipam config: {0}")]
    Malformed(String),
    #[error("invalid ipam config: no address ranges (set \"ranges\" or \"subnet\")")]
    NoRanges,
    #[error("invalid ipam config: range set {set} is empty")]
    EmptyRangeSet { set: usize },
    #[error("invalid ipam config: range set {set}, range {range}: {msg}")]
    InvalidRange {
        set: usize,
        range: usize,
        msg: String,
    },
    #[error("invalid ipam config: range set {set} mixes IPv4 and IPv6 ranges")]
    MixedFamilies { set: usize },
    #[error("invalid ipam config: range {first} overlaps range {second}")]
    Overlap { first: String, second: String },
    #[error(
        "invalid network name {0:?}: must be non-empty, not \".\" or \"..\", \
         and contain no '/' or NUL"
    )]
    InvalidNetworkName(String),
}

/// The validated `ipam` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// One address is allocated from each range set.
    pub range_sets: Vec<RangeSet>,
    /// Parent of the per-network store directories.
    pub data_dir: PathBuf,
}

/// Ranges that together provide one address; tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

/// One contiguous allocatable range, with defaults already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet; its IP is the network address (host bits are rejected).
    pub subnet: IpNetwork,
    /// First allocatable address (inclusive).
    pub start: IpAddr,
    /// Last allocatable address (inclusive).
    pub end: IpAddr,
    /// Never handed out. Always `Some` after parsing (defaults to network + 1).
    pub gateway: Option<IpAddr>,
}

impl IpamConfig {
    /// Parses and validates the `ipam` object of a network config.
    pub fn from_ipam_value(ipam: &Value) -> Result<IpamConfig, ConfigError> {
        let obj = ipam
            .as_object()
            .ok_or_else(|| ConfigError::Malformed("\"ipam\" must be a JSON object".into()))?;

        let mut range_sets = Vec::new();
        // Legacy single range: host-local prepends it to `ranges` (it only counts when
        // `subnet` is set; a lone top-level `rangeStart` is ignored there too).
        if !matches!(obj.get("subnet"), None | Some(Value::Null)) {
            range_sets.push(RangeSet(vec![parse_range(obj, 0, 0)?]));
        }
        match obj.get("ranges") {
            None | Some(Value::Null) => {}
            Some(Value::Array(sets)) => {
                for (j, raw_set) in sets.iter().enumerate() {
                    // Sets are numbered overall (as in `last_reserved_ip.N`), so after a
                    // legacy range `"ranges"[j]` is set j + 1.
                    let set = range_sets.len();
                    let raw_ranges = raw_set.as_array().ok_or_else(|| {
                        ConfigError::Malformed(format!("\"ranges\"[{j}] must be a list of ranges"))
                    })?;
                    let mut ranges = Vec::with_capacity(raw_ranges.len());
                    for (i, raw) in raw_ranges.iter().enumerate() {
                        let obj = raw.as_object().ok_or_else(|| ConfigError::InvalidRange {
                            set,
                            range: i,
                            msg: "must be a JSON object".into(),
                        })?;
                        ranges.push(parse_range(obj, set, i)?);
                    }
                    range_sets.push(RangeSet(ranges));
                }
            }
            Some(_) => {
                return Err(ConfigError::Malformed(
                    "\"ranges\" must be a list of range sets".into(),
                ))
            }
        }

        let data_dir = match opt_str(obj, "dataDir")
            .map_err(|msg| ConfigError::Malformed(format!("\"dataDir\" {msg}")))?
        {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };

        let cfg = IpamConfig {
            range_sets,
            data_dir,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Same as [`IpamConfig::from_ipam_value`], from JSON text.
    pub fn from_ipam_str(ipam: &str) -> Result<IpamConfig, ConfigError> {
        Self::from_ipam_value(&serde_json::from_str(ipam)?)
    }

    /// Cross-range checks (per-range checks happen while parsing).
    fn validate(&self) -> Result<(), ConfigError> {
        if self.range_sets.is_empty() {
            return Err(ConfigError::NoRanges);
        }
        for (set, rs) in self.range_sets.iter().enumerate() {
            let first = rs.0.first().ok_or(ConfigError::EmptyRangeSet { set })?;
            if rs.0.iter().any(|r| r.is_ipv4() != first.is_ipv4()) {
                return Err(ConfigError::MixedFamilies { set });
            }
        }
        // Like host-local, overlap means the allocatable [start, end] intervals intersect
        // (two ranges may share a subnet), within a set and across sets.
        let all: Vec<&Range> = self.range_sets.iter().flat_map(|rs| &rs.0).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.is_ipv4() == b.is_ipv4()
                    && ip_to_u128(a.start) <= ip_to_u128(b.end)
                    && ip_to_u128(b.start) <= ip_to_u128(a.end)
                {
                    return Err(ConfigError::Overlap {
                        first: a.to_string(),
                        second: b.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Range {
    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// Whether `ip` lies within `[start, end]`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && ip_to_u128(self.start) <= ip_to_u128(ip)
            && ip_to_u128(ip) <= ip_to_u128(self.end)
    }

    /// Addresses inside the range that must never be handed out: the gateway and, for
    /// IPv4, the network and broadcast addresses (an explicit `rangeStart`/`rangeEnd`
    /// may include them; we skip them instead of rejecting such configs).
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        Some(ip) == self.gateway
            || (self.is_ipv4() && (ip == self.subnet.network() || ip == self.subnet.broadcast()))
    }

    /// Whether `[start, end]` holds an address that is not reserved: more than the (at most
    /// three) reserved addresses, or one of the first four that is not reserved.
    fn has_allocatable(&self) -> bool {
        let (s, e) = (ip_to_u128(self.start), ip_to_u128(self.end));
        (s..=e)
            .take(4)
            .any(|v| !self.is_reserved(u128_to_ip(v, self.is_ipv4())))
    }

    /// Number of addresses in `[start, end]`, saturating at `u128::MAX` (an IPv6 /0).
    pub(crate) fn size(&self) -> u128 {
        let (s, e) = (ip_to_u128(self.start), ip_to_u128(self.end));
        if e < s {
            0
        } else {
            (e - s).saturating_add(1)
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{} in {}", self.start, self.end, self.subnet)
    }
}

impl RangeSet {
    /// Index of the range holding `ip`, if any.
    pub fn position(&self, ip: IpAddr) -> Option<usize> {
        self.0.iter().position(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.position(ip).is_some()
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Parses one range object (or the legacy top-level fields) and applies host-local's
/// defaults.
fn parse_range(obj: &Map<String, Value>, set: usize, range: usize) -> Result<Range, ConfigError> {
    let err = |msg: String| ConfigError::InvalidRange { set, range, msg };
    let field = |key: &str| opt_str(obj, key).map_err(|m| err(format!("\"{key}\" {m}")));

    let subnet_text = field("subnet")?.ok_or_else(|| err("\"subnet\" is required".into()))?;
    let subnet = parse_subnet(subnet_text).map_err(&err)?;
    let v4 = subnet.is_ipv4();
    // A /0 is the default route, not a pod subnet: its gateway would claim the whole
    // address space on the bridge and its routes would shadow the host's.
    if subnet.prefix() == 0 {
        return Err(err(format!(
            "subnet {subnet} covers the whole address space"
        )));
    }

    // host-local: an IPv4 subnet needs at least 2 host bits (/30), else there is nothing
    // left to allocate once network, broadcast and gateway are taken. IPv6 is allowed up
    // to /127 (host-local stops at /126) if an address is left: see `has_allocatable`.
    let max_prefix = if v4 { 30 } else { 127 };
    if subnet.prefix() > max_prefix {
        return Err(err(format!(
            "subnet {subnet} is too small to allocate from (prefix must be /{max_prefix} or shorter)"
        )));
    }

    let in_subnet = |key: &str| -> Result<Option<IpAddr>, ConfigError> {
        let Some(text) = field(key)? else {
            return Ok(None);
        };
        let ip = parse_ip(text, v4)
            .ok_or_else(|| err(format!("\"{key}\" {text:?} is not an IP address")))?;
        if !subnet.contains(ip) {
            return Err(err(format!("{key} {ip} is not in subnet {subnet}")));
        }
        Ok(Some(ip))
    };
    let start = in_subnet("rangeStart")?;
    let end = in_subnet("rangeEnd")?;
    let gateway = in_subnet("gateway")?;

    let network = ip_to_u128(subnet.network());
    let first_usable = u128_to_ip(network + 1, v4);
    let last = ip_to_u128(subnet.broadcast());
    // IPv4 excludes the broadcast address; IPv6 has none.
    let last_usable = u128_to_ip(if v4 { last - 1 } else { last }, v4);

    let start = start.unwrap_or(first_usable);
    let end = end.unwrap_or(last_usable);
    if ip_to_u128(start) > ip_to_u128(end) {
        return Err(err(format!("rangeStart {start} is after rangeEnd {end}")));
    }
    let range = Range {
        subnet,
        start,
        end,
        gateway: Some(gateway.unwrap_or(first_usable)),
    };
    // Whatever the prefix and bounds, a range whose every address is reserved (an IPv6
    // /127: ::1 is the default gateway, ::0 is skipped) could never allocate: refuse it
    // now rather than fail every ADD with "range full".
    if !range.has_allocatable() {
        return Err(err(format!(
            "{range} has no allocatable address (all are gateway, network or broadcast)"
        )));
    }
    Ok(range)
}

/// A string field; absent, `null` and `""` all mean "not set" (Go's `net.IP` decodes
/// `""` to nil, so host-local treats it as unset).
fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("must be a string, got {other}")),
    }
}

/// CIDR with a numeric prefix and no host bits, like Go's `net.ParseCIDR` plus
/// host-local's canonicalisation check.
fn parse_subnet(text: &str) -> Result<IpNetwork, String> {
    let bad = || format!("subnet {text:?} is not a CIDR (e.g. \"10.1.0.0/24\")");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let net = IpNetwork::new(addr, prefix).map_err(|_| bad())?;
    if net.network() != addr {
        return Err(format!(
            "subnet {text} has host bits set (the network address is {}/{prefix})",
            net.network()
        ));
    }
    Ok(net)
}

/// Parses an address; an IPv4-mapped IPv6 text is accepted for IPv4 subnets (Go's
/// `To4()` canonicalisation in host-local).
fn parse_ip(text: &str, v4: bool) -> Option<IpAddr> {
    let ip: IpAddr = text.parse().ok()?;
    match ip {
        IpAddr::V6(a) if v4 => a.to_ipv4_mapped().map(IpAddr::V4).or(Some(ip)),
        _ => Some(ip),
    }
}

pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Inverse of [`ip_to_u128`]; for IPv4 only the low 32 bits are used (callers stay
/// within a validated range, so nothing is lost).
pub(crate) fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn parse(v: Value) -> Result<IpamConfig, ConfigError> {
        IpamConfig::from_ipam_value(&v)
    }

    #[test]
    fn full_form_with_defaults() {
        let cfg = parse(json!({
            "type": "reef-ipam",
            "ranges": [
                [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.50",
                  "gateway": "10.1.0.254"},
                 {"subnet": "10.2.0.0/24"}],
                [{"subnet": "fd00::/64"}]
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "resolvConf": "/etc/resolv.conf",
            "somethingElse": {"x": 1}
        }))
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(cfg.range_sets.len(), 2);
        let r = &cfg.range_sets[0].0[0];
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.0.10"), ip("10.1.0.50"), Some(ip("10.1.0.254")))
        );
        let r = &cfg.range_sets[0].0[1];
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.2.0.1"), ip("10.2.0.254"), Some(ip("10.2.0.1")))
        );
        let r = &cfg.range_sets[1].0[0];
        assert_eq!(r.start, ip("fd00::1"));
        assert_eq!(r.end, ip("fd00::ffff:ffff:ffff:ffff"));
        assert_eq!(r.gateway, Some(ip("fd00::1")));
    }

    #[test]
    fn legacy_form_is_prepended() {
        let cfg = parse(json!({
            "subnet": "10.9.0.0/16", "rangeStart": "10.9.1.0", "gateway": "10.9.0.1",
            "dataDir": "/tmp/x",
            "ranges": [[{"subnet": "fd00::/120"}]]
        }))
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.range_sets.len(), 2);
        let r = &cfg.range_sets[0].0[0];
        assert_eq!((r.start, r.end), (ip("10.9.1.0"), ip("10.9.255.254")));
        assert_eq!(cfg.range_sets[1].0[0].end, ip("fd00::ff"));

        let cfg =
            IpamConfig::from_ipam_str(r#"{"subnet":"192.168.0.0/30","rangeEnd":""}"#).unwrap();
        let r = &cfg.range_sets[0].0[0];
        assert_eq!((r.start, r.end), (ip("192.168.0.1"), ip("192.168.0.2")));
    }

    #[test]
    fn validation_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({}), "no address ranges"),
            (json!({"ranges": []}), "no address ranges"),
            (json!({"ranges": [[]]}), "range set 0 is empty"),
            (json!("x"), "must be a JSON object"),
            (json!({"ranges": [[{"subnet": "10.1.0.0"}]]}), "not a CIDR"),
            (json!({"ranges": [[{"subnet": "nope/24"}]]}), "not a CIDR"),
            (
                json!({"ranges": [[{"subnet": 5}]]}),
                "\"subnet\" must be a string",
            ),
            (
                json!({"ranges": [[{"rangeStart": "10.0.0.1"}]]}),
                "\"subnet\" is required",
            ),
            (json!({"subnet": "10.1.0.5/24"}), "host bits"),
            (json!({"subnet": "10.1.0.0/31"}), "too small"),
            (json!({"subnet": "fd00::/128"}), "too small"),
            (json!({"subnet": "fd00::/127"}), "no allocatable address"),
            (
                json!({"subnet": "10.1.0.0/30", "rangeStart": "10.1.0.1", "rangeEnd": "10.1.0.1"}),
                "no allocatable address",
            ),
            (json!({"subnet": "0.0.0.0/0"}), "whole address space"),
            (json!({"subnet": "::/0"}), "whole address space"),
            (
                json!({"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}),
                "rangeStart 10.2.0.1 is not in subnet",
            ),
            (
                json!({"subnet": "10.1.0.0/24", "rangeEnd": "fd00::1"}),
                "rangeEnd fd00::1 is not in subnet",
            ),
            (
                json!({"subnet": "10.1.0.0/24", "gateway": "10.1.1.1"}),
                "gateway 10.1.1.1 is not in subnet",
            ),
            (
                json!({"subnet": "10.1.0.0/24", "gateway": "bogus"}),
                "is not an IP address",
            ),
            (
                json!({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.8"}),
                "is after rangeEnd",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}),
                "mixes IPv4 and IPv6",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.20"},
                                {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.20"}]]}),
                "overlaps",
            ),
            (
                json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/16"}]]}),
                "overlaps",
            ),
            (
                json!({"ranges": {"subnet": "10.1.0.0/24"}}),
                "list of range sets",
            ),
            (
                json!({"subnet": "10.1.0.0/24", "dataDir": 3}),
                "\"dataDir\" must be a string",
            ),
        ];
        for (v, want) in cases {
            let e = parse(v.clone()).expect_err(&v.to_string()).to_string();
            assert!(e.contains(want), "{v}: got {e:?}, want {want:?}");
        }
        assert!(matches!(
            IpamConfig::from_ipam_str("{"),
            Err(ConfigError::Json(_))
        ));
    }

    #[test]
    fn accepted_edge_cases() {
        // Two ranges sharing a subnet but not their intervals: allowed, like host-local.
        parse(
            json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.19"},
                                 {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.20"}]]}),
        )
        .unwrap();
        // Same family in two sets, disjoint.
        parse(json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]}))
            .unwrap();
        // IPv4-mapped text in an IPv4 subnet.
        let cfg = parse(json!({"subnet": "10.1.0.0/24", "rangeStart": "::ffff:10.1.0.7"})).unwrap();
        assert_eq!(cfg.range_sets[0].0[0].start, ip("10.1.0.7"));
        // A /127 whose gateway is the network address leaves ::1 to allocate.
        parse(json!({"subnet": "fd00::/127", "gateway": "fd00::"})).unwrap();
        parse(json!({"subnet": "fd00::/126"})).unwrap();
        parse(json!({"subnet": "10.1.0.0/30"})).unwrap();
    }
}
