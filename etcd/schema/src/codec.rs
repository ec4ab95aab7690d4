//! Records to and from their etcd values (JSON).

/// A value in etcd that is not the record its key promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid data in etcd at {key}: {detail}")]
pub struct DecodeError {
    pub key: String,
    pub detail: String,
}

/// Decodes the record stored at `key`.
pub fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(value).map_err(|e| DecodeError {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

/// Encodes a record. Serialising these plain structs (string keys, no custom serialisers)
/// cannot fail.
pub fn encode(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeRecord;

    #[test]
    fn round_trip_and_errors_name_the_key() {
        let rec = NodeRecord {
            name: "a".into(),
            ..NodeRecord::default()
        };
        let back: NodeRecord = decode(b"/reef/nodes/a", &encode(&rec)).unwrap();
        assert_eq!(back, rec);
        let e = decode::<NodeRecord>(b"/reef/nodes/b", b"not json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid data in etcd at /reef/nodes/b: "),
            "{e}"
        );
    }
}
