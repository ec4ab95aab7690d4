//! `reef-run ps`: the containers of the state directory.
//!
//! Status comes from each entry's lock: held means its reef-run is alive. A free lock means
//! reef-run is gone without finishing its teardown (SIGKILL). An entry that attached a network
//! may still hold an address, a veth, firewall entries and a cache entry: it is shown as
//! `dead (needs rm)`. An entry with nothing to undo (a `--join` container) is stale and is
//! dropped on the way.

use serde::Serialize;

use crate::cli::{Output, PortMapping};
use crate::error::Result;
use crate::paths::Paths;
use crate::state::{self, State};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    name: String,
    id: String,
    status: &'static str,
    /// The container's PID 1 as the host sees it.
    pid: Option<i32>,
    /// reef-run's PID.
    run_pid: i32,
    hostname: String,
    network: Option<String>,
    join: Option<String>,
    ips: Vec<String>,
    ports: Vec<PortMapping>,
    labels: std::collections::BTreeMap<String, String>,
    command: Vec<String>,
    created: u64,
}

pub const RUNNING: &str = "running";
pub const CREATING: &str = "creating";
pub const DEAD: &str = "dead (needs rm)";

pub fn ps(paths: &Paths, output: Output) -> Result<i32> {
    let mut rows = Vec::new();
    for found in paths.state.list()? {
        let Some(st) = found.state else {
            // Claimed a moment ago; its state follows.
            continue;
        };
        let status = match &found.lock {
            None if st.started => RUNNING,
            None => CREATING,
            Some(_) if needs_rm(&st) => DEAD,
            Some(_) => {
                // Stale and nothing to undo: we hold its lock, so nobody else is using it.
                let _ = state::remove_entry_dir(&found.dir);
                continue;
            }
        };
        rows.push(row(st, status));
    }
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_else(|_| "[]".into())
        ),
        Output::Table => print_table(&rows),
    }
    Ok(0)
}

/// Whether a dead entry may still hold network state: it attaches its own network (ADD may
/// have run, even half-way; DEL is harmless if it did not).
pub fn needs_rm(st: &State) -> bool {
    st.network.is_some()
}

fn row(st: State, status: &'static str) -> Row {
    Row {
        name: st.name,
        id: st.id,
        status,
        pid: st.pid,
        run_pid: st.run_pid,
        hostname: st.hostname,
        network: st.network.map(|n| n.name),
        join: st.join,
        ips: st.ips,
        ports: st.ports,
        labels: st.labels,
        command: st.command,
        created: st.created,
    }
}

fn print_table(rows: &[Row]) {
    let header = ["NAME", "STATUS", "PID", "IP", "PORTS", "COMMAND"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.status.to_owned(),
                r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                if r.ips.is_empty() {
                    "-".into()
                } else {
                    r.ips
                        .iter()
                        .map(|c| c.split('/').next().unwrap_or(c))
                        .collect::<Vec<_>>()
                        .join(",")
                },
                if r.ports.is_empty() {
                    "-".into()
                } else {
                    r.ports
                        .iter()
                        .map(|p| {
                            let ip = p
                                .host_ip
                                .as_deref()
                                .map(|i| format!("{i}:"))
                                .unwrap_or_default();
                            format!("{ip}{}->{}/{}", p.host_port, p.container_port, p.protocol)
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                },
                r.command.join(" "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, cell) in c.iter().enumerate() {
            if i + 1 == c.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s
    };
    println!("{}", line(&header.map(String::from)));
    for c in &cells {
        println!("{}", line(c));
    }
}
