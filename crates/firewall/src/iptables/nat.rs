//! natOutgoing (reef-agent) in iptables: two ipsets per family (every pool; pools with
//! natOutgoing), replaced atomically by `ipset swap`, and one fixed rule per family:
//!
//! ```text
//! -A REEF-POSTROUTING -m set --match-set reef-nat4 src -m set ! --match-set reef-pools4 dst -j MASQUERADE
//! ```
//! The rule is written once; pool changes are set swaps (no rule change at all).

use super::backend::{comment, Family, Section};
use super::{ipset, Iptables, POSTROUTING};
use crate::rules::NatPool;
use crate::Result;
use std::collections::BTreeSet;

fn sets(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("reef-nat4", "reef-pools4"),
        Family::V6 => ("reef-nat6", "reef-pools6"),
    }
}

fn rule(family: Family) -> String {
    let (nat, pools) = sets(family);
    format!(
        "-m set --match-set {nat} src -m set ! --match-set {pools} dst {} -j MASQUERADE",
        comment("reef natOutgoing")
    )
}

fn is_nat_rule(rule: &str, family: Family) -> bool {
    rule.contains(&format!("--match-set {} src", sets(family).0))
}

pub(crate) fn sync(fw: &mut Iptables, pools: &[NatPool]) -> Result<()> {
    let mut script = String::new();
    for family in [Family::V4, Family::V6] {
        let (nat, all) = sets(family);
        let of_family = pools.iter().filter(|p| Family::of(&p.cidr.ip()) == family);
        let every: BTreeSet<String> = of_family.clone().map(cidr).collect();
        let natted: BTreeSet<String> = of_family.filter(|p| p.nat_outgoing).map(cidr).collect();
        let opts = format!("hash:net family {}", family.ipset());
        script += &ipset::replace_script(all, &opts, &every);
        script += &ipset::replace_script(nat, &opts, &natted);
    }
    ipset::restore(&script, "replace the natOutgoing pool sets")?;
    let _lock = super::lock::Lock::take()?;
    for family in [Family::V4, Family::V6] {
        let existing = fw.chains(family, "nat")?;
        if existing
            .get(POSTROUTING)
            .is_some_and(|r| r.iter().any(|r| is_nat_rule(r, family)))
        {
            continue;
        }
        let mut nat = Section::new("nat");
        super::ensure_base_chain(&existing, &mut nat, "POSTROUTING", POSTROUTING);
        nat.rule(format!("{POSTROUTING} {}", rule(family)));
        fw.restore(family, &[nat], "install the natOutgoing rule")?;
    }
    Ok(())
}

fn cidr(p: &NatPool) -> String {
    format!("{}/{}", p.cidr.network(), p.cidr.prefix())
}

pub(crate) fn remove(fw: &mut Iptables) -> Result<()> {
    let _lock = super::lock::Lock::take()?;
    for family in [Family::V4, Family::V6] {
        let existing = fw.chains(family, "nat")?;
        let mut nat = Section::new("nat");
        for r in existing.get(POSTROUTING).into_iter().flatten() {
            if is_nat_rule(r, family) {
                nat.line(format!("-D {POSTROUTING} {r}"));
            }
        }
        fw.restore(family, &[nat], "remove the natOutgoing rule")?;
    }
    let (a, b) = sets(Family::V4);
    let (c, d) = sets(Family::V6);
    let names = [a, b, c, d].map(str::to_string);
    ipset::restore(
        &ipset::destroy_script(&names),
        "destroy the natOutgoing sets",
    )
}
