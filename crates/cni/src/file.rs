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
    let t = file
        .metadata()
        .map_err(|source| FileError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .file_type();
    if !t.is_file() {
        let found = if t.is_fifo() {
            "a FIFO"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(file)
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
