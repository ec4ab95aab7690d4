//! Spec versions Reef speaks and what each one allows.

use crate::error::{codes, CniError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];
    pub const LATEST: Version = Version::V1_1_0;

    pub fn parse(s: &str) -> Result<Version, CniError> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    codes::INCOMPATIBLE_VERSION,
                    format!("incompatible CNI versions: config is \"{s}\", plugin supports [\"0.3.0\" \"0.3.1\" \"0.4.0\" \"1.0.0\" \"1.1.0\"]"),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn ip_has_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// Route attributes beyond dst/gw (mtu, advmss, priority, table, scope) are 1.1.0.
    pub fn has_route_attributes(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_roundtrip_and_reject_unknown() {
        for v in Version::ALL {
            assert_eq!(Version::parse(v.as_str()).unwrap(), v);
        }
        let e = Version::parse("0.2.0").unwrap_err();
        assert_eq!(e.code, codes::INCOMPATIBLE_VERSION);
        assert!(Version::parse("1.1.0").unwrap().has_gc_status());
        assert!(!Version::V1_0_0.has_gc_status());
        assert!(!Version::V0_3_1.has_check());
    }
}
