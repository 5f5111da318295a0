//! A lock-free log-linear histogram of durations (about 12.5 % precision), cheap enough to record
//! every task's run time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Counts of nanosecond values in buckets of exponentially growing width.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count.load(Relaxed))
            .finish_non_exhaustive()
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) & (SUB - 1);
    ((shift + 1) as u64 * SUB + sub) as usize
}

/// Largest value that falls in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let sub = i % SUB;
    let lower = (SUB + sub) << shift;
    lower.saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[index(nanos)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    pub(crate) fn mean(&self) -> Duration {
        let count = self.count.load(Relaxed);
        if count == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.sum_nanos.load(Relaxed) / count)
    }

    /// The value at quantile `q` (0.0 to 1.0), rounded up to its bucket's upper bound.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(upper_bound(i));
            }
        }
        Duration::from_nanos(upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_values_are_exact() {
        for v in 0..SUB {
            assert_eq!(upper_bound(index(v)), v);
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let h = Histogram::new();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p99 = h.quantile(0.99);
        assert!(p99 >= Duration::from_millis(99), "{p99:?}");
        assert!(p99 <= Duration::from_millis(113), "{p99:?}");
        let mean = h.mean();
        assert_eq!(mean, Duration::from_micros(50_500));
        assert_eq!(Histogram::new().quantile(0.5), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn bucket_bounds_hold_the_value(v in any::<u64>()) {
            let i = index(v);
            prop_assert!(i < BUCKETS);
            let hi = upper_bound(i);
            prop_assert!(v <= hi);
            // at most 12.5 % wide above the value
            prop_assert!(hi - v <= v / 8 + 1);
        }
    }
}
