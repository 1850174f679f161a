//! The vocabulary of an n-gram feature as the evaluator reads it: a flat open-addressing
//! table from the n-gram's hash ([`ngram_hash`](super::text::ngram_hash), seed 0) to its
//! position in the vocabulary.
//!
//! A long document looks up thousands of n-grams in tables of hundreds of thousands of
//! terms, larger than the caches: the cost is memory latency, not arithmetic. A slot holds
//! the key and the index together (16 bytes, four to a cache line), so that a lookup
//! touches one line where a `HashMap` touches its control bytes and then its bucket, and
//! [`VocabTable::prefetch_slot`] lets the evaluator ask for the lines of the next n-grams while
//! it looks up the current one. The answer of a lookup is the same as a map's: the index
//! of the term whose full 64-bit hash is the key.

/// One slot: a key, its index, and whether it is used (a key of any value is valid).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(16))]
struct Slot {
    key: u64,
    index: u32,
    used: u32,
}

/// Hash of an n-gram → its index in the vocabulary (linear probing, load at most 3/4).
#[derive(Debug)]
pub(crate) struct VocabTable {
    slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: the home slot of a key is the top bits of its mix.
    shift: u32,
    /// Mixed into every key before its home is taken (random per table).
    seed: u64,
}

impl VocabTable {
    /// An empty table with room for `n` keys.
    pub(crate) fn with_capacity(n: usize) -> VocabTable {
        let size = (n.max(1) * 4).div_ceil(3).next_power_of_two().max(4);
        VocabTable {
            slots: vec![Slot::default(); size],
            shift: 64 - size.trailing_zeros(),
            seed: std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u64),
        }
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        // The keys come from the program (its vocabulary's hashes) and need not be spread
        // evenly: a synthesized vocabulary has been seen to put 40% of its keys in the
        // first 3/16 of the table, and a crafted one could put them all on one slot; with
        // linear probing either makes runs of thousands of slots that every insert and
        // lookup walks (compiling a 180,000-term vocabulary took seconds, evaluating a
        // 5 KB text milliseconds). The key is mixed with this table's random seed by
        // MurmurHash3's finaliser first, so the homes are spread whatever the keys are.
        // Only the layout depends on the seed; every lookup answers the same.
        let mut k = key ^ self.seed;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^= k >> 33;
        // `shift` is at most 62 (at least 4 slots).
        (k >> self.shift) as usize
    }

    /// Adds `key → index`; returns `false` (and changes nothing) when `key` is already in
    /// the table. At most the capacity given at construction (a full table would make
    /// the lookup of an absent key loop forever).
    pub(crate) fn insert(&mut self, key: u64, index: u32) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &mut self.slots[i];
            if s.used == 0 {
                *s = Slot {
                    key,
                    index,
                    used: 1,
                };
                return true;
            }
            if s.key == key {
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    /// The home slot of `key`: computed once per key by a caller that prefetches it
    /// ([`VocabTable::prefetch_slot`]) and then looks it up ([`VocabTable::get_from`]).
    #[inline(always)]
    pub(crate) fn home_of(&self, key: u64) -> usize {
        self.home(key)
    }

    /// The index of `key`, as `HashMap::get` answers it.
    #[inline]
    pub(crate) fn get(&self, key: &u64) -> Option<&u32> {
        self.get_from(self.home(*key), *key)
    }

    /// [`VocabTable::get`] for a key whose home slot is `home` (= [`VocabTable::home_of`]).
    #[inline]
    pub(crate) fn get_from(&self, home: usize, key: u64) -> Option<&u32> {
        let key = &key;
        let mask = self.slots.len() - 1;
        let mut i = home & mask;
        loop {
            let s = &self.slots[i];
            if s.used == 0 {
                return None;
            }
            if s.key == *key {
                return Some(&s.index);
            }
            i = (i + 1) & mask;
        }
    }

    /// Asks the CPU to bring slot `home` (a home slot, from [`VocabTable::home_of`]) into
    /// the cache (a hint: no effect on any result, and none at all on targets without a
    /// prefetch instruction).
    #[inline(always)]
    pub(crate) fn prefetch_slot(&self, home: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let p = self
                .slots
                .as_ptr()
                .wrapping_add(home & (self.slots.len() - 1));
            // SAFETY: a prefetch never dereferences its address and cannot fault; `p` is in
            // bounds anyway (the home slot of any key is a slot of the table). SSE is part
            // of the x86_64 baseline.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = home;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn lookups_answer_as_a_map_does() {
        let mut rng = fastrand::Rng::with_seed(11);
        for n in [1usize, 3, 4, 5, 100, 3000] {
            let mut table = VocabTable::with_capacity(n);
            let mut map = HashMap::new();
            // Keys with shared top bits collide on their home slot: probing must go on.
            let keys: Vec<u64> = (0..n)
                .map(|i| match i % 3 {
                    0 => rng.u64(..),
                    1 => rng.u64(..) >> 40,
                    _ => u64::MAX - rng.u64(..1000),
                })
                .collect();
            for (i, &k) in keys.iter().enumerate() {
                let fresh = !map.contains_key(&k);
                if fresh {
                    map.insert(k, i as u32);
                }
                assert_eq!(table.insert(k, i as u32), fresh, "n {n} key {k}");
            }
            for &k in &keys {
                assert_eq!(table.get(&k), map.get(&k), "n {n} key {k}");
                let home = table.home_of(k);
                table.prefetch_slot(home);
                assert_eq!(table.get_from(home, k), map.get(&k), "n {n} key {k}");
            }
            for _ in 0..1000 {
                let k = rng.u64(..);
                assert_eq!(table.get(&k), map.get(&k), "n {n} absent key {k}");
            }
            assert_eq!(table.get(&0).is_some(), map.contains_key(&0));
        }
    }

    /// Keys that share their top bits (here all of them: small numbers) do not pile up
    /// on one slot: the longest run of occupied slots stays short, so that no insert or
    /// lookup walks far.
    #[test]
    fn keys_alike_in_their_top_bits_do_not_crowd_into_long_runs() {
        let n = 50_000u64;
        let mut table = VocabTable::with_capacity(n as usize);
        for key in 0..n {
            assert!(table.insert(key, key as u32));
        }
        let (mut longest, mut run) = (0, 0);
        for s in table.slots.iter().chain(table.slots.iter()) {
            run = if s.used == 1 { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        // At a load of 0.38 a random layout's longest run is a few dozen slots.
        assert!(longest < 200, "longest run of occupied slots: {longest}");
        assert!((0..n).all(|k| table.get(&k) == Some(&(k as u32))));
    }

    #[test]
    fn zero_is_a_key_like_any_other() {
        let mut table = VocabTable::with_capacity(2);
        assert_eq!(table.get(&0), None);
        assert!(table.insert(0, 7));
        assert!(!table.insert(0, 8));
        assert_eq!(table.get(&0), Some(&7));
    }
}
