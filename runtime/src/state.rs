//! Per-container state under the state directory (`/run/reef`, or `$REEF_STATE_DIR`):
//!
//! ```text
//! <state>/containers/<name>/
//!     lock         flock'ed by the container's reef-run for its whole life
//!     state.json   State (below), rewritten atomically
//!     netns        bind mount of the container's network namespace (owners only)
//!     hosts        /etc/hosts and /etc/resolv.conf for --rootfs containers
//!     resolv.conf
//! <state>/plugin-versions.json   plugins' VERSION answers, per binary identity
//! ```
//!
//! The lock, not a PID, says whether a reef-run is alive: the kernel drops it when the process
//! dies however it dies, and a recycled PID cannot fake it. An entry is created under a
//! temporary name and renamed into place with `RENAME_NOREPLACE`, so a name is claimed
//! atomically and never by a half-written entry.
//!
//! Nobody but its creator touches an entry under construction (`.new-NAME-PID-START`) while
//! that creator lives: its lock file only ever appears already locked (it is locked under
//! another name, then renamed to `lock`), so a free lock proves the creator is gone; before the
//! lock is in place, the creator's PID and start time in the directory's name decide.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cli::PortMapping;
use crate::error::{Context, Error, Result};
use crate::sys;

pub const DEFAULT_STATE_DIR: &str = "/run/reef";

/// Prefix of an entry under construction: `.new-NAME-PID-START`, after its creator.
const NEW_PREFIX: &str = ".new-";

/// What reef-run records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub id: String,
    pub name: String,
    pub hostname: String,
    /// The reef-run process and its start time (clock ticks since boot, /proc/PID/stat), so
    /// a recycled PID is never mistaken for it.
    pub run_pid: i32,
    pub run_start: u64,
    /// The container's PID 1, as the host sees it; set once it exists.
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The command has been exec'd (the network is attached, for owners).
    #[serde(default)]
    pub started: bool,
    /// The network this container attached (absent for `--join`).
    #[serde(default)]
    pub network: Option<NetState>,
    /// The container whose network namespace this one joined.
    #[serde(default)]
    pub join: Option<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub command: Vec<String>,
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Unix seconds.
    pub created: u64,
}

/// Everything `rm` needs to run DEL without the original command line or environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetState {
    pub name: String,
    /// The network list, byte for byte.
    pub conflist: String,
    pub cache_dir: PathBuf,
    pub cni_path: Vec<PathBuf>,
    pub ifname: String,
    pub cni_args: Vec<[String; 2]>,
    pub capability_args: Map<String, Value>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// An entry owned by the running reef-run (it holds the lock).
#[derive(Debug)]
pub struct Entry {
    pub dir: PathBuf,
    pub state: State,
    lock: Flock<File>,
}

/// An entry found by `ps` or `rm`.
#[derive(Debug)]
pub struct Found {
    pub dir: PathBuf,
    pub state: Option<State>,
    /// `Some` if its reef-run is gone (we now hold the lock), `None` if it is alive.
    pub lock: Option<Flock<File>>,
}

impl Entry {
    /// The descriptor holding the entry's lock (the container's child closes its copy).
    pub fn lock_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// Where plugins' VERSION answers are remembered (see `cni::versions`).
    pub fn versions_file(&self) -> PathBuf {
        self.root.join("plugin-versions.json")
    }

    fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn entry_dir(&self, name: &str) -> PathBuf {
        self.containers().join(name)
    }

    /// Claims `state.name` and returns the locked entry. A taken name fails with
    /// [`Error::NameInUse`], saying whether its container is running or needs `rm`.
    pub fn create(&self, state: State) -> Result<Entry> {
        let base = self.containers();
        fs::create_dir_all(&base).ctx(|| format!("create state directory {}", base.display()))?;
        let pid = std::process::id() as i32;
        let start = sys::proc_start_time(pid).unwrap_or(0);
        let tmp = base.join(format!("{NEW_PREFIX}{}-{pid}-{start}", state.name));
        // Only an earlier process with our PID (and an unknown start time) can have left it.
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).ctx(|| format!("create {}", tmp.display()))?;
        let lock = match place_lock(&tmp) {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        // From here on the lock is held until the temporary directory is gone: a lister
        // never sees it free while we are alive.
        if let Err(e) = write_atomic(&tmp.join("state.json"), &state) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let dir = self.entry_dir(&state.name);
        if let Err(e) = rename_noreplace(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            drop(lock);
            if e.raw_os_error() == Some(libc::EEXIST) || e.raw_os_error() == Some(libc::ENOTEMPTY) {
                return Err(self.name_in_use(&state.name));
            }
            return Err(Error::io(format!("claim {}", dir.display()), e));
        }
        Ok(Entry { dir, state, lock })
    }

    fn name_in_use(&self, name: &str) -> Error {
        let hint = match self.find(name) {
            Ok(Some(Found { lock: None, .. })) => " by a running container".to_owned(),
            Ok(Some(Found { lock: Some(_), .. })) => format!(
                " by a container whose reef-run is gone; clean it up with `reef-run rm {name}`"
            ),
            _ => String::new(),
        };
        Error::NameInUse {
            name: name.to_owned(),
            hint,
        }
    }

    /// The entry `name`, with its lock taken if its reef-run is gone.
    pub fn find(&self, name: &str) -> Result<Option<Found>> {
        let dir = self.entry_dir(name);
        let lock_path = dir.join("lock");
        let lock = match lock_file(&lock_path, false) {
            Ok(l) => l,
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        // The entry may have been removed (and even re-created) between our open and flock:
        // the lock we hold must be the one at the path now.
        if let Some(l) = &lock {
            if !is_at(l, &lock_path) {
                return Ok(None);
            }
        }
        let state = read_state(&dir.join("state.json"))?;
        Ok(Some(Found { dir, state, lock }))
    }

    /// Every entry, sorted by name. Temporary entries of a reef-run that died while claiming
    /// its name are removed on the way; those of a live one are left alone.
    pub fn list(&self) -> Result<Vec<Found>> {
        let base = self.containers();
        let rd = match fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", base.display()), e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Some(creator) = name.strip_prefix(NEW_PREFIX) {
                reap_if_abandoned(&base.join(&name), creator);
                continue;
            }
            // One broken entry must not hide the others.
            match self.find(&name) {
                Ok(Some(found)) => out.push(found),
                Ok(None) => {}
                Err(e) => eprintln!("reef-run: skipping {name}: {e}"),
            }
        }
        Ok(out)
    }
}

impl Entry {
    pub fn save(&self) -> Result<()> {
        write_atomic(&self.dir.join("state.json"), &self.state)
    }

    pub fn netns_path(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// Removes the entry (its netns mount must be gone already) and releases the name.
    pub fn remove(self) -> Result<()> {
        remove_entry_dir(&self.dir)
    }
}

/// Removes the entry under construction `tmp` (`.new-` + `creator`) if its creator is gone.
/// A free lock proves that (it was placed locked); with no lock yet, the creator's PID and
/// start time, `NAME-PID-START`, decide. Anything unclear is left alone.
fn reap_if_abandoned(tmp: &Path, creator: &str) {
    let lock_path = tmp.join("lock");
    let abandoned = match lock_file(&lock_path, false) {
        // Still ours to judge only if it was not renamed away (claimed) since our open.
        Ok(Some(l)) => is_at(&l, &lock_path),
        Ok(None) => false,
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            let mut parts = creator.rsplitn(3, '-');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(start), Some(pid), Some(_name)) => match (pid.parse(), start.parse()) {
                    (Ok(pid), Ok(start)) => sys::is_gone(pid, start),
                    _ => false,
                },
                _ => false,
            }
        }
        Err(_) => false,
    };
    // We hold its lock, if it has one: the creator cannot be using it.
    if abandoned {
        let _ = fs::remove_dir_all(tmp);
    }
}

/// Creates `dir/lock` already locked: it is locked as `lock.new`, a name nobody else opens,
/// then renamed into place, so a free `lock` always means its holder is gone.
fn place_lock(dir: &Path) -> Result<Flock<File>> {
    let new = dir.join("lock.new");
    let lock = lock_file(&new, true)?
        .ok_or_else(|| Error::state(&new, "lock is held by another process"))?;
    let path = dir.join("lock");
    fs::rename(&new, &path).ctx(|| format!("rename {} to {}", new.display(), path.display()))?;
    Ok(lock)
}

/// Whether the locked file `l` is the one at `path` now.
fn is_at(l: &Flock<File>, path: &Path) -> bool {
    match (l.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Removes an entry directory. The lock file goes last, so the name stays claimed until the
/// very end.
pub fn remove_entry_dir(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    for e in rd.filter_map(|e| e.ok()) {
        if e.file_name() != "lock" {
            let p = e.path();
            let r = if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.ctx(|| format!("remove {}", p.display()))?;
        }
    }
    let lock = dir.join("lock");
    match fs::remove_file(&lock) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io(format!("remove {}", lock.display()), e))
        }
        _ => {}
    }
    fs::remove_dir(dir).ctx(|| format!("remove {}", dir.display()))
}

/// Opens (creating) and flocks `path`. `Ok(None)`: someone else holds the lock.
///
/// Only the creator creates the file: a prober must not re-create the lock of an entry being
/// removed (its directory could then not be removed).
fn lock_file(path: &Path, create: bool) -> Result<Option<Flock<File>>> {
    // std opens with O_CLOEXEC: neither plugins nor the container inherit the lock.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .ctx(|| format!("open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::sys(format!("flock {}", path.display()), e)),
    }
}

fn read_state(path: &Path) -> Result<Option<State>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| Error::state(path, format!("unreadable: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// JSON to a temporary file, then rename: readers see the old or the new state, never half.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::state(path, format!("cannot encode: {e}")))?;
    write_bytes_atomic(path, &data)
}

pub fn write_bytes_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let r = File::create(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| fs::rename(&tmp, path));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.ctx(|| format!("write {}", path.display()))
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str) -> State {
        State {
            id: "0123".into(),
            name: name.into(),
            hostname: name.into(),
            run_pid: std::process::id() as i32,
            run_start: 1,
            pid: None,
            pid_start: None,
            started: false,
            network: None,
            join: None,
            ips: vec![],
            ports: vec![],
            labels: BTreeMap::new(),
            command: vec!["true".into()],
            rootfs: None,
            created: 0,
        }
    }

    #[test]
    fn names_are_claimed_once_and_released() {
        let root = std::env::temp_dir().join(format!("reef-run-state-{}", std::process::id()));
        let sd = StateDir::new(&root);
        let e = sd.create(state("a")).unwrap();
        match sd.create(state("a")) {
            Err(Error::NameInUse { hint, .. }) => assert!(hint.contains("running"), "{hint}"),
            other => panic!("{other:?}"),
        }
        let listed = sd.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].lock.is_none(), "held by us: alive");
        assert_eq!(listed[0].state.as_ref().unwrap().name, "a");
        e.remove().unwrap();
        assert!(sd.find("a").unwrap().is_none());
        let e = sd.create(state("a")).unwrap();
        e.remove().unwrap();
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn listing_reaps_only_abandoned_entries_under_construction() {
        let root = std::env::temp_dir().join(format!("reef-run-reap-{}", std::process::id()));
        let sd = StateDir::new(&root);
        let base = sd.containers();
        fs::create_dir_all(&base).unwrap();
        let me = std::process::id();
        let start = sys::proc_start_time(me as i32).unwrap();
        let new = |n: &str| {
            let d = base.join(format!("{NEW_PREFIX}{n}"));
            fs::create_dir(&d).unwrap();
            d
        };
        // Live creators: one before placing its lock, one holding it (whatever its name says).
        let unlocked = new(&format!("a-{me}-{start}"));
        let locked = new("b-1-1");
        let _held = place_lock(&locked).unwrap();
        // Dead creators: one before placing its lock, one whose lock is free.
        let unlocked_dead = new(&format!("c-{me}-{}", start + 1));
        let freed = new(&format!("d-{me}-{start}"));
        drop(place_lock(&freed).unwrap());
        assert!(sd.list().unwrap().is_empty());
        assert!(unlocked.exists() && locked.exists());
        assert!(!unlocked_dead.exists() && !freed.exists());
        let _ = fs::remove_dir_all(root);
    }
}
