//! Which firewall driver the running test binary exercises. The firewall-touching suites
//! run once per driver without being copied: `tests/portmap.rs` is the nftables run, and
//! `tests/portmap_iptables.rs` includes the same file (`#[path]`) as the iptables run. The
//! test binary's name tells which (cargo names it after the file), so no environment
//! variable has to be changed under running tests; every command a test starts in a
//! namespace (`Netns::cmd`) carries `REEF_FIREWALL_DRIVER` for the plugins and agents.

use std::sync::OnceLock;

/// What the plugins and reef-agent read (`reef_firewall::DRIVER_ENV`).
pub const DRIVER_ENV: &str = "REEF_FIREWALL_DRIVER";

/// `"iptables"` in a binary whose target name ends in `_iptables`, `"mixed"` in one ending
/// in `_mixed` (a cluster of both: see [`for_host`]), else `"nftables"`.
pub fn under_test() -> &'static str {
    static KIND: OnceLock<&'static str> = OnceLock::new();
    KIND.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        let stem = exe
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // cargo: `<target>-<16 hex digits>`.
        let target = stem.rsplit_once('-').map_or(stem.as_str(), |(t, _)| t);
        if target.ends_with("_iptables") {
            "iptables"
        } else if target.ends_with("_mixed") {
            "mixed"
        } else {
            "nftables"
        }
    })
}

/// Whether the binary tests the iptables driver everywhere.
pub fn is_iptables() -> bool {
    under_test() == "iptables"
}

/// The driver of a simulated host: in a mixed run, hosts whose name ends in an odd digit
/// (`h1`, `h3`) run iptables and the others nftables; otherwise the binary's driver.
pub fn for_host(name: &str) -> &'static str {
    match under_test() {
        "mixed" => match name.chars().last().and_then(|c| c.to_digit(10)) {
            Some(d) if d % 2 == 1 => "iptables",
            _ => "nftables",
        },
        d => d,
    }
}
