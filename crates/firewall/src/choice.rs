//! Which driver serves an attachment: the plugin's `"firewall"` setting (`nftables`,
//! `iptables`, `auto`), else `REEF_FIREWALL_DRIVER`, else nftables; and the record of the
//! driver ADD used, so DEL cleans up with that one even after the setting changed (or
//! `auto` would now decide otherwise). Records live in `/run/reef/firewall` (tmpfs: like
//! the rules they describe, they do not survive a reboot), one small file per plugin and
//! attachment; `REEF_FIREWALL_STATE_DIR` moves them.

use crate::driver::{driver, DriverKind};
use crate::{Error, FirewallDriver, Result};
use std::path::PathBuf;

pub const STATE_DIR_ENV: &str = "REEF_FIREWALL_STATE_DIR";
pub const DEFAULT_STATE_DIR: &str = "/run/reef/firewall";

/// The attachment a choice is recorded for.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    /// The plugin (`reef-bridge`, `reef-portmap`): each records its own choice.
    pub plugin: &'a str,
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl<'a> Attachment<'a> {
    pub fn new(plugin: &'a str, network: &'a str, container_id: &'a str, ifname: &'a str) -> Self {
        Attachment {
            plugin,
            network,
            container_id,
            ifname,
        }
    }
}

/// Runs `f` with every driver: `kind`'s, whose errors count, then the other one's, whose
/// errors are ignored (it may not even be installed). GC's way of leaving nothing of a
/// driver the host switched away from.
pub fn with_every_driver<T>(
    kind: DriverKind,
    mut f: impl FnMut(&mut dyn FirewallDriver) -> Result<T>,
) -> Result<T> {
    let kind = kind.resolve();
    let other = match kind {
        DriverKind::Iptables => DriverKind::Nftables,
        _ => DriverKind::Iptables,
    };
    let mut main = driver(kind);
    let res = f(&mut *main);
    main.close_in_background();
    let mut rest = driver(other);
    let _ = f(&mut *rest);
    rest.close_in_background();
    res
}

fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

impl Attachment<'_> {
    fn path(&self) -> PathBuf {
        // Network names, container ids and ifnames hold no '/' (the dispatcher checks).
        state_dir()
            .join(self.plugin)
            .join(self.network)
            .join(format!("{}.{}", self.container_id, self.ifname))
    }
}

/// The configured kind: the netconf's `"firewall"` value (`None`: not set), else the
/// environment's, else the default. A value that is not a known driver name is an error
/// naming the field.
pub fn configured(value: Option<&serde_json::Value>) -> Result<DriverKind> {
    match value {
        None | Some(serde_json::Value::Null) => DriverKind::from_env(),
        Some(serde_json::Value::String(s)) => s.parse().map_err(|_| {
            Error::Config(format!(
                "\"firewall\": {s:?} is not a firewall driver (nftables, iptables, auto)"
            ))
        }),
        Some(other) => Err(Error::Config(format!(
            "\"firewall\" must be a string (nftables, iptables, auto), not {other}"
        ))),
    }
}

/// ADD: the configured driver, made concrete (`auto` decided), recorded for `att` before
/// anything is programmed (so the cleanup of a failed ADD finds it too).
pub fn for_add(
    att: &Attachment<'_>,
    kind: DriverKind,
) -> Result<(DriverKind, Box<dyn FirewallDriver>)> {
    let kind = kind.resolve();
    let path = att.path();
    let recorded = std::fs::read_to_string(&path).ok();
    if recorded.as_deref().map(str::trim) != Some(&kind.to_string()) {
        write_record(&path, kind)?;
    }
    Ok((kind, driver(kind)))
}

/// Writes the record, creating its directory. A concurrent GC may remove the (empty)
/// directory between the two steps: then both are tried again.
fn write_record(path: &std::path::Path, kind: DriverKind) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                context: format!("create {}", dir.display()),
                source,
            })?;
        }
        match std::fs::write(path, kind.to_string()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 5 => continue,
            Err(source) => {
                return Err(Error::Io {
                    context: format!("record the firewall driver in {}", path.display()),
                    source,
                })
            }
        }
    }
}

/// The driver ADD recorded for `att`, or `kind` when there is no record.
pub fn recorded(att: &Attachment<'_>, kind: DriverKind) -> DriverKind {
    std::fs::read_to_string(att.path())
        .ok()
        .and_then(|s| s.trim().parse::<DriverKind>().ok())
        .unwrap_or(kind)
        .resolve()
}

/// DEL: the recorded driver (else the configured one).
pub fn for_del(att: &Attachment<'_>, kind: DriverKind) -> Box<dyn FirewallDriver> {
    driver(recorded(att, kind))
}

/// Drops `att`'s record (after its DEL); absent is fine. The network's directory stays
/// (a concurrent ADD may be about to write into it); GC removes it when empty.
pub fn forget(att: &Attachment<'_>) {
    let _ = std::fs::remove_file(att.path());
}

/// GC: drops the records of `plugin`'s attachments in `network` not among `valid`
/// (containerID, ifname); the kinds they named, for cleaning up with those drivers too.
pub fn gc(plugin: &str, network: &str, valid: &[(String, String)]) -> Vec<DriverKind> {
    let dir = state_dir().join(plugin).join(network);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut kinds = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = match name.rsplit_once('.') {
            Some((cid, ifname)) => !valid.iter().any(|(c, i)| c == cid && i == ifname),
            None => true,
        };
        if stale {
            if let Some(k) = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<DriverKind>().ok())
            {
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(&dir);
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_setting_names_a_driver_or_is_refused_by_field() {
        assert_eq!(
            configured(Some(&json!("iptables"))).unwrap(),
            DriverKind::Iptables
        );
        assert_eq!(configured(Some(&json!("auto"))).unwrap(), DriverKind::Auto);
        let e = configured(Some(&json!("ipfw"))).unwrap_err().to_string();
        assert!(e.contains("\"firewall\""), "{e}");
        assert!(configured(Some(&json!(3))).is_err());
    }

    #[test]
    fn records_outlive_a_changed_setting_until_forgotten() {
        let dir = std::env::temp_dir().join(format!("reef-choice-{}", std::process::id()));
        // SAFETY of set_var: this test is the only one in this binary touching the variable.
        std::env::set_var(STATE_DIR_ENV, &dir);
        let att = Attachment {
            plugin: "reef-bridge",
            network: "n1",
            container_id: "c1",
            ifname: "eth0",
        };
        for_add(&att, DriverKind::Iptables).unwrap();
        assert_eq!(recorded(&att, DriverKind::Nftables), DriverKind::Iptables);
        assert_eq!(
            gc("reef-bridge", "n1", &[("c1".into(), "eth0".into())]),
            vec![]
        );
        assert_eq!(recorded(&att, DriverKind::Nftables), DriverKind::Iptables);
        forget(&att);
        assert_eq!(recorded(&att, DriverKind::Nftables), DriverKind::Nftables);
        for_add(&att, DriverKind::Iptables).unwrap();
        assert_eq!(gc("reef-bridge", "n1", &[]), vec![DriverKind::Iptables]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
