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

    mod props {
        //! The rule itself (routes, FDB and neighbour entries all go through it): from any
        //! `have`, setting `set` and removing `stale` yields exactly `want`, and nothing
        //! already right is listed.

        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn applying_the_diff_to_any_state_gives_the_wanted_one(
                have in proptest::collection::btree_map(0u8..24, 0u8..3, 0..16),
                want in proptest::collection::btree_map(0u8..24, 0u8..3, 0..16),
            ) {
                let d = diff(&have, &want);
                let mut kernel = have.clone();
                for (k, _) in &d.stale {
                    prop_assert!(kernel.remove(k).is_some(), "stale {} was not there", k);
                }
                for (k, v) in &d.set {
                    prop_assert_ne!(have.get(k), Some(v), "{} was already right", k);
                    kernel.insert(*k, *v);
                }
                prop_assert_eq!(&kernel, &want);
                prop_assert!(d.stale.iter().all(|(k, v)| have.get(k) == Some(v)));
                let same = diff(&want, &want);
                prop_assert!(same.set.is_empty() && same.stale.is_empty());
            }
        }
    }
}
