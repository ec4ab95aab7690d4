//! What the fuzz targets share: one plugin configuration through every parser Reef has for
//! it, with the invariants a parsed configuration must keep. Each target panics only on a
//! broken invariant; an error result is the expected outcome for bad input.

use reef_cni::{NetConf, Version};
use serde_json::Value;

/// A network configuration as a plugin receives it on stdin, through every Reef plugin's
/// parser (whatever its `type`: any of them may be handed any input).
pub fn plugin_conf(stdin: &[u8]) {
    let Ok(conf) = NetConf::parse(stdin) else {
        return;
    };
    // A prevResult that parsed prints in the config's version and parses again.
    if let Some(prev) = &conf.prev_result {
        result_reparses(prev, conf.cni_version);
    }
    let _ = conf.valid_attachments();
    let _ = reef_bridge::config::BridgeConf::from_netconf(&conf);
    let _ = reef_routed::config::RoutedConf::from_netconf(&conf);
    if let Ok(specs) = reef_portmap::config::specs(&conf) {
        let ips = conf
            .prev_result
            .as_ref()
            .map(reef_portmap::config::pod_ips)
            .unwrap_or_default();
        if let Ok(maps) = reef_portmap::config::mappings(&specs, &ips) {
            for m in maps {
                assert!(
                    ips.contains(&m.pod_ip),
                    "mapping to a foreign address: {m:?}"
                );
            }
        }
    }
    if let Some(ipam) = &conf.ipam {
        ipam_section(ipam);
    }
}

/// The `ipam` section through reef-ipam's two stores' parsers.
pub fn ipam_section(ipam: &Value) {
    if let Ok(cfg) = reef_ipam::IpamConfig::from_ipam_value(ipam) {
        assert!(!cfg.range_sets.is_empty());
        for set in &cfg.range_sets {
            for r in &set.0 {
                assert!(
                    r.subnet.contains(r.start) && r.subnet.contains(r.end),
                    "{r}"
                );
                assert!(r.contains(r.start) && r.contains(r.end), "{r}");
                assert!(r.gateway.is_some_and(|g| r.subnet.contains(g)), "{r}");
            }
        }
    }
    if let Some(Ok(c)) = reef_ipam::cluster::ClusterIpamConfig::from_ipam_value(ipam) {
        if c.node_name.is_some() {
            let _ = c.node();
        }
    }
}

/// `r` printed in every version parses again, and what it keeps is what that version can
/// say: route attributes from 1.1.0 on, interface MTUs from 1.1.0 on, the rest always.
pub fn result_reparses(r: &reef_cni::CniResult, at: Version) {
    for v in Version::ALL {
        let printed = r.to_json(v);
        let back = match reef_cni::CniResult::from_json(&printed) {
            Ok(b) => b,
            Err(e) => panic!("{v} result does not parse again: {e}\n{printed}"),
        };
        assert_eq!(back, downgraded(r, v), "{v} (from {at}):\n{printed}");
        // Printing what was read back gives the same text: conversion is stable.
        assert_eq!(back.to_json(v), printed, "{v}");
    }
}

/// What of `r` a result of version `v` carries.
pub fn downgraded(r: &reef_cni::CniResult, v: Version) -> reef_cni::CniResult {
    let mut d = r.clone();
    if !v.has_route_attributes() {
        for route in &mut d.routes {
            *route = reef_cni::Route::new(route.dst, route.gw);
        }
    }
    if v < Version::V1_1_0 {
        for i in &mut d.interfaces {
            i.mtu = None;
        }
    }
    d
}

/// What `r` read from `v` is what `v` says: a route attribute is never read as another
/// number than the one written (a silent truncation would program another route).
pub fn read_faithfully(v: &Value, r: &reef_cni::CniResult) {
    let routes = v.get("routes").and_then(Value::as_array);
    for (route, json) in r.routes.iter().zip(routes.into_iter().flatten()) {
        let attrs = [
            ("mtu", route.mtu),
            ("advmss", route.advmss),
            ("priority", route.priority),
            ("table", route.table),
            ("scope", route.scope.map(u32::from)),
        ];
        for (key, got) in attrs {
            if let Some(n) = json.get(key).and_then(Value::as_u64) {
                assert_eq!(got.map(u64::from), Some(n), "route {key}");
            }
        }
    }
}
