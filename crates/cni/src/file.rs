//! Reading files a network configuration names (resolvConf and the like) without letting the
//! caller hang or exhaust the plugin: a FIFO, device or socket under that name is refused
//! before anything is read, and a regular file is read only up to a size bound.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest user-named file read whole: far beyond any resolv.conf.
pub const MAX_USER_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("failed to open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{} is not a regular file (it is {found})", path.display())]
    NotRegular { path: PathBuf, found: &'static str },
    #[error("failed to read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
}

/// Opens `path` for reading, refusing anything but a regular file. The open is non-blocking
/// (opening a FIFO for reading otherwise waits for a writer forever) and the type is checked
/// on the opened descriptor, so a swap after a path-based check cannot slip a FIFO in.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| FileError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    match kind_if_not_regular(&file) {
        Ok(None) => Ok(file),
        Ok(Some(found)) => Err(FileError::NotRegular {
            path: path.to_path_buf(),
            found,
        }),
        Err(source) => Err(FileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `options.open(path)` for a file a store keeps (lock, records, hints) in a user-named
/// directory: non-blocking, and anything but a regular file is refused (as `InvalidInput`),
/// so a FIFO planted under a store's name cannot hang the plugin.
pub fn open_store_file(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    match kind_if_not_regular(&file)? {
        None => Ok(file),
        Some(found) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file (it is {found})", path.display()),
        )),
    }
}

/// None for a regular file, else what it is.
fn kind_if_not_regular(file: &File) -> io::Result<Option<&'static str>> {
    let t = file.metadata()?.file_type();
    Ok(if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    })
}

/// The whole content of the regular file `path`, at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = open_regular(path)?;
    let mut buf = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "larger".
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_regular_files_are_refused_and_size_is_bounded() {
        assert!(matches!(
            read_bounded(Path::new("/dev/zero"), 16),
            Err(FileError::NotRegular { .. })
        ));
        assert!(matches!(
            read_bounded(Path::new("/"), 16),
            Err(FileError::NotRegular { .. })
        ));
        let dir = std::env::temp_dir().join(format!("reef-cni-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("f");
        std::fs::write(&f, b"0123456789").expect("write");
        assert_eq!(read_bounded(&f, 10).expect("at the limit"), b"0123456789");
        assert!(matches!(
            read_bounded(&f, 9),
            Err(FileError::TooLarge { .. })
        ));
        let fifo = dir.join("fifo");
        nix_free_mkfifo(&fifo);
        let err = open_store_file(OpenOptions::new().read(true).write(true), &fifo)
            .expect_err("a FIFO is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn nix_free_mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }
}
