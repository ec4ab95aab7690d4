//! reef-run's error type. Every variant says what was being done, so the one line printed on
//! stderr is enough to act on.

use std::io;
use std::path::{Path, PathBuf};

/// Exit status for reef-run's own failures (docker's convention: distinct from any status the
/// command itself is likely to use).
pub const EXIT_RUNTIME: i32 = 125;
/// The command was found but could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line input that clap could not catch (names, hostnames, combinations).
    #[error("{0}")]
    Usage(String),

    #[error("network config {source_name}: {msg}")]
    Config { source_name: String, msg: String },

    #[error("network {network}: {msg}")]
    Plugin { network: String, msg: String },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },

    #[error("rootfs {}: {msg}", path.display())]
    Rootfs { path: PathBuf, msg: String },

    #[error("container name {name:?} is already in use{hint}")]
    NameInUse { name: String, hint: String },

    #[error("no such container: {0}")]
    NoSuchContainer(String),

    #[error("container {name}: {msg}")]
    Container { name: String, msg: String },

    #[error("state {}: {msg}", path.display())]
    State { path: PathBuf, msg: String },

    /// The container's process failed before running the command; `exit` is the status
    /// reef-run should exit with (125, 126 or 127).
    #[error("{msg}")]
    Start { msg: String, exit: i32 },

    /// Several independent failures (e.g. DEL of two plugins), all reported.
    #[error("{}", join_errors(.0))]
    Many(Vec<Error>),
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            what: what.into(),
            source,
        }
    }

    pub fn plugin(network: &str, msg: impl Into<String>) -> Self {
        Error::Plugin {
            network: network.to_owned(),
            msg: msg.into(),
        }
    }

    pub fn state(path: &Path, msg: impl Into<String>) -> Self {
        Error::State {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// The exit status reef-run uses when this error ends it.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Start { exit, .. } => *exit,
            _ => EXIT_RUNTIME,
        }
    }

    /// Folds a list of errors: none → Ok, one → itself, more → [`Error::Many`].
    pub fn collect(mut errs: Vec<Error>) -> Result<(), Error> {
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(Error::Many(errs)),
        }
    }
}

fn join_errors(errs: &[Error]) -> String {
    errs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `.ctx("what")` on io and nix results: attaches what was being done.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, io::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::io(what(), e))
    }
}

impl<T> Context<T> for Result<T, nix::Error> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::sys(what(), e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
