//! `reef-run [OPTIONS] -- CMD ARGS...`: the life of one container.
//!
//! 1. Everything that can be checked without creating anything is checked first (names,
//!    rootfs, conflist, plugins present, plugins' VERSION), so those failures leave nothing.
//! 2. The name is claimed (state entry, locked for reef-run's life).
//! 3. The container's process is cloned into its namespaces; its network namespace is pinned.
//! 4. CNI ADD (owner) — the child sets up its mounts meanwhile — then the cache and state.
//! 5. The child is released and execs CMD; reef-run waits, forwarding signals.
//! 6. Teardown: CNI DEL with the cached result, unpin, remove the cache entry and the state.
//!
//! From step 2 on, every exit path goes through [`Session::teardown`]: the command's exit or
//! death by any signal (SIGKILL included: reef-run is its parent and sees it), a signal to
//! reef-run (forwarded; the command's exit follows), or a failure of reef-run's own. The one
//! path reef-run cannot cover is its own SIGKILL; then the container dies with it
//! (PR_SET_PDEATHSIG), `ps` shows the entry as dead, and `reef-run rm` runs the same teardown
//! from the state and the cache.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use serde_json::{json, Map, Value};

use crate::cli::{validate_hostname, validate_name, RunArgs};
use crate::cni::{self, default, Attachment, CachedInfo, Chain, NetworkList};
use crate::error::{Context, Error, Result, EXIT_RUNTIME};
use crate::paths::Paths;
use crate::spawn::{self, Container};
use crate::state::{self, Entry, NetState, State};
use crate::{log, netns, rootfs, sys};

/// The network side of a run.
enum Net {
    /// This container attaches the network (and detaches it on exit).
    Own(Box<Chain>),
    /// This container lives in another one's network namespace.
    Join(Pod),
}

/// A running container joined with `--join`.
struct Pod {
    name: String,
    netns: File,
    ips: Vec<String>,
}

pub fn run(args: RunArgs, paths: &Paths) -> Result<i32> {
    // From here on SIGINT/SIGTERM/SIGHUP/SIGQUIT wait in the queue: one arriving before the
    // command runs aborts the start cleanly (see Session::start); after that it is forwarded.
    let sigmask = sys::block_signals().ctx(|| "block signals".into())?;

    // 1. Checks that create nothing.
    if let Some(n) = &args.name {
        validate_name(n).map_err(Error::Usage)?;
    }
    if let Some(h) = &args.hostname {
        validate_hostname(h).map_err(Error::Usage)?;
    }
    check_ports(&args)?;
    let rootfs = args.rootfs.as_deref().map(rootfs::check).transpose()?;
    let argv = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| Error::Usage("the command contains a NUL byte".into()))?;
    let net = network(&args, paths)?;

    // 2. Identity and state.
    let id = sys::random_id().ctx(|| "generate a container ID".into())?;
    let name = args.name.clone().unwrap_or_else(|| id[..12].to_owned());
    let attachment = match &net {
        Net::Own(_) => Some(attachment(&id, &name, &args)),
        Net::Join(_) => None,
    };
    let state = initial_state(
        &args,
        paths,
        &net,
        attachment.as_ref(),
        id,
        name,
        rootfs.clone(),
    );
    let entry = paths.state.create(state)?;
    log::step(|| format!("state entry {} claimed", entry.dir.display()));

    // 3-6.
    let (chain, join_netns) = match &net {
        Net::Own(chain) => (Some(chain.as_ref()), None),
        Net::Join(pod) => (
            None,
            Some(pod.netns.try_clone().ctx(|| "dup the pod's netns".into())?),
        ),
    };
    let mut session = Session {
        entry,
        chain,
        attachment,
        cache: paths.cache.clone(),
        container: None,
        pinned: false,
        needs_del: false,
        result: None,
    };
    if let Err(e) = session.start(join_netns, rootfs, argv, sigmask) {
        session.abort();
        return match session.teardown() {
            Ok(()) => Err(e),
            Err(te) => Err(Error::Many(vec![e, te])),
        };
    }
    log::step(|| "command started".into());
    let code = session.wait(Duration::from_secs(args.stop_timeout));
    log::step(|| format!("command exited ({code})"));
    if let Err(e) = session.teardown() {
        // The command's status still is reef-run's: the failure is reported, and the entry
        // is left for `reef-run rm`.
        eprintln!("reef-run: {e}");
    }
    log::step(|| "torn down".into());
    Ok(code)
}

/// The network to attach (conflist or default, plugins found and VERSION-checked), or the
/// pod to join.
fn network(args: &RunArgs, paths: &Paths) -> Result<Net> {
    if let Some(owner) = &args.join {
        return Ok(Net::Join(open_pod(paths, owner)?));
    }
    let list = match &args.net {
        Some(p) => NetworkList::load(p)?,
        None => default::network(&paths.ipam_data_dir)?,
    };
    if !args.ports.is_empty() && !list.declares("portMappings") {
        return Err(Error::Usage(format!(
            "-p: no plugin of network {} ({}) declares the portMappings capability",
            list.name, list.source
        )));
    }
    let chain = Chain::resolve(list, &paths.cni_search)?;
    chain.check_versions(Some(&paths.state.versions_file()))?;
    log::step(|| format!("network {}: plugins found, VERSION checked", chain.name()));
    Ok(Net::Own(Box::new(chain)))
}

/// What the state entry records from the start: enough for `ps`, and for `rm` to run DEL
/// without this command line or environment.
fn initial_state(
    args: &RunArgs,
    paths: &Paths,
    net: &Net,
    att: Option<&Attachment>,
    id: String,
    name: String,
    rootfs: Option<PathBuf>,
) -> State {
    let run_pid = std::process::id() as i32;
    let (network, join, ips) = match (net, att) {
        (Net::Own(chain), Some(att)) => (
            Some(NetState {
                name: chain.name().to_owned(),
                conflist: String::from_utf8_lossy(&chain.list.bytes).into_owned(),
                cache_dir: paths.cache.dir.clone(),
                cni_path: paths.cni_search.clone(),
                ifname: att.ifname.clone(),
                cni_args: att.cni_args.clone(),
                capability_args: att.capability_args.clone(),
            }),
            None,
            Vec::new(),
        ),
        (Net::Join(pod), _) => (None, Some(pod.name.clone()), pod.ips.clone()),
        (Net::Own(_), None) => (None, None, Vec::new()),
    };
    State {
        id,
        hostname: args.hostname.clone().unwrap_or_else(|| name.clone()),
        name,
        run_pid,
        run_start: sys::proc_start_time(run_pid).unwrap_or(0),
        pid: None,
        pid_start: None,
        started: false,
        network,
        join,
        ips,
        ports: args.ports.clone(),
        labels: args.labels.iter().cloned().collect(),
        command: args
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        rootfs,
        created: sys::now_unix(),
    }
}

/// libcni's RuntimeConf for this container. CNI_ARGS as containerd's CRI plugin passes them
/// (IgnoreUnknown first, so plugins that know none of the keys accept them); `portMappings`
/// and `labels` as capability arguments.
fn attachment(id: &str, name: &str, args: &RunArgs) -> Attachment {
    let mut caps = Map::new();
    if !args.ports.is_empty() {
        caps.insert("portMappings".into(), json!(args.ports));
    }
    if !args.labels.is_empty() {
        let labels: BTreeMap<&str, &str> = args
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        caps.insert("labels".into(), json!({ "labels": labels }));
    }
    Attachment {
        container_id: id.to_owned(),
        netns: String::new(),
        ifname: cni::IFNAME.to_owned(),
        cni_args: vec![
            ["IgnoreUnknown".into(), "1".into()],
            ["K8S_POD_NAMESPACE".into(), "default".into()],
            ["K8S_POD_NAME".into(), name.to_owned()],
        ],
        capability_args: caps,
    }
}

fn check_ports(args: &RunArgs) -> Result<()> {
    if args.join.is_some() && !args.ports.is_empty() {
        return Err(Error::Usage(
            "-p cannot be used with --join: publish the pod's ports on its first container".into(),
        ));
    }
    for (i, a) in args.ports.iter().enumerate() {
        if args.ports[..i].iter().any(|b| {
            b.host_port == a.host_port && b.protocol == a.protocol && b.host_ip == a.host_ip
        }) {
            return Err(Error::Usage(format!(
                "-p: host port {}/{} is given twice",
                a.host_port, a.protocol
            )));
        }
    }
    Ok(())
}

/// The running container `owner`, whose network namespace a `--join` container enters.
fn open_pod(paths: &Paths, owner: &str) -> Result<Pod> {
    let found = paths
        .state
        .find(owner)?
        .ok_or_else(|| Error::NoSuchContainer(owner.to_owned()))?;
    let not_joinable = |msg: &str| Error::Container {
        name: owner.to_owned(),
        msg: msg.to_owned(),
    };
    if found.lock.is_some() {
        return Err(not_joinable(
            "cannot be joined: its reef-run is gone (clean it up with `reef-run rm`)",
        ));
    }
    let st = found
        .state
        .ok_or_else(|| not_joinable("cannot be joined: it is still starting"))?;
    if let Some(pod_owner) = &st.join {
        // A pod has one network namespace, the first container's: join that one.
        return open_pod(paths, pod_owner);
    }
    let pin = found.dir.join("netns");
    if !st.started || !netns::is_pinned(&pin) {
        return Err(not_joinable(
            "cannot be joined: its network is not ready yet",
        ));
    }
    let netns = File::open(&pin).ctx(|| format!("open {}", pin.display()))?;
    Ok(Pod {
        name: owner.to_owned(),
        netns,
        ips: st.ips,
    })
}

/// One container from the claimed name to the removed state.
struct Session<'a> {
    entry: Entry,
    chain: Option<&'a Chain>,
    attachment: Option<Attachment>,
    cache: cni::Cache,
    container: Option<Container>,
    /// The network namespace is pinned under the entry.
    pinned: bool,
    /// Some plugin may hold state for this container: DEL must run.
    needs_del: bool,
    /// The chain's ADD result (also in the cache, which DEL falls back to).
    result: Option<Value>,
}

impl Session<'_> {
    /// Steps 3-5: clone, pin, ADD, cache, state, release the command.
    fn start(
        &mut self,
        join_netns: Option<File>,
        rootfs: Option<PathBuf>,
        argv: Vec<CString>,
        sigmask: SigSet,
    ) -> Result<()> {
        let spec = spawn::Spec {
            join_netns: join_netns.map(Into::into),
            hostname: self.entry.state.hostname.clone(),
            rootfs: rootfs.clone(),
            hosts_file: self.entry.dir.join("hosts"),
            resolv_file: self.entry.dir.join("resolv.conf"),
            argv,
            sigmask,
            entry_lock: self.entry.lock_fd(),
        };
        let container = spawn::spawn(&spec)?;
        let pid = container.pid.as_raw();
        self.container = Some(container);
        self.entry.state.pid = Some(pid);
        self.entry.state.pid_start = sys::proc_start_time(pid);
        // Not saved yet: until the command runs, a killed reef-run takes the child with it
        // (PR_SET_PDEATHSIG, or EOF on `go`), so `rm` has no process to look for.
        log::step(|| format!("cloned container process {pid}"));

        if let (Some(chain), Some(att)) = (self.chain, self.attachment.as_mut()) {
            let pin = self.entry.netns_path();
            netns::pin(pid, &pin)?;
            self.pinned = true;
            att.netns = pin.to_string_lossy().into_owned();
            self.needs_del = true;
            log::step(|| "network namespace pinned".into());
            let result = match chain.add(att) {
                Ok(r) => r,
                Err(f) => {
                    self.needs_del = !f.cleaned_up;
                    return Err(f.error);
                }
            };
            let cached = self.cache.write(&CachedInfo {
                kind: cni::cache::KIND.into(),
                container_id: att.container_id.clone(),
                config: chain.list.bytes.clone(),
                if_name: att.ifname.clone(),
                network_name: chain.name().to_owned(),
                cni_args: att.cni_args.clone(),
                capability_args: att.capability_args.clone(),
                result: Some(result.clone()),
            });
            self.entry.state.ips = result_ips(&result);
            let dns = result.get("dns").cloned();
            // Even if the cache could not be written, DEL gets the result.
            self.result = Some(result);
            cached?;
            log::step(|| "ADD done, result cached".into());
            if rootfs.is_some() {
                self.write_etc_files(dns.as_ref())?;
            }
        } else if rootfs.is_some() {
            self.write_etc_files(None)?;
        }

        if let Some(sig) = sys::pending_stop_signal() {
            return Err(Error::Start {
                msg: format!("received {sig} before the command started"),
                exit: 128 + sig as i32,
            });
        }
        if let Some(c) = self.container.as_mut() {
            c.start()?;
        }
        self.entry.state.started = true;
        // The command runs now: a state that cannot be written costs `ps` and `--join` their
        // view of it, not the container its life (teardown does not need it).
        if let Err(e) = self.entry.save() {
            eprintln!("reef-run: warning: {e}");
        }
        Ok(())
    }

    fn write_etc_files(&self, dns: Option<&Value>) -> Result<()> {
        let ips: Vec<IpAddr> = self
            .entry
            .state
            .ips
            .iter()
            .filter_map(|c| c.split('/').next()?.parse().ok())
            .collect();
        let hosts = rootfs::hosts_content(&self.entry.state.hostname, &ips);
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let resolv = rootfs::resolv_content(dns, &host_resolv);
        state::write_bytes_atomic(&self.entry.dir.join("hosts"), hosts.as_bytes())?;
        state::write_bytes_atomic(&self.entry.dir.join("resolv.conf"), resolv.as_bytes())
    }

    /// Kills and reaps the container's process after a failed start.
    fn abort(&mut self) {
        if let Some(c) = self.container.take() {
            let _ = kill(c.pid, Signal::SIGKILL);
            let _ = waitpid(c.pid, None);
        }
    }

    /// Step 5: waits for the command, forwarding stop signals; returns reef-run's exit status
    /// (the command's, or 128 + the signal that killed it).
    ///
    /// A forwarded signal starts a grace period (`--stop-timeout`) after which the command
    /// gets SIGKILL: PID 1 ignores signals it has no handler for, so without it a plain
    /// `sleep` would never stop. A second stop signal sends SIGKILL at once.
    fn wait(&mut self, grace: Duration) -> i32 {
        let Some(c) = self.container.take() else {
            return EXIT_RUNTIME;
        };
        let pid = c.pid;
        let mut stop_sent: Option<Instant> = None;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("reef-run: waiting for the container: {e}");
                    return EXIT_RUNTIME;
                }
            }
            let timeout = stop_sent.map(|t| grace.saturating_sub(t.elapsed()));
            if timeout == Some(Duration::ZERO) {
                eprintln!(
                    "reef-run: the container did not stop within {}s; sending SIGKILL",
                    grace.as_secs()
                );
                let _ = kill(pid, Signal::SIGKILL);
                stop_sent = None;
                continue;
            }
            match sys::wait_signal(timeout) {
                None | Some(Signal::SIGCHLD) => {}
                Some(sig) if stop_sent.is_some() => {
                    // A second stop request: the user means it.
                    eprintln!("reef-run: {sig} again; sending SIGKILL");
                    let _ = kill(pid, Signal::SIGKILL);
                }
                Some(sig) => {
                    let _ = kill(pid, sig);
                    stop_sent = Some(Instant::now());
                }
            }
        }
    }

    /// Step 6. Every step runs even if an earlier one failed; if anything could not be
    /// undone, the entry stays (with its lock released on exit) for `reef-run rm`.
    fn teardown(self) -> Result<()> {
        let mut errs = Vec::new();
        let mut del_ok = true;
        if let (true, Some(chain), Some(att)) = (self.needs_del, self.chain, &self.attachment) {
            // libcni's DEL sends the cached result; reef-run still holds the same one.
            let cached = self.result.clone().or_else(|| {
                self.cache
                    .read(chain.name(), &att.container_id, &att.ifname)
                    .and_then(|c| c.result)
            });
            let del = chain.del(att, cached.as_ref());
            log::step(|| "DEL done".into());
            match del {
                Ok(()) => {
                    if let Err(e) = self
                        .cache
                        .remove(chain.name(), &att.container_id, &att.ifname)
                    {
                        errs.push(e);
                    }
                }
                Err(e) => {
                    del_ok = false;
                    errs.push(e);
                }
            }
        }
        // The pin stays while DEL has not succeeded: `rm` retries DEL against it.
        if self.pinned && del_ok {
            if let Err(e) = netns::unpin(&self.entry.netns_path()) {
                errs.push(e);
            }
            log::step(|| "network namespace unpinned".into());
        }
        if errs.is_empty() {
            return self.entry.remove();
        }
        errs.push(Error::Container {
            name: self.entry.state.name.clone(),
            msg: format!(
                "left in place; retry the cleanup with `reef-run rm {}`",
                self.entry.state.name
            ),
        });
        Error::collect(errs)
    }
}

/// The container's addresses from a result (`ips[].address`, CIDR form).
fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str().map(str::to_owned))
        .collect()
}
