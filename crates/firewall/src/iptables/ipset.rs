//! ipsets (Debian's `ipset`): everything that grows with pods lives in sets, so a pod's ADD
//! or DEL changes set members, never a rule, and a rule matches any number of pods in one
//! hash lookup. Sets are independent of the iptables backend (both match them through
//! xt_set). Changes go through `ipset restore` (one process for any number of commands);
//! `-exist` makes create/add idempotent and del of an absent member a no-op.

use super::backend::run;
use crate::Result;
use std::collections::BTreeSet;
use std::process::Command;

/// ipset's name limit (IPSET_MAXNAMELEN less the NUL).
pub const NAME_MAX: usize = 31;

/// Runs `script` (ipset commands, one per line) in one `ipset restore -exist`.
pub fn restore(script: &str, context: &str) -> Result<()> {
    if script.trim().is_empty() {
        return Ok(());
    }
    run(
        Command::new("ipset").args(["restore", "-exist"]),
        Some(script),
        "ipset",
        context,
    )
    .map(|_| ())
}

/// The members of `set` as ipset prints them, or `None` when it does not exist.
pub fn members(set: &str) -> Result<Option<BTreeSet<String>>> {
    match run(
        Command::new("ipset").args(["save", set]),
        None,
        "ipset",
        "read a set",
    ) {
        Ok(out) => Ok(Some(
            out.lines()
                .filter_map(|l| l.strip_prefix("add "))
                .filter_map(|l| l.split_whitespace().nth(1))
                .map(str::to_string)
                .collect(),
        )),
        // Absent, or ipset failed: the set list tells which.
        Err(e) => {
            if names()?.iter().any(|n| n == set) {
                Err(e)
            } else {
                Ok(None)
            }
        }
    }
}

/// Every set's name (to find Reef's by prefix).
pub fn names() -> Result<Vec<String>> {
    let out = run(
        Command::new("ipset").args(["list", "-n"]),
        None,
        "ipset",
        "list sets",
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Script lines that make `set` hold exactly `members`, atomically for the rules that use
/// it: fill a temporary set, swap it in, destroy the old contents.
pub fn replace_script(set: &str, create_opts: &str, members: &BTreeSet<String>) -> String {
    let tmp = temporary_name(set);
    let mut s = format!("create {set} {create_opts}\ncreate {tmp} {create_opts}\nflush {tmp}\n");
    for m in members {
        s += &format!("add {tmp} {m}\n");
    }
    s += &format!("swap {tmp} {set}\ndestroy {tmp}\n");
    s
}

fn temporary_name(set: &str) -> String {
    let mut t = format!("{set}~");
    if t.len() > NAME_MAX {
        t = format!("{}~", &set[..NAME_MAX - 1]);
    }
    t
}

/// Destroys the sets (absent ones are fine; a set a rule still uses is an error).
pub fn destroy_script(sets: &[String]) -> String {
    let existing: BTreeSet<String> = names().unwrap_or_default().into_iter().collect();
    sets.iter()
        .filter(|s| existing.contains(*s))
        .map(|s| format!("destroy {s}\n"))
        .collect()
}
