//! The on-disk store of one network: `<dataDir>/<network>/`.
//!
//! Layout (the records are exactly host-local's, so operators recognise them):
//!
//! * `<ip>` — one file per allocated address, named by the address text (`10.1.0.5`,
//!   `fd00::5`), content `<containerID>\r\n<ifname>`. **The record is the single source of
//!   truth**: an address is allocated iff its record exists, and its content names the
//!   holder.
//! * `last_reserved_ip.<N>` — the last address handed out from range set `N` (round-robin
//!   hint only).
//! * `lock` — every operation holds an exclusive `flock` on it for its whole duration.
//! * `.own-<ip>-<containerID>-<ifname>` (ids `%`-escaped) — owner hint: a *hard link* to the
//!   record's inode, so that one `read_dir` (which reports each name's inode number) tells
//!   the owner of every record without opening a single file. The hint is self-verifying:
//!   it counts only if its inode is the record's inode — then its name was derived from
//!   that very content — and while it exists it pins the inode, so the number cannot be
//!   reused by another record. A record without a valid hint (written by host-local, or
//!   left by a crash) is simply read, and its hint re-created.
//! * `.tmp-*` — files being written. Under the lock nobody is mid-write, so any found are
//!   leftovers from a crashed process.
//!
//! Crash safety covers process crashes (SIGKILL at any instant) and power loss. A record
//! is written to a `.tmp-` file and published with `link(2)`, which atomically creates the
//! name only if it is absent: a process crash leaves no record or a complete one, and
//! EEXIST makes double allocation impossible. Before the verb returns, the record's data
//! (`fdatasync`) and the directory (`fsync`, after the link and after a removal) are on
//! stable storage: an address a runtime was given is still held after a power cut, and one
//! it released stays released. Hints and `last_reserved_ip.*` are not flushed: they are
//! caches, and a lost one is rebuilt or merely moves where the next search starts.
//! Leftovers (`.tmp-*`, hints whose record is gone) are never records; they are deleted by
//! the next operation that lists the directory under the lock.

use reef_cni::file::open_store_file;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::{ConfigError, Handle, IpamError};

pub(crate) const LOCK_FILE: &str = "lock";
pub(crate) const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const TMP_PREFIX: &str = ".tmp-";
const OWNER_PREFIX: &str = ".own-";
/// host-local's separator between container ID and ifname.
const LINE_BREAK: &str = "\r\n";
/// Longest file name Linux file systems accept; longer owner hints are just not created.
const NAME_MAX: usize = 255;

/// A store for one network. Holds no open files: every operation takes the lock anew, so
/// a `LocalStore` may be shared between threads, and many processes may use one store.
#[derive(Debug)]
pub struct LocalStore {
    pub(crate) dir: PathBuf,
    pub(crate) network: String,
}

/// Proof that the store lock is held; dropping it closes the file and releases the lock.
pub(crate) struct LockGuard {
    _lock: Flock<File>,
}

/// An allocated address as found on disk.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub ip: IpAddr,
    /// The record's actual file name (it may be a non-canonical spelling of `ip` if
    /// something else wrote it).
    name: OsString,
    owner: Owner,
}

/// How a record's holder is known. Decoding a hint name is deferred: the hot path only
/// compares it with one handle.
#[derive(Debug, Clone)]
enum Owner {
    /// The name of the valid owner hint (`.own-...`).
    Hint(String),
    /// Read from the record itself (no valid hint).
    Read(Handle),
}

impl Record {
    /// The record `create_record(ip, handle)` writes.
    pub(crate) fn canonical(ip: IpAddr, handle: Handle) -> Record {
        Record {
            ip,
            name: ip.to_string().into(),
            owner: Owner::Read(handle),
        }
    }

    /// Whether `h` holds this record (exact match), without allocating.
    pub(crate) fn is(&self, h: &Handle) -> bool {
        match &self.owner {
            Owner::Read(x) => x == h,
            Owner::Hint(name) => split_owner_name(name).is_some_and(|(_, id, ifname)| {
                unescaped(id).eq(h.container_id.bytes().map(Some))
                    && unescaped(ifname).eq(h.ifname.bytes().map(Some))
            }),
        }
    }

    pub(crate) fn handle(&self) -> Handle {
        match &self.owner {
            Owner::Read(h) => h.clone(),
            Owner::Hint(name) => {
                // Validated when listed, so the escapes are well formed.
                let (_, id, ifname) = split_owner_name(name).unwrap_or_default();
                Handle::new(unescape_lossy(id), unescape_lossy(ifname))
            }
        }
    }

    /// The owner hint that may accompany this record.
    fn hint_name(&self) -> Option<OsString> {
        match &self.owner {
            Owner::Hint(name) => Some(name.into()),
            Owner::Read(h) => owner_name(self.ip, h),
        }
    }
}

impl LocalStore {
    /// Validates the network name and creates `<data_dir>/<network>` (0755) if needed.
    ///
    /// Deliberately does no directory scan: in a CNI plugin every invocation opens the
    /// store, and the operation that follows lists the directory anyway (that listing,
    /// under the lock, also sweeps crash leftovers).
    pub fn open(data_dir: &Path, network: &str) -> Result<LocalStore, IpamError> {
        if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0'])
        {
            return Err(ConfigError::InvalidNetworkName(network.to_owned()).into());
        }
        let store = LocalStore {
            dir: data_dir.join(network),
            network: network.to_owned(),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&store.dir)
            .map_err(|e| store.io(e, "creating store directory", &store.dir))?;
        Ok(store)
    }

    /// The directory holding this network's records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    pub(crate) fn io(&self, source: io::Error, what: &str, path: &Path) -> IpamError {
        IpamError::Io {
            context: format!("network {:?}: {what} {}", self.network, path.display()),
            source,
        }
    }

    /// Blocks until this process holds the store lock exclusively. A fresh open file
    /// description per call: flock excludes other descriptions, so this also serialises
    /// threads sharing one `LocalStore`.
    pub(crate) fn lock(&self) -> Result<LockGuard, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let mut file = open_store_file(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644),
            &path,
        )
        .map_err(|e| self.io(e, "opening lock file", &path))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => return Ok(LockGuard { _lock: lock }),
                // A signal interrupted the wait; keep waiting.
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => return Err(self.io(e.into(), "locking", &path)),
            }
        }
    }

    /// Every record, sorted by address. One `read_dir`; a record's file is read only if it
    /// has no valid owner hint (and the hint is then re-created). Deletes crash leftovers
    /// (`.tmp-*`, hints whose record is gone): safe only because the lock is held, and
    /// neutral because they are never records.
    pub(crate) fn snapshot(&self, _lock: &LockGuard) -> Result<Vec<Record>, IpamError> {
        let rd = fs::read_dir(&self.dir).map_err(|e| self.io(e, "listing", &self.dir))?;
        let mut records: Vec<(IpAddr, OsString, u64)> = Vec::new();
        // (inode, name); validated only when an inode matches a record's (hot path).
        let mut hints: Vec<(u64, Option<OsString>)> = Vec::new();
        let mut garbage: Vec<OsString> = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| self.io(e, "listing", &self.dir))?;
            let name = entry.file_name();
            let Some(s) = name.to_str() else { continue };
            if s.starts_with(TMP_PREFIX) {
                garbage.push(name);
            } else if s.starts_with(OWNER_PREFIX) {
                hints.push((entry.ino(), Some(name)));
            } else if s.starts_with('.') || s == LOCK_FILE || s.starts_with(LAST_RESERVED_PREFIX) {
                continue;
            } else if let Ok(ip) = s.parse::<IpAddr>() {
                records.push((ip, name, entry.ino()));
            }
            // Anything else is not ours (an operator's note, ...): leave it alone.
        }
        hints.sort_unstable_by_key(|h| h.0);

        let mut out = Vec::with_capacity(records.len());
        let mut unowned = Vec::new();
        for (ip, name, ino) in records {
            // Same inode as the record: the hint's name was derived from this content.
            let hint = match hints.binary_search_by_key(&ino, |h| h.0) {
                Ok(i) => hints[i].1.take(),
                Err(_) => None,
            };
            match hint.map(OsString::into_string) {
                Some(Ok(hint)) if valid_hint(&hint, ip) => out.push(Record {
                    ip,
                    name,
                    owner: Owner::Hint(hint),
                }),
                other => {
                    if let Some(bad) = other {
                        garbage.push(bad.map_or_else(|os| os, OsString::from));
                    }
                    unowned.push((ip, name));
                }
            }
        }
        // Every other hint is garbage: an orphan whose record was released (crash
        // between the two unlinks) or replaced, a duplicate, or malformed.
        garbage.extend(hints.into_iter().filter_map(|h| h.1));
        for g in &garbage {
            // Unlinking a name never alters another name's content, even when a leftover
            // temp name is still linked to a live record. Best effort: retried next time.
            let _ = fs::remove_file(self.dir.join(g));
        }

        for (ip, name) in unowned {
            let Some(handle) = self.read_record(&name)? else {
                continue;
            };
            // Restore the hint so later operations need not read this record again.
            let hint = owner_name(ip, &handle)
                .filter(|o| fs::hard_link(self.dir.join(&name), self.dir.join(o)).is_ok())
                .and_then(|o| o.into_string().ok());
            let owner = match hint {
                Some(hint) => Owner::Hint(hint),
                None => Owner::Read(handle),
            };
            out.push(Record { ip, name, owner });
        }
        out.sort_by_key(|r| crate::config::ip_to_u128(r.ip));
        Ok(out)
    }

    /// The holder of the record file `name`, or `None` if there is no such file.
    fn read_record(&self, name: &OsStr) -> Result<Option<Handle>, IpamError> {
        let path = self.dir.join(name);
        match read_store_file(&path) {
            Ok(bytes) => Ok(Some(parse_content(&String::from_utf8_lossy(&bytes)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e, "reading record", &path)),
        }
    }

    /// The record for `ip` under its canonical name, read directly (the O(1) path).
    pub(crate) fn record_at(&self, ip: IpAddr) -> Result<Option<Record>, IpamError> {
        let name = OsString::from(ip.to_string());
        Ok(self
            .read_record(&name)?
            .map(|handle| Record::canonical(ip, handle)))
    }

    /// Atomically creates the record for `ip`. `Ok(false)` if the address is taken.
    pub(crate) fn create_record(
        &self,
        _lock: &LockGuard,
        ip: IpAddr,
        h: &Handle,
    ) -> Result<bool, IpamError> {
        let content = format!("{}{LINE_BREAK}{}", h.container_id, h.ifname);
        let (tmp, file) = self.write_tmp(content.as_bytes())?;
        let path = self.dir.join(ip.to_string());
        // link(2) is the commit point: it creates `path` only if absent, with the complete
        // content already in place.
        if let Err(e) = fs::hard_link(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(false),
                _ => Err(self.io(e, "creating record", &path)),
            };
        }
        // Recycle the temp name as the owner hint (same inode, rename replaces any orphan
        // of that name). If this fails, or we crash first, the record is still complete,
        // merely without a hint: it will be read.
        let hint = owner_name(ip, h).map(|o| self.dir.join(o));
        let hinted = hint
            .as_ref()
            .is_some_and(|hint| fs::rename(&tmp, hint).is_ok());
        if !hinted {
            let _ = fs::remove_file(&tmp);
        }
        // Durable before the address is handed out: the record's data and inode, then the
        // directory's entries. Flushed after the link rather than before it, so that on
        // ext4 (one journal) the first flush commits the names too and the second finds
        // little left to do: one journal commit per ADD instead of two. A power cut before
        // both flushes leaves at worst a record with lost content, read as held by nobody
        // known and released by CNI GC: never a second holder.
        let flushed = file
            .sync_data()
            .map_err(|e| self.io(e, "flushing record", &path))
            .and_then(|()| self.sync_dir());
        if let Err(e) = flushed {
            // Not durable, so not handed out.
            let _ = fs::remove_file(&path);
            if let Some(hint) = hint.filter(|_| hinted) {
                let _ = fs::remove_file(hint);
            }
            return Err(e);
        }
        Ok(true)
    }

    /// Deletes a record, then its owner hint. The record goes first: once it is gone the
    /// address is free; a crash before the second unlink leaves an orphan hint, which is
    /// ignored and swept.
    pub(crate) fn remove_record(&self, _lock: &LockGuard, r: &Record) -> Result<(), IpamError> {
        let path = self.dir.join(&r.name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(e, "removing record", &path)),
        }
        if let Some(hint) = r.hint_name() {
            let _ = fs::remove_file(self.dir.join(hint));
        }
        self.sync_dir()
    }

    /// Flushes the directory's entries (links and unlinks) to stable storage.
    fn sync_dir(&self) -> Result<(), IpamError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e, "flushing the store directory", &self.dir))
    }

    /// The last address handed out from range set `set`. Missing or unreadable just means
    /// "start from the beginning" (host-local does the same).
    pub(crate) fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        let bytes = read_store_file(&path).ok()?;
        String::from_utf8_lossy(&bytes).trim().parse().ok()
    }

    /// Records `ip` as the last address handed out from `set`.
    ///
    /// Overwritten in place rather than via temp file + rename: on ext4, replacing a file
    /// by rename (or truncating it to zero) triggers `auto_da_alloc`, which starts
    /// writeback on the spot — measured at 0.25–2.5 ms here, against ~15 µs in place, and
    /// it would dominate every ADD. The file is only a round-robin hint: a crash between
    /// the write and the truncate can at worst leave another (or an unparsable) address,
    /// which merely moves where the next search starts; records decide what is free.
    pub(crate) fn set_last_reserved(
        &self,
        _lock: &LockGuard,
        set: usize,
        ip: IpAddr,
    ) -> Result<(), IpamError> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        let text = ip.to_string();
        let file = open_store_file(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644),
            &path,
        )
        .map_err(|e| self.io(e, "opening", &path))?;
        file.write_all_at(text.as_bytes(), 0)
            .and_then(|()| file.set_len(text.len() as u64))
            .map_err(|e| self.io(e, "writing", &path))
    }

    /// Writes `content` to a fresh `.tmp-` file; returns its path and the open file (for the
    /// caller's flush).
    fn write_tmp(&self, content: &[u8]) -> Result<(PathBuf, File), IpamError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        loop {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = self
                .dir
                .join(format!("{TMP_PREFIX}{}-{seq}", std::process::id()));
            // O_EXCL, never O_TRUNC: a leftover temp name may still be hard-linked to a
            // published record, and truncating it would destroy that record's content.
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path);
            let mut file = match file {
                Ok(f) => f,
                // Leftover from a crashed process with our pid: take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io(e, "creating temp file", &path)),
            };
            return match file.write_all(content) {
                Ok(()) => Ok((path, file)),
                Err(e) => {
                    drop(file);
                    let _ = fs::remove_file(&path);
                    Err(self.io(e, "writing temp file", &path))
                }
            };
        }
    }
}

/// Parses record content. Tolerant like host-local: surrounding whitespace is trimmed,
/// a bare `\n` separator is accepted, and a content without a separator is an old-style
/// record holding only the container ID (empty ifname).
pub(crate) fn parse_content(text: &str) -> Handle {
    let text = text.trim();
    let (id, ifname) = text
        .split_once(LINE_BREAK)
        .or_else(|| text.split_once('\n'))
        .unwrap_or((text, ""));
    Handle::new(id.trim(), ifname.trim())
}

/// `.own-<ip>-<id>-<ifname>`, with `-` and anything unusual `%XX`-escaped in the ids so
/// the three fields split unambiguously on `-` (IP texts contain none). `None` if it
/// would exceed NAME_MAX.
fn owner_name(ip: IpAddr, h: &Handle) -> Option<OsString> {
    let name = format!(
        "{OWNER_PREFIX}{ip}-{}-{}",
        escape(&h.container_id),
        escape(&h.ifname)
    );
    (name.len() <= NAME_MAX).then(|| name.into())
}

/// The (ip, escaped id, escaped ifname) fields of an owner hint name.
fn split_owner_name(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.strip_prefix(OWNER_PREFIX)?.split('-');
    let fields = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some(fields)
}

/// A well-formed hint name for `ip`.
fn valid_hint(name: &str, ip: IpAddr) -> bool {
    split_owner_name(name).is_some_and(|(hip, id, ifname)| {
        let well_formed = |f: &str| !f.contains('%') || unescaped(f).all(|b| b.is_some());
        hip.parse() == Ok(ip) && well_formed(id) && well_formed(ifname)
    })
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bytes an escaped field stands for; a `None` item marks a malformed escape.
fn unescaped(esc: &str) -> impl Iterator<Item = Option<u8>> + '_ {
    let b = esc.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let c = *b.get(i)?;
        if c != b'%' {
            i += 1;
            return Some(Some(c));
        }
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        i += 3;
        Some(hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()))
    })
}

fn unescape_lossy(esc: &str) -> String {
    let bytes: Vec<u8> = unescaped(esc).map(|b| b.unwrap_or(b'?')).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Records and hints are a few dozen bytes: anything past this is not one of ours.
const MAX_STORE_FILE: u64 = 4096;

/// A small store file, read without blocking on a FIFO and bounded in size.
fn read_store_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_store_file(OpenOptions::new().read(true), path)?;
    let mut buf = Vec::new();
    file.take(MAX_STORE_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_STORE_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {MAX_STORE_FILE} bytes", path.display()),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(id: &str, ifname: &str) -> Handle {
        Handle::new(id, ifname)
    }

    #[test]
    fn content_format() {
        assert_eq!(parse_content("abc\r\neth0"), h("abc", "eth0"));
        assert_eq!(parse_content("abc\neth0\n"), h("abc", "eth0"));
        assert_eq!(parse_content(" abc "), h("abc", ""));
    }

    #[test]
    fn owner_names_round_trip() {
        for (ip, handle) in [
            ("10.1.0.5", h("abc123", "eth0")),
            ("fd00::5", h("ctr-1%/x y", "net-1")),
            ("10.1.0.6", h("", "")),
            ("10.1.0.7", h("über", "e")),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let name = owner_name(ip, &handle).unwrap();
            let s = name.to_str().unwrap();
            assert!(!s.contains('/'));
            let rec = Record {
                ip,
                name: ip.to_string().into(),
                owner: Owner::Hint(s.to_owned()),
            };
            assert!(valid_hint(s, ip));
            assert!(rec.is(&handle));
            assert!(!rec.is(&h("other", &handle.ifname)));
            assert_eq!(rec.handle(), handle);
        }
        assert!(owner_name("10.0.0.1".parse().unwrap(), &h(&"x".repeat(300), "e")).is_none());
        assert!(split_owner_name(".own-10.0.0.1-a-b-c").is_none());
        assert!(unescaped("a%4").any(|b| b.is_none()));
        assert!(unescaped("a%+F").any(|b| b.is_none()));
    }
}
