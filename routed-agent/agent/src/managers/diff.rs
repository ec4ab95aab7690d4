//! The difference between what a programmer last put in the kernel and what is wanted: the
//! one rule every kernel programmer follows (change only what differs).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<K, V> {
    /// Wanted entries the kernel lacks or holds with another value (set or replace them).
    pub set: Vec<(K, V)>,
    /// Entries the kernel holds that nobody wants any more.
    pub stale: Vec<(K, V)>,
}

pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    have: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) -> Diff<K, V> {
    Diff {
        set: want
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        stale: have
            .iter()
            .filter(|(k, _)| !want.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differences_are_listed() {
        let have = BTreeMap::from([(1, "a"), (2, "b"), (3, "c")]);
        let want = BTreeMap::from([(1, "a"), (2, "B"), (4, "d")]);
        let d = diff(&have, &want);
        assert_eq!(d.set, vec![(2, "B"), (4, "d")]);
        assert_eq!(d.stale, vec![(3, "c")]);
        assert_eq!(diff(&want, &want).set, vec![]);
    }
}
