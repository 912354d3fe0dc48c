//! `size()` of the aggregates that keep a list per group.
//!
//! DataFusion asks an accumulator for its size after every batch it feeds it (memory
//! accounting). Summing the capacity of every group's list each time is quadratic over
//! an aggregation: with 473K groups and 360 batches it was 3.7% of a whole attribution
//! query. [`SizeCache`] counts exactly every [`RECOUNT`] calls and after each emit, and
//! answers with the last count in between; what it misses is at most the growth of
//! `RECOUNT` batches.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};

/// Calls between exact counts.
pub const RECOUNT: u32 = 16;

/// The last exact size of an accumulator, and the calls since it was counted.
#[derive(Debug, Default)]
pub struct SizeCache {
    bytes: AtomicUsize,
    calls: AtomicU32,
}

impl SizeCache {
    /// The size: `count()` on the first call, every [`RECOUNT`] calls and after
    /// [`SizeCache::invalidate`], else the last count.
    pub fn get(&self, count: impl FnOnce() -> usize) -> usize {
        // Atomics only because accumulators must be `Sync`; DataFusion calls this from
        // the one task that owns the accumulator.
        let calls = self.calls.load(Relaxed);
        if calls == 0 {
            self.bytes.store(count(), Relaxed);
        }
        self.calls.store((calls + 1) % RECOUNT, Relaxed);
        self.bytes.load(Relaxed)
    }

    /// Count again on the next call (after groups were emitted or merged in bulk).
    pub fn invalidate(&mut self) {
        self.calls.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn counts_on_first_call_every_recount_and_after_invalidate() {
        let mut cache = SizeCache::default();
        let counted = Cell::new(0);
        let count = |n: usize| {
            counted.set(counted.get() + 1);
            n
        };
        assert_eq!(cache.get(|| count(10)), 10);
        for _ in 1..RECOUNT {
            assert_eq!(cache.get(|| count(20)), 10);
        }
        assert_eq!(counted.get(), 1);
        assert_eq!(cache.get(|| count(30)), 30);
        cache.invalidate();
        assert_eq!(cache.get(|| count(5)), 5);
        assert_eq!(counted.get(), 3);
    }
}
