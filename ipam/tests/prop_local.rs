//! Property test of the local store's allocator: random range configurations (one IPv4 set
//! of one or two ranges, maybe an IPv6 set) and random sequences of ADD, DEL (with no hint,
//! the right hint or someone else's addresses as hint) and "fill the ranges", against a model
//! of who holds what. After every step the store holds exactly the model: no address twice,
//! every address inside its range set and never a gateway, network or broadcast address; DEL
//! gives back exactly the handle's addresses and nothing else changes; a released address is
//! handed out again by the next fill.

use ipnetwork::IpNetwork;
use proptest::prelude::*;
use reef_ipam::{Handle, IpamConfig, IpamError, LocalStore};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One range: offsets of start and end inside `subnet` and of an optional gateway.
#[derive(Debug, Clone)]
struct RangeSpec {
    subnet: &'static str,
    start: u8,
    len: u8,
    gateway: Option<u8>,
}

fn range_spec(subnet: &'static str, size: u8) -> impl Strategy<Value = RangeSpec> {
    (0..size, 0..size, proptest::option::of(0..size)).prop_map(move |(a, b, gateway)| {
        let start = a.min(b);
        RangeSpec {
            subnet,
            start,
            len: a.max(b) - start,
            gateway,
        }
    })
}

fn ip_at(subnet: &str, offset: u128) -> IpAddr {
    let net: IpNetwork = subnet.parse().expect("subnet");
    match net.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + offset as u32).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + offset).into()),
    }
}

impl RangeSpec {
    fn json(&self) -> Value {
        let mut r = json!({
            "subnet": self.subnet,
            "rangeStart": ip_at(self.subnet, self.start.into()).to_string(),
            "rangeEnd": ip_at(self.subnet, u128::from(self.start) + u128::from(self.len)).to_string(),
        });
        if let Some(g) = self.gateway {
            r["gateway"] = json!(ip_at(self.subnet, g.into()).to_string());
        }
        r
    }

    /// The addresses the allocator may hand out, computed here independently of the crate:
    /// [start, end] less the gateway (network + 1 by default) and, for IPv4, less the
    /// network and broadcast addresses.
    fn usable(&self) -> BTreeSet<IpAddr> {
        let net: IpNetwork = self.subnet.parse().expect("subnet");
        let size: u128 = 1 << (if net.is_ipv4() { 32 } else { 128 } - u32::from(net.prefix()));
        let gateway = u128::from(self.gateway.unwrap_or(1));
        (u128::from(self.start)..=u128::from(self.start) + u128::from(self.len))
            .filter(|o| *o != gateway)
            .filter(|o| !net.is_ipv4() || (*o != 0 && *o != size - 1))
            .map(|o| ip_at(self.subnet, o))
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Add(usize),
    /// Handle, hint: 0 none, 1 the handle's own addresses, 2 every address held.
    Del(usize, u8),
    /// ADD fresh handles until a range set is full, check, then DEL them all.
    Fill,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..6usize).prop_map(Op::Add),
        3 => (0..6usize, 0..3u8).prop_map(|(h, k)| Op::Del(h, k)),
        1 => Just(Op::Fill),
    ]
}

/// Handles 0-5: three containers with two interfaces each.
fn handle(i: usize) -> Handle {
    Handle::new(format!("c{}", i / 2), ["eth0", "net1"][i % 2])
}

type Model = BTreeMap<IpAddr, Handle>;

fn held(store: &LocalStore) -> Model {
    store.list().expect("list").into_iter().collect()
}

struct Case {
    cfg: IpamConfig,
    /// Per range set, every usable address.
    usable: Vec<BTreeSet<IpAddr>>,
}

impl Case {
    fn set_of(&self, ip: IpAddr) -> Option<usize> {
        self.usable.iter().position(|u| u.contains(&ip))
    }

    fn free(&self, model: &Model, set: usize) -> BTreeSet<IpAddr> {
        self.usable[set]
            .iter()
            .filter(|ip| !model.contains_key(ip))
            .copied()
            .collect()
    }

    /// ADD of `h`: checks the outcome against the model and records it there.
    fn add(&self, store: &LocalStore, model: &mut Model, h: &Handle) -> Result<(), TestCaseError> {
        let mine: BTreeSet<IpAddr> = model
            .iter()
            .filter(|(_, o)| *o == h)
            .map(|(ip, _)| *ip)
            .collect();
        let full = (0..self.usable.len()).any(|s| self.free(model, s).is_empty());
        match store.allocate(&self.cfg, h) {
            Ok(got) => {
                prop_assert_eq!(got.len(), self.usable.len());
                let ips: BTreeSet<IpAddr> = got.iter().map(|a| a.address.ip()).collect();
                prop_assert_eq!(ips.len(), got.len(), "one address per set: {:?}", got);
                if !mine.is_empty() {
                    // A repeated ADD returns what the handle holds and changes nothing.
                    prop_assert_eq!(&ips, &mine);
                    return Ok(());
                }
                for (i, a) in got.iter().enumerate() {
                    let ip = a.address.ip();
                    prop_assert_eq!(a.range_set, i);
                    prop_assert_eq!(self.set_of(ip), Some(i), "{} outside set {}", ip, i);
                    prop_assert!(!model.contains_key(&ip), "{} handed out twice", ip);
                    let range = self.cfg.range_sets[i]
                        .0
                        .iter()
                        .find(|r| r.contains(ip))
                        .expect("in a range");
                    prop_assert_eq!(a.address.prefix(), range.subnet.prefix());
                    prop_assert_eq!(a.gateway, range.gateway);
                    prop_assert_ne!(Some(ip), a.gateway);
                    model.insert(ip, h.clone());
                }
                prop_assert!(!full, "allocated from a full set");
            }
            Err(IpamError::Exhausted { .. }) => {
                prop_assert!(mine.is_empty() && full, "exhausted with room: {:?}", model);
            }
            Err(e) => return Err(TestCaseError::fail(format!("ADD {h:?}: {e}"))),
        }
        Ok(())
    }

    fn del(
        &self,
        store: &LocalStore,
        model: &mut Model,
        h: &Handle,
        hint: &[IpAddr],
    ) -> Result<(), TestCaseError> {
        let mut got = store
            .release(h, hint)
            .map_err(|e| TestCaseError::fail(format!("DEL {h:?}: {e}")))?;
        got.sort();
        let want: Vec<IpAddr> = model
            .iter()
            .filter(|(_, o)| *o == h)
            .map(|(ip, _)| *ip)
            .collect();
        prop_assert_eq!(&got, &want, "DEL {:?} with hint {:?}", h, hint);
        model.retain(|_, o| o != h);
        Ok(())
    }
}

fn config() -> impl Strategy<Value = (Vec<RangeSpec>, Option<RangeSpec>)> {
    let v4 = prop_oneof![
        range_spec("10.1.0.0/28", 16).prop_map(|r| vec![r]),
        (range_spec("10.1.0.0/28", 16), range_spec("10.2.0.0/29", 8)).prop_map(|(a, b)| vec![a, b]),
    ];
    (v4, proptest::option::of(range_spec("fd00::/124", 16)))
}

fn run(v4: Vec<RangeSpec>, v6: Option<RangeSpec>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut sets = vec![v4];
    sets.extend(v6.map(|r| vec![r]));
    let ranges: Vec<Value> = sets
        .iter()
        .map(|s| Value::Array(s.iter().map(RangeSpec::json).collect()))
        .collect();
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let cfg = match IpamConfig::from_ipam_value(&json!({
        "type": "reef-ipam",
        "ranges": ranges,
        "dataDir": dir.path(),
    })) {
        Ok(c) => c,
        // A range with nothing to allocate is refused up front: nothing to test.
        Err(_) => {
            let usable = sets.iter().flatten().all(|r| !r.usable().is_empty());
            prop_assert!(!usable, "a usable config was refused: {:?}", sets);
            return Ok(());
        }
    };
    prop_assert!(
        sets.iter().flatten().all(|r| !r.usable().is_empty()),
        "{:?}",
        sets
    );
    let case = Case {
        usable: sets
            .iter()
            .map(|s| s.iter().flat_map(RangeSpec::usable).collect())
            .collect(),
        cfg,
    };
    let store = LocalStore::open(&case.cfg.data_dir, "prop")
        .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Add(i) => case.add(&store, &mut model, &handle(i))?,
            Op::Del(i, hint) => {
                let h = handle(i);
                let hint: Vec<IpAddr> = match hint {
                    0 => Vec::new(),
                    1 => model
                        .iter()
                        .filter(|(_, o)| **o == h)
                        .map(|(ip, _)| *ip)
                        .collect(),
                    _ => model.keys().copied().collect(),
                };
                case.del(&store, &mut model, &h, &hint)?;
            }
            Op::Fill => {
                let before = model.clone();
                let free: Vec<BTreeSet<IpAddr>> = (0..case.usable.len())
                    .map(|s| case.free(&model, s))
                    .collect();
                let fewest = free.iter().map(BTreeSet::len).min().unwrap_or(0);
                let fill = |n: usize| Handle::new(format!("fill{n}"), "eth0");
                for n in 0..=fewest {
                    case.add(&store, &mut model, &fill(n))?;
                }
                // Every free address of the fullest set was handed out, released ones too.
                for (s, f) in free.iter().enumerate() {
                    let new: BTreeSet<IpAddr> = model
                        .keys()
                        .filter(|ip| !before.contains_key(ip) && case.set_of(**ip) == Some(s))
                        .copied()
                        .collect();
                    prop_assert!(new.is_subset(f));
                    prop_assert_eq!(new.len(), fewest);
                }
                for n in 0..fewest {
                    case.del(&store, &mut model, &fill(n), &[])?;
                }
                prop_assert_eq!(&model, &before);
            }
        }
        prop_assert_eq!(
            &held(&store),
            &model,
            "store and model differ after {:?}",
            op
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn allocate_and_release_keep_the_store_exact(
        (v4, v6) in config(),
        ops in proptest::collection::vec(op(), 1..24),
    ) {
        run(v4, v6, ops)?;
    }
}
