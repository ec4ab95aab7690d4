//! The iptables binaries Reef drives: which backend (`iptables-nft` or `iptables-legacy`),
//! and the two ways it talks to them: `iptables-restore --noflush` (one atomic table update
//! per change, whatever its size) and `iptables-save` (reading Reef's chains back).
//!
//! The two backends keep separate rulesets in the kernel and each is blind to the other's,
//! so rules installed through the wrong one are silently bypassed or reordered
//! (kubernetes#71305). Reef follows the backend the host's other software already uses:
//! the one whose ruleset holds more rules, nft on a tie (Debian's default), legacy when
//! nf_tables is unusable; nft at once when no legacy table exists in the namespace. `REEF_IPTABLES_BACKEND=nft|legacy` overrides the detection.

use crate::{Error, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// Environment variable forcing the iptables backend (`nft` or `legacy`).
pub const BACKEND_ENV: &str = "REEF_IPTABLES_BACKEND";

/// Seconds `-w` waits for the xtables lock (held by any other iptables-legacy writer).
const LOCK_WAIT_SECS: &str = "10";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft`: the xtables rules in nf_tables tables (`ip filter`, `ip nat`, ...).
    Nft,
    /// `iptables-legacy`: the x_tables blobs, for hosts without nf_tables.
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &std::net::IpAddr) -> Family {
        if ip.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// ipset's family keyword.
    pub fn ipset(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }

    /// The whole address space, for rules that need "everything of this family".
    pub fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    pub fn parse(s: &str) -> Option<Backend> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nft" | "iptables-nft" => Some(Backend::Nft),
            "legacy" | "iptables-legacy" => Some(Backend::Legacy),
            _ => None,
        }
    }

    /// `iptables-nft-restore`, `ip6tables-legacy-save`, ...
    fn binary(self, family: Family, verb: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        if verb.is_empty() {
            format!("{base}-{}", self.name())
        } else {
            format!("{base}-{}-{verb}", self.name())
        }
    }

    /// The backend to use here: `REEF_IPTABLES_BACKEND`, else the host's (see the module).
    pub fn detect() -> Result<Backend> {
        if let Ok(v) = std::env::var(BACKEND_ENV) {
            if !v.trim().is_empty() {
                return Backend::parse(&v).ok_or(Error::UnknownBackend(v));
            }
        }
        // Fast path: no legacy table was ever used in this network namespace (the kernel
        // lists the x_tables it has instantiated here), so nothing can be in legacy rules:
        // nft, when nf_tables answers. Saves four save processes per plugin call.
        let legacy_unused = ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
            .iter()
            .all(|p| std::fs::read_to_string(p).map_or(true, |t| t.trim().is_empty()));
        if legacy_unused && crate::driver::nftables_available() {
            return Ok(Backend::Nft);
        }
        let count = |b: Backend| -> Option<usize> {
            let mut n = 0;
            for f in [Family::V4, Family::V6] {
                let out = Command::new(b.binary(f, "save"))
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .ok()?;
                if !out.status.success() {
                    return None;
                }
                n += String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count();
            }
            Some(n)
        };
        match (count(Backend::Nft), count(Backend::Legacy)) {
            (Some(nft), Some(legacy)) if legacy > nft => Ok(Backend::Legacy),
            (Some(_), _) => Ok(Backend::Nft),
            (None, Some(_)) => Ok(Backend::Legacy),
            (None, None) => Err(Error::Check(
                "neither iptables-nft-save nor iptables-legacy-save runs here \
                 (is the iptables package installed?)"
                    .into(),
            )),
        }
    }

    /// Applies `payload` (iptables-restore input: `*table` sections ending in `COMMIT`)
    /// with `--noflush`: only the chains it declares are flushed, the host's other rules
    /// stay, and each table's section is one atomic replacement in the kernel.
    pub fn restore(self, family: Family, payload: &str, context: &str) -> Result<()> {
        let bin = self.binary(family, "restore");
        run(
            Command::new(&bin).args(["-w", LOCK_WAIT_SECS, "--noflush"]),
            Some(payload),
            &bin,
            context,
        )
        .map(|_| ())
    }

    /// `iptables-save -t table`: the table's chains and rules, canonical form.
    pub fn save(self, family: Family, table: &str) -> Result<String> {
        let bin = self.binary(family, "save");
        run(
            Command::new(&bin).args(["-t", table]),
            None,
            &bin,
            "read rules",
        )
    }

    /// One `iptables` command (`-C` probes and the like, where one call is what is needed).
    pub fn iptables(self, family: Family, args: &[&str]) -> Result<String> {
        let bin = self.binary(family, "");
        let mut cmd = Command::new(&bin);
        cmd.args(["-w", LOCK_WAIT_SECS]).args(args);
        run(&mut cmd, None, &bin, &args.join(" "))
    }
}

/// Runs `cmd` with `stdin`; its stdout, or `Error::Nft`-like context with its stderr.
pub(crate) fn run(
    cmd: &mut Command,
    stdin: Option<&str>,
    bin: &str,
    context: &str,
) -> Result<String> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Io {
            context: format!("run {bin} (are the iptables and ipset packages installed?)"),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| Error::Io {
                context: format!("write {bin} input"),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Io {
        context: format!("wait for {bin}"),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: bin.to_string(),
            context: context.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One table's section of an iptables-restore payload. Declaring a chain (`:NAME - [0:0]`)
/// creates it or, with `--noflush`, empties it; the built-in chains are never declared, so
/// their policies and the host's rules in them stay.
#[derive(Debug, Default)]
pub struct Section {
    pub table: &'static str,
    declared: Vec<String>,
    rules: Vec<String>,
    deleted: Vec<String>,
}

impl Section {
    pub fn new(table: &'static str) -> Section {
        Section {
            table,
            ..Section::default()
        }
    }

    /// Creates `chain`, or empties it: its rules are then exactly the `rule`s that follow.
    pub fn chain(&mut self, chain: &str) {
        self.declared.push(format!(":{chain} - [0:0]"));
    }

    /// A rule line without `-A`: `CHAIN args...`.
    pub fn rule(&mut self, line: impl Into<String>) {
        self.rules.push(format!("-A {}", line.into()));
    }

    /// A raw line (`-I ...`, `-D ...`).
    pub fn line(&mut self, line: impl Into<String>) {
        self.rules.push(line.into());
    }

    /// Deletes `chain` (declared too, so it is emptied first and exists to be deleted).
    pub fn delete_chain(&mut self, chain: &str) {
        self.chain(chain);
        self.deleted.push(format!("-X {chain}"));
    }

    pub fn declares(&self, chain: &str) -> bool {
        let decl = format!(":{chain} - [0:0]");
        self.declared.contains(&decl)
    }

    pub fn is_empty(&self) -> bool {
        self.declared.is_empty() && self.rules.is_empty() && self.deleted.is_empty()
    }

    pub fn render(&self, out: &mut String) {
        if self.is_empty() {
            return;
        }
        out.push('*');
        out.push_str(self.table);
        out.push('\n');
        for l in self.declared.iter().chain(&self.rules).chain(&self.deleted) {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
}

/// Renders sections into one payload (one `iptables-restore` call for all tables).
pub fn payload(sections: &[Section]) -> String {
    let mut s = String::new();
    for sec in sections {
        sec.render(&mut s);
    }
    s
}

/// A quoted `--comment` argument (iptables-restore splits on spaces, honours `"`).
pub fn comment(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .take(255)
        .collect();
    format!("-m comment --comment \"{clean}\"")
}

/// Reef's chains and their rules from an `iptables-save` dump: chain -> rule lines
/// (without `-A CHAIN `), for chains whose name starts with `prefix`; also jump rules in
/// other chains that target a `prefix` chain are listed under the chain they are in.
pub fn chains_of(dump: &str, prefix: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in dump.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(prefix) {
                out.entry(name.to_string()).or_default();
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
            if chain.starts_with(prefix) || rest.contains(&format!("-j {prefix}")) {
                out.entry(chain.to_string())
                    .or_default()
                    .push(rest.to_string());
            }
        }
    }
    out
}

/// A stable chain name: `prefix` and 13 base32 digits of FNV-1a 64 of `parts` (kube-proxy
/// names its chains by a hash the same way, so a name never depends on order or count).
/// With a prefix of at most 15 bytes it fits iptables' 28-byte limit.
pub fn chain_name(prefix: &str, parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    const DIGITS: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut s = String::from(prefix);
    for i in 0..13 {
        s.push(DIGITS[((h >> (i * 5)) & 31) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_are_stable_and_fit() {
        let a = chain_name("REEF-SVC-", &["10.96.0.1", "tcp", "80"]);
        assert_eq!(a, chain_name("REEF-SVC-", &["10.96.0.1", "tcp", "80"]));
        assert_ne!(a, chain_name("REEF-SVC-", &["10.96.0.1", "tcp", "81"]));
        assert_ne!(chain_name("X", &["ab", "c"]), chain_name("X", &["a", "bc"]));
        assert!(chain_name("REEF-MASQ-6-XY-", &["x"]).len() <= 28);
    }

    #[test]
    fn sections_render_declarations_before_rules_and_deletions_last() {
        let mut s = Section::new("nat");
        s.chain("REEF-A");
        s.rule("REEF-A -j RETURN");
        s.delete_chain("REEF-B");
        assert_eq!(
            payload(&[s, Section::new("filter")]),
            "*nat\n:REEF-A - [0:0]\n:REEF-B - [0:0]\n-A REEF-A -j RETURN\n-X REEF-B\nCOMMIT\n"
        );
    }

    #[test]
    fn comments_cannot_break_out_of_their_quotes() {
        assert_eq!(comment("a\"b\\c"), "-m comment --comment \"abc\"");
    }

    #[test]
    fn chains_of_lists_reef_chains_and_jumps_to_them() {
        let dump = "*nat\n:POSTROUTING ACCEPT [0:0]\n:REEF-X - [0:0]\n:OTHER - [0:0]\n\
                    -A POSTROUTING -j REEF-X\n-A POSTROUTING -j OTHER\n-A REEF-X -j MASQUERADE\nCOMMIT\n";
        let c = chains_of(dump, "REEF-");
        assert_eq!(c["POSTROUTING"], vec!["-j REEF-X"]);
        assert_eq!(c["REEF-X"], vec!["-j MASQUERADE"]);
        assert!(!c.contains_key("OTHER"));
    }
}
