//! Bounded maps for per-source state a stranger can make grow.

use std::collections::HashMap;

/// A map that holds at most `cap` keys, forgetting the least recently used ones in O(1): keys
/// live in a current and a previous generation; when the current one is full it becomes the
/// previous one and the old previous one is dropped whole. A key used in the previous
/// generation moves to the current one.
pub(crate) struct Generations<K, V> {
    cap: usize,
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: std::hash::Hash + Eq + Clone, V> Generations<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(2),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    pub(crate) fn get_mut_or_insert(&mut self, key: &K, fresh: impl FnOnce() -> V) -> &mut V {
        let value = match self.current.remove(key) {
            Some(v) => v,
            None => {
                let v = self.previous.remove(key).unwrap_or_else(fresh);
                if self.current.len() >= self.cap / 2 {
                    self.previous = std::mem::take(&mut self.current);
                }
                v
            }
        };
        self.current.entry(key.clone()).or_insert(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}
