//! The four CNI plugins have no command line (a runtime drives them through environment
//! variables and stdin), so their man pages come from clap commands made here for
//! documentation only, plus ENVIRONMENT and CONFIGURATION sections.
//!
//! The configuration keys follow the plugins' config types: `BridgeConf`
//! (plugins/bridge/src/config.rs), `RoutedConf` (plugins/routed/src/config.rs), the
//! portmap's `specs` and `check_reference_options` (plugins/portmap/src/config.rs), and
//! reef-ipam's `IpamConfig` (ipam/src/config.rs), `ClusterIpamConfig`
//! (ipam/src/cluster/config.rs), `routes` and `resolvConf` (ipam/src/plugin.rs). The tests
//! below fail when a serde field of those structs is missing here.

use crate::man::Section;
use clap::Command;

/// One plugin's page: its documentation command and the sections after clap's.
pub struct Plugin {
    pub cmd: Command,
    pub sections: Vec<Section>,
}

/// What every plugin page says about how it is run, after the plugin's own first paragraph.
const RUN_BY_A_RUNTIME: &str = "\
It is a CNI plugin: it is not run by hand but executed by a container runtime (containerd, \
CRI-O, podman, reef-run, or anything built on libcni) when a container is created or \
removed, found by its \"type\" in a network configuration list in /etc/cni/net.d and looked \
up in CNI_PATH (usually /opt/cni/bin). The runtime names the verb and the container in \
environment variables (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, \
CNI_PATH; see ENVIRONMENT) and writes the plugin's network configuration as JSON on stdin: \
the plugin's entry of the list, with the list's cniVersion and name, and the runtime's \
runtimeConfig and prevResult (see CONFIGURATION). The plugin prints its result, or a CNI \
error object, as JSON on stdout, and exits 0 on success and 1 on error.

It speaks CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0, and implements ADD, DEL, CHECK, VERSION, \
and GC and STATUS from 1.1.0 on. Without CNI_COMMAND it prints what it is on stderr.";

fn command(name: &'static str, about: &'static str, first: &str) -> Command {
    Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .long_about(format!("{first}\n\n{RUN_BY_A_RUNTIME}"))
        // It takes no arguments: the synopsis is how a runtime calls it.
        .disable_help_flag(true)
        .disable_version_flag(true)
        .override_usage(format!(
            "CNI_COMMAND=VERB CNI_CONTAINERID=ID CNI_NETNS=PATH CNI_IFNAME=NAME \
             CNI_PATH=DIRS {name} < CONFIG.json"
        ))
}

/// The CNI environment (the spec's variables) and the plugin's own.
fn environment(ifname: &str, netns: &str, own: &[(&str, &str)]) -> Section {
    let mut s = Section::new("ENVIRONMENT")
        .tagged(
            "CNI_COMMAND",
            "The verb: ADD, DEL, CHECK, VERSION, and GC or STATUS (CNI 1.1.0).",
        )
        .tagged(
            "CNI_CONTAINERID",
            "The container's ID. With CNI_IFNAME it names the attachment.",
        )
        .tagged("CNI_NETNS", netns)
        .tagged("CNI_IFNAME", ifname)
        .tagged(
            "CNI_ARGS",
            "Extra arguments, KEY=VALUE pairs separated by semicolons. K8S_POD_NAMESPACE and \
             K8S_POD_NAME name the pod: they select its network policy and are recorded with \
             its addresses in the cluster store.",
        )
        .tagged(
            "CNI_PATH",
            "Colon-separated directories searched for plugins this one delegates to (an IPAM \
             type other than reef-ipam).",
        );
    for (name, text) in own {
        s = s.tagged(*name, *text);
    }
    s
}

const FIREWALL_ENV: (&str, &str) = (
    "REEF_FIREWALL_DRIVER",
    "The firewall driver: nftables (the default and only one).",
);
const IPAM_EXEC_ENV: (&str, &str) = (
    "REEF_IPAM_EXEC",
    "1 executes reef-ipam from CNI_PATH instead of running it in-process.",
);

const IFNAME: &str = "The interface to create inside the container, e.g. eth0.";
const NETNS: &str = "Path of the container's network namespace, e.g. /var/run/netns/NAME. \
                     DEL succeeds when it is already gone.";

/// cniVersion, name and type: the keys of every network configuration.
fn common_keys(s: Section, plugin: &str) -> Section {
    s.tagged(
        "cniVersion",
        "The CNI version of the configuration and the result (0.3.0 to 1.1.0).",
    )
    .tagged(
        "name",
        "The network's name (from the list); it names the IPAM store and firewall tables.",
    )
    .tagged("type", format!("{plugin}."))
}

/// The `ipam` key of a main plugin.
const IPAM_KEY: &str = "Required. The IPAM plugin's section: type reef-ipam runs in-process \
                        (see reef-ipam(8)), any other type is executed from CNI_PATH.";

/// The `labels` capability of a main plugin (reef-ipam's `workload_of` reads it).
const LABELS: &str = "With \"capabilities\": {\"labels\": true}: the pod's labels, which \
                      reef-ipam records with its addresses in the cluster store (network \
                      policy selects pods by them).";

fn bridge() -> Plugin {
    let cmd = command(
        "reef-bridge",
        "Reef's bridge plugin: veth pairs on a Linux bridge (CNI main plugin)",
        "reef-bridge attaches a container to a Linux bridge on the host: one veth pair per \
         attachment, the host end on the bridge and the pod end named CNI_IFNAME inside \
         CNI_NETNS, addresses from IPAM, and optionally the gateway on the bridge, masquerade \
         (nftables) and hairpin. DEL removes them and succeeds when repeated; CHECK compares \
         the live state with prevResult; GC removes the attachments a runtime no longer \
         lists.",
    );
    let keys = common_keys(Section::new("CONFIGURATION"), "reef-bridge")
        .tagged(
            "bridge",
            "Bridge name (default reef0); created if absent, reused if present.",
        )
        .tagged(
            "isGateway",
            "Put each range's gateway address on the bridge, enable forwarding, and give the \
             pod a default route via it (default false).",
        )
        .tagged(
            "isDefaultGateway",
            "Same as isGateway (the reference plugin's name).",
        )
        .tagged(
            "ipMasq",
            "Masquerade the pod's traffic to destinations outside the network (default false).",
        )
        .tagged(
            "mtu",
            "MTU of the bridge and both veth ends, 68 to 65535; unset, the kernel's default, \
             or the reef.vxlan device's on a node in a VXLAN mode.",
        )
        .tagged(
            "hairpinMode",
            "Hairpin on the pod's bridge port, so a pod reaches itself through a NAT on the \
             host (default false).",
        )
        .tagged(
            "isolation",
            "Pods of this network cannot reach pods of the host's other bridge networks, nor \
             they these (default true).",
        )
        .tagged("ipam", IPAM_KEY)
        .tagged("dns", "The result's DNS settings when IPAM returns none.")
        .tagged("runtimeConfig.labels", LABELS);
    Plugin {
        cmd,
        sections: vec![
            environment(IFNAME, NETNS, &[IPAM_EXEC_ENV, FIREWALL_ENV]),
            keys,
        ],
    }
}

fn routed() -> Plugin {
    let cmd = command(
        "reef-routed",
        "Reef's routed plugin: veth pairs and /32 host routes, no bridge (CNI main plugin)",
        "reef-routed attaches a container Calico style: one veth pair per attachment, the \
         host end with proxy ARP and the fixed MAC ee:ee:ee:ee:ee:ee, a /32 (/128) host route \
         to each pod address, and the pod's default route via 169.254.1.1 \
         (fe80::ecee:eeff:feee:eeee), which is the host veth. Traffic between hosts is routed \
         by reef-agent(8).",
    );
    let keys = common_keys(Section::new("CONFIGURATION"), "reef-routed")
        .tagged(
            "mtu",
            "MTU of both veth ends, 68 to 65535; unset, the reef.vxlan device's on a node in a \
             VXLAN mode, else the kernel's default.",
        )
        .tagged("ipam", IPAM_KEY)
        .tagged("dns", "The result's DNS settings when IPAM returns none.")
        .tagged("runtimeConfig.labels", LABELS);
    Plugin {
        cmd,
        sections: vec![
            environment(IFNAME, NETNS, &[IPAM_EXEC_ENV, FIREWALL_ENV]),
            keys,
        ],
    }
}

fn portmap() -> Plugin {
    let cmd = command(
        "reef-portmap",
        "Reef's port-mapping plugin: host ports to pods through nftables (chained CNI plugin)",
        "reef-portmap is chained after a main plugin (its entry comes later in the list, with \
         \"capabilities\": {\"portMappings\": true}). It DNATs host ports to the pod addresses \
         of prevResult, from other hosts, from the host itself (127.0.0.1 included) and from \
         pods (hairpin), through one nftables table, inet reef-portmap. A host port another \
         attachment maps fails the ADD with code 106.",
    );
    let keys = common_keys(Section::new("CONFIGURATION"), "reef-portmap")
        .tagged(
            "capabilities",
            "{\"portMappings\": true}, so the runtime passes the container's ports in \
             runtimeConfig.",
        )
        .tagged(
            "runtimeConfig.portMappings",
            "A list of {hostPort, containerPort, protocol, hostIP}: the reference portmap's \
             JSON. protocol is tcp (the default), udp or sctp; hostIP (optional) limits the \
             mapping to one host address.",
        )
        .tagged(
            "prevResult",
            "The main plugin's result: the pod addresses ports are mapped to.",
        )
        .tagged(
            "snat, markMasqBit, externalSetMarkChain, conditionsV4, conditionsV6",
            "The reference portmap's options, accepted only at their defaults (snat true, \
             markMasqBit 13, the others empty): the configuration never silently means \
             something else.",
        );
    Plugin {
        cmd,
        sections: vec![environment(IFNAME, NETNS, &[FIREWALL_ENV]), keys],
    }
}

fn ipam() -> Plugin {
    let cmd = command(
        "reef-ipam",
        "Reef's IPAM plugin: addresses from a local store or a cluster store in etcd",
        "reef-ipam allocates the addresses of an attachment, keyed by CNI_CONTAINERID and \
         CNI_IFNAME, from one of two stores: the embedded local store (one host; host-local's \
         configuration and on-disk layout), or, when its section has an etcd key, the \
         cluster store in etcd (per-node address blocks, borrowing, GC). A main plugin runs \
         it from its \"ipam\" section; reef-bridge and reef-routed link it in and run it \
         in-process.",
    );
    let keys = Section::new("CONFIGURATION")
        .para("The keys of the \"ipam\" section:")
        .tagged("type", "reef-ipam.")
        .tagged(
            "ranges",
            "Local store: a list of range sets, each a list of ranges {subnet, rangeStart, \
             rangeEnd, gateway} of one family; one address comes from every set (dual stack \
             is two sets). Ranges must not overlap.",
        )
        .tagged(
            "subnet, rangeStart, rangeEnd, gateway",
            "Local store: the legacy single range, the first range set.",
        )
        .tagged(
            "routes",
            "[{dst, gw}], returned in the result; a route without gw goes via its family's \
             gateway.",
        )
        .tagged(
            "resolvConf",
            "A resolv.conf-format file whose nameserver, domain, search and options become the \
             result's dns.",
        )
        .tagged(
            "dataDir",
            "Local store: where it lives (default /var/lib/reef/networks). Cluster store: the \
             node's cache (default /var/lib/reef/etcd-cache).",
        )
        .tagged(
            "etcd",
            "Selects the cluster store: {\"endpoints\": [URL, ...], \"tls\": {\"ca\": FILE, \
             \"cert\": FILE, \"key\": FILE}}. The pools come from etcd, written by reefctl \
             init.",
        )
        .tagged(
            "nodeName",
            "Cluster store: this node's name (default the hostname), as reef-agent's --node.",
        )
        .para("And from the rest of the network configuration:")
        .tagged("runtimeConfig.labels", LABELS);
    let netns = "Not used: IPAM creates no interface.";
    let ifname = "The attachment's interface name (with CNI_CONTAINERID, the allocation's key).";
    Plugin {
        cmd,
        sections: vec![environment(ifname, netns, &[]), keys],
    }
}

/// Every plugin, in the order of the README's table.
pub fn all() -> Vec<Plugin> {
    vec![bridge(), ipam(), portmap(), routed()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::man::Item;

    /// The camelCase names of the `pub` fields of `struct name` in `src` (serde's
    /// rename_all = "camelCase" of these structs).
    fn fields(src: &str, name: &str) -> Vec<String> {
        let start = src
            .find(&format!("pub struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name} not found"));
        let body = &src[start..];
        let body = &body[..body.find("\n}").expect("end of struct")];
        body.lines()
            .filter_map(|l| l.trim().strip_prefix("pub "))
            .filter_map(|l| l.split_once(':').map(|(f, _)| f.trim().to_string()))
            .filter(|f| !f.starts_with("struct"))
            .map(|f| {
                let mut out = String::new();
                let mut up = false;
                for c in f.chars() {
                    if c == '_' {
                        up = true;
                    } else if up {
                        out.push(c.to_ascii_uppercase());
                        up = false;
                    } else {
                        out.push(c);
                    }
                }
                out
            })
            .collect()
    }

    fn documented(p: &Plugin) -> Vec<String> {
        p.sections
            .iter()
            .filter(|s| s.heading == "CONFIGURATION")
            .flat_map(|s| &s.items)
            .filter_map(|i| match i {
                Item::Tagged(term, _) => Some(term.clone()),
                _ => None,
            })
            .flat_map(|t| t.split(", ").map(String::from).collect::<Vec<_>>())
            .collect()
    }

    fn assert_documents(p: &Plugin, keys: &[String]) {
        let doc = documented(p);
        assert!(!keys.is_empty());
        for k in keys {
            assert!(
                doc.contains(k),
                "{}: key {k} is missing from the man page",
                p.cmd.get_name()
            );
        }
    }

    #[test]
    fn every_config_field_is_documented() {
        let bridge_src = include_str!("../../../plugins/bridge/src/config.rs");
        let bridge_fields = fields(bridge_src, "BridgeConf");
        // The parse is not vacuous: a field from the middle of the struct is found.
        assert!(
            bridge_fields.contains(&"hairpinMode".to_string()),
            "{bridge_fields:?}"
        );
        assert_documents(&bridge(), &bridge_fields);
        let routed_src = include_str!("../../../plugins/routed/src/config.rs");
        assert_documents(&routed(), &fields(routed_src, "RoutedConf"));
        let cluster_src = include_str!("../../../ipam/src/cluster/config.rs");
        assert_documents(&ipam(), &fields(cluster_src, "ClusterIpamConfig"));
    }

    #[test]
    fn pages_render() {
        for p in all() {
            let page = crate::man::render(&p.cmd, "8", &p.sections).expect("render");
            let text = String::from_utf8(page).expect("utf-8");
            for want in [".SH ENVIRONMENT", ".SH CONFIGURATION", "CNI_NETNS", "stdin"] {
                assert!(text.contains(want), "{}: no {want}", p.cmd.get_name());
            }
        }
    }
}
