//! CNI error object and the spec's well-known codes.

use serde_json::{json, Value};
use std::fmt;

/// Error codes from the CNI spec (`SPEC.md`, "Error"). 100+ are Reef's own.
pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Reef: a netlink operation failed.
    pub const NETLINK: u32 = 100;
    /// Reef: CHECK found the live state different from the recorded result.
    pub const CHECK_FAILED: u32 = 101;
    /// Reef: a firewall (nftables) operation failed.
    pub const FIREWALL: u32 = 102;
    /// Reef: a delegated plugin could not be run.
    pub const DELEGATE: u32 = 103;
    /// Reef: an IPAM range or pool has no free address.
    pub const EXHAUSTED: u32 = 104;
    /// Reef: the IPAM record CHECK expected is missing.
    pub const IPAM_RECORD_MISSING: u32 = 105;
    /// Reef: a host port is already mapped by another attachment.
    pub const PORT_CONFLICT: u32 = 106;
    /// Reef: the cluster IPAM has no configuration in etcd yet (`reefctl init`).
    pub const CLUSTER_NOT_INITIALISED: u32 = 107;
    /// Reef: a bug (panic) — reported as an error object rather than silence.
    pub const INTERNAL: u32 = 199;
}

/// A CNI error: printed as JSON on stdout, exit status non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(codes::INVALID_CONFIG, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(codes::INVALID_ENV, msg)
    }

    pub fn io(msg: impl Into<String>, err: &std::io::Error) -> Self {
        Self::new(codes::IO, msg).with_details(err.to_string())
    }

    /// Prefixes the message with what was being done, keeping code and details.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// Teardown-style result: every step ran and collected its error; report them all, with
    /// the first one's code (it is usually the cause of the rest).
    pub fn all(errors: Vec<CniError>) -> Result<(), CniError> {
        let mut errors = errors.into_iter();
        match errors.next() {
            None => Ok(()),
            Some(first) => Err(errors.fold(first, |mut acc, e| {
                acc.msg = format!("{}; {}", acc.msg, e.msg);
                acc
            })),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }

    /// Parses an error object printed by another plugin.
    pub fn from_json(v: &Value) -> Option<Self> {
        let code = v.get("code")?.as_u64()?;
        Some(CniError {
            code: u32::try_from(code).unwrap_or(u32::MAX),
            msg: v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            details: v
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keeps_first_code_and_every_message() {
        assert_eq!(CniError::all(vec![]), Ok(()));
        let e = CniError::all(vec![
            CniError::new(104, "range full"),
            CniError::new(100, "veth busy"),
        ])
        .unwrap_err();
        assert_eq!(e.code, 104);
        assert_eq!(e.msg, "range full; veth busy");
    }
}
