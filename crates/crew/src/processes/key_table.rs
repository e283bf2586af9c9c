//! A table keyed by sticky key with a bound on its size: the per-key run-time
//! estimates and the key-to-worker bindings (`state.rs`). Both used to grow by
//! one entry for every distinct key a pool ever saw (about 92 bytes a key,
//! for the pool's life), so a pool given a fresh key per task grew without
//! bound (DESIGN.md, invariant 7).
//!
//! It is an LRU map (the `lru` crate): reading or writing a key makes it the
//! most recent, and inserting past the cap forgets the least recently used
//! key. What is forgotten is a hint, never a task: a forgotten estimate falls
//! back to the default, and a forgotten binding lets the key's next task go
//! to the least loaded worker (its earlier tasks, still in a window or
//! backlog, stay where they are).

use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

/// Keys kept per table: 65,536 keys cost a few MiB at most, and a key used
/// within the last 65,536 distinct keys keeps its worker.
pub(super) const KEY_TABLE_CAP: usize = 1 << 16;

/// A map from key to `V` holding at most its cap of keys, forgetting the least
/// recently used.
pub(super) struct KeyTable<K: Hash + Eq, V> {
    map: LruCache<K, V>,
}

impl<K: Hash + Eq, V> KeyTable<K, V> {
    /// A table of at most `cap` keys (at least one).
    pub(super) fn new(cap: usize) -> Self {
        KeyTable {
            map: LruCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// The value for `key`, which becomes the most recently used.
    pub(super) fn get(&mut self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// The value for `key` without touching its recency (for `stats` and
    /// placement decisions that only look).
    pub(super) fn peek(&self, key: &K) -> Option<&V> {
        self.map.peek(key)
    }

    /// Sets `key`'s value, forgetting the least recently used key if full.
    pub(super) fn insert(&mut self, key: K, value: V) {
        self.map.put(key, value);
    }

    /// The value for `key`, inserted with `default` if absent; the key
    /// becomes the most recently used.
    pub(super) fn get_or_insert_mut(&mut self, key: K, default: impl FnOnce() -> V) -> &mut V {
        self.map.get_or_insert_mut(key, default)
    }

    /// Keeps only the entries for which `keep` holds.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool)
    where
        K: Clone,
    {
        let gone: Vec<K> = self
            .map
            .iter()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.map.pop(&k);
        }
    }

    /// How many keys it holds (the tests' view of its size).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_distinct_keys_stay_under_the_cap() {
        let mut table = KeyTable::new(KEY_TABLE_CAP);
        for key in 0..(4 * KEY_TABLE_CAP as u64) {
            *table.get_or_insert_mut(Some(key), || 1.0) += 1.0;
            assert!(table.len() <= KEY_TABLE_CAP);
        }
        assert_eq!(table.len(), KEY_TABLE_CAP);
        // The most recent keys are the ones kept.
        let last = 4 * KEY_TABLE_CAP as u64 - 1;
        assert_eq!(table.peek(&Some(last)), Some(&2.0));
        assert_eq!(table.peek(&Some(0)), None);
    }

    #[test]
    fn a_key_in_use_is_not_forgotten() {
        let mut table = KeyTable::new(4);
        table.insert(1u64, "a");
        for key in 10..20u64 {
            assert_eq!(table.get(&1), Some(&"a"));
            table.insert(key, "b");
        }
        assert_eq!(table.len(), 4);
        assert_eq!(table.peek(&1), Some(&"a"));
    }

    #[test]
    fn retain_drops_what_it_is_told() {
        let mut table = KeyTable::new(8);
        for key in 0..8u64 {
            table.insert(key, key % 2);
        }
        table.retain(|_, v| *v == 0);
        assert_eq!(table.len(), 4);
        assert!(table.peek(&3).is_none());
        assert_eq!(table.peek(&4), Some(&0));
    }
}
