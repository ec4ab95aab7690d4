//! The CNI environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`) and stdin through reef-cni's dispatcher, as every plugin's
//! `main` runs it. The input is an invocation as text: `KEY=VALUE` lines, an empty line,
//! then stdin. A probe plugin checks what the dispatcher hands a verb.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reef_cni::skel::{dispatch, parse_cni_args, validate_ifname, Invocation, Outcome};
use reef_cni::{CmdArgs, CniError, CniResult, Command, Plugin};
use std::collections::HashMap;

/// Checks the arguments a verb gets; ADD answers with the prevResult it was given.
struct Probe;

impl Probe {
    fn look(&self, a: &CmdArgs) {
        if matches!(a.command, Command::Add | Command::Del | Command::Check) {
            assert!(!a.container_id.is_empty(), "{a:?}");
            assert!(validate_ifname(&a.ifname).is_ok(), "{a:?}");
        }
        // CNI_ARGS as the plugin sees them survive printing and parsing again.
        let again = parse_cni_args(&a.raw_args()).expect("raw_args parses");
        assert_eq!(again, a.args);
        for (k, v) in &a.args {
            let first = a
                .args
                .iter()
                .find(|(k2, _)| k2 == k)
                .map(|(_, v)| v.as_str());
            assert_eq!(a.arg(k), first);
            assert!(!k.is_empty() && !k.contains(';') && !v.contains(';'));
        }
    }
}

impl Plugin for Probe {
    fn add(&self, a: &CmdArgs) -> Result<CniResult, CniError> {
        self.look(a);
        Ok(a.conf.prev_result.clone().unwrap_or_default())
    }
    fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
        self.look(a);
        Ok(())
    }
    fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
        self.look(a);
        Ok(())
    }
    fn gc(&self, a: &CmdArgs) -> Result<(), CniError> {
        self.look(a);
        a.conf.valid_attachments().map(drop)
    }
    fn status(&self, a: &CmdArgs) -> Result<(), CniError> {
        self.look(a);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let (head, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let env: HashMap<String, String> = head
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(a) = env.get("CNI_ARGS") {
        if let Ok(pairs) = parse_cni_args(a) {
            let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert_eq!(parse_cni_args(&joined.join(";")).ok(), Some(pairs));
        }
    }
    let inv = Invocation {
        env,
        stdin: stdin.to_vec(),
    };
    match dispatch(&Probe, &inv) {
        // What ADD prints is a result the runtime (or the next plugin) can read.
        Outcome::Ok(Some(v)) if v.get("supportedVersions").is_none() => {
            if let Err(e) = CniResult::from_json(&v) {
                panic!("printed result does not parse: {e}: {v}");
            }
        }
        Outcome::Err(e, version) => {
            let _ = e.to_json(&version).to_string();
        }
        _ => {}
    }
});
