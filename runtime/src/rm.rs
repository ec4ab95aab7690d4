//! `reef-run rm NAME...`: the teardown reef-run could not do because it was killed.
//!
//! Holding the entry's lock proves its reef-run is gone. Then: the container's leftover
//! processes are killed (by the recorded PID, checked against its recorded start time and
//! signalled through a pidfd, so a recycled PID is never hit), CNI DEL runs from the recorded
//! network list with the cached result, and the namespace pin, the cache entry and the state
//! are removed. If DEL fails, the entry stays for another try.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cni::{Attachment, Cache, Chain, NetworkList};
use crate::error::{Error, Result};
use crate::paths::Paths;
use crate::state::{self, Found, State};
use crate::{netns, ps, sys};

/// How long `rm --force` waits for a running container's reef-run to finish its teardown.
const FORCE_WAIT: Duration = Duration::from_secs(30);
/// How long a SIGKILLed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

pub fn rm(paths: &Paths, names: &[String], force: bool) -> Result<i32> {
    let mut failed = false;
    for name in names {
        match rm_one(paths, name, force) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("reef-run: rm {name}: {e}");
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}

fn rm_one(paths: &Paths, name: &str, force: bool) -> Result<()> {
    let found = paths
        .state
        .find(name)?
        .ok_or_else(|| Error::NoSuchContainer(name.to_owned()))?;
    let found = if found.lock.is_some() {
        found
    } else if !force {
        let pid = found.state.as_ref().map(|s| s.run_pid).unwrap_or(0);
        return Err(Error::Container {
            name: name.to_owned(),
            msg: format!(
                "is running (reef-run PID {pid}); stop it, or use `reef-run rm --force {name}`"
            ),
        });
    } else {
        match stop_running(paths, name, found.state.as_ref())? {
            Some(left) => left,
            // Its reef-run tore everything down itself.
            None => return Ok(()),
        }
    };
    cleanup(paths, name, found)
}

/// `--force` on a running container: SIGKILL its command, so its reef-run sees the exit and
/// tears down as usual; wait for that. Returns what is left if that reef-run died too.
fn stop_running(paths: &Paths, name: &str, st: Option<&State>) -> Result<Option<Found>> {
    match st {
        Some(State {
            pid: Some(pid),
            pid_start: Some(start),
            ..
        }) => kill_verified(*pid, *start, Signal::SIGKILL)?,
        // Still starting: reef-run aborts cleanly on SIGTERM.
        Some(st) => kill_verified(st.run_pid, st.run_start, Signal::SIGTERM)?,
        None => {}
    }
    let deadline = Instant::now() + FORCE_WAIT;
    loop {
        match paths.state.find(name)? {
            None => return Ok(None),
            Some(f) if f.lock.is_some() => return Ok(Some(f)),
            Some(_) if Instant::now() >= deadline => {
                return Err(Error::Container {
                    name: name.to_owned(),
                    msg: format!(
                        "its reef-run did not finish within {}s",
                        FORCE_WAIT.as_secs()
                    ),
                })
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn cleanup(paths: &Paths, name: &str, found: Found) -> Result<()> {
    let Some(st) = &found.state else {
        return state::remove_entry_dir(&found.dir);
    };
    if let (Some(pid), Some(start)) = (st.pid, st.pid_start) {
        kill_verified(pid, start, Signal::SIGKILL)?;
    }
    let pin = found.dir.join("netns");
    if ps::needs_rm(st) {
        del(paths, name, st, &pin)?;
    }
    netns::unpin(&pin)?;
    state::remove_entry_dir(&found.dir)
}

/// CNI DEL from what the container recorded; the pinned namespace if it is still there (it
/// is, unless reef-run died before pinning it), else an empty CNI_NETNS, as `ctr` sends.
fn del(paths: &Paths, name: &str, st: &State, pin: &std::path::Path) -> Result<()> {
    let Some(net) = &st.network else {
        return Ok(());
    };
    let list = NetworkList::parse(
        net.conflist.clone().into_bytes(),
        &format!("the network recorded for {name}"),
    )?;
    let mut search = net.cni_path.clone();
    for d in &paths.cni_search {
        if !search.contains(d) {
            search.push(d.clone());
        }
    }
    let chain = Chain::resolve(list, &search)?;
    let att = Attachment {
        container_id: st.id.clone(),
        netns: if netns::is_pinned(pin) {
            pin.to_string_lossy().into_owned()
        } else {
            String::new()
        },
        ifname: net.ifname.clone(),
        cni_args: net.cni_args.clone(),
        capability_args: net.capability_args.clone(),
    };
    let cache = Cache::new(&net.cache_dir);
    let prev = cache
        .read(&net.name, &st.id, &net.ifname)
        .and_then(|c| c.result);
    chain.del(&att, prev.as_ref())?;
    cache.remove(&net.name, &st.id, &net.ifname)
}

/// Sends `sig` to `pid` if it is still the process that started at `start`, and for SIGKILL
/// waits until it is gone. Through a pidfd: between the check and the signal the PID cannot
/// be recycled.
fn kill_verified(pid: i32, start: u64, sig: Signal) -> Result<()> {
    let fd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(Error::io(format!("pidfd_open {pid}"), e)),
    };
    if !sys::is_same_process(pid, start) {
        return Ok(());
    }
    sys::pidfd_kill(&fd, sig).map_err(|e| Error::io(format!("kill {pid}"), e))?;
    if sig == Signal::SIGKILL && !sys::pidfd_wait(&fd, KILL_WAIT) {
        return Err(Error::Container {
            name: pid.to_string(),
            msg: format!(
                "process {pid} survived SIGKILL for {}s",
                KILL_WAIT.as_secs()
            ),
        });
    }
    Ok(())
}
