//! Every record reef-agent reads back from etcd (config, nodes, blocks, borrowed addresses,
//! agents, services, workloads, policies, namespaces), put and deleted in any order into
//! its ClusterView, then everything the agent computes from the view for a node: routes
//! (routed and both VXLAN modes), natOutgoing, services and network policy. The input is
//! one record per line: `KEY VALUE` puts, a lone `KEY` deletes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reef_agent::desired::{self, vxlan};
use reef_agent::view::ClusterView;

fuzz_target!(|data: &[u8]| {
    let mut view = ClusterView::default();
    for line in data.split(|b| *b == b'\n') {
        let (key, value) = match line.iter().position(|b| *b == b' ') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        view.apply(key, value);
    }
    let underlay = "198.18.1.1/24".parse().expect("underlay");
    let mut nodes: Vec<String> = view.nodes.keys().take(2).cloned().collect();
    nodes.push("a".into());
    for me in &nodes {
        let _ = desired::compute(&view, me, &desired::routed_next_hop(&view));
        for crosssubnet in [false, true] {
            let _ = vxlan::plan(
                &view,
                vxlan::Local {
                    me,
                    underlay,
                    crosssubnet,
                    dev: 7,
                },
            );
        }
        let _ = desired::nat::pools(&view);
        let _ = desired::services::all(&view, me);
        let _ = view.changed.affected(&view);
        let _ = desired::policy::compute(&view, me);
    }
});
