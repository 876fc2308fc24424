//! Latency histogram with bounded relative error and lock-free recording.
//!
//! Values are nanoseconds. Values below 128 get one bucket each. Above that,
//! every power-of-two range is split into 64 buckets, so a bucket is at most
//! 1/64 (about 1.6 %) of its value wide. Listener tasks record into one
//! shared [`AtomicHistogram`] with relaxed atomic adds, which costs no
//! allocation and no lock per frame.

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this get a bucket of their own.
const LINEAR_LIMIT: u64 = 128;
/// Buckets per power of two above [`LINEAR_LIMIT`].
const SUB_BUCKETS: u64 = 64;
/// Total bucket count, covering every `u64`.
const BUCKETS: usize = (LINEAR_LIMIT + (64 - 7) * SUB_BUCKETS) as usize;

/// Bucket index of `value`.
fn bucket_of(value: u64) -> usize {
    if value < LINEAR_LIMIT {
        return value as usize;
    }
    let exponent = 63 - u64::from(value.leading_zeros());
    let mantissa = (value >> (exponent - 6)) - SUB_BUCKETS;
    (LINEAR_LIMIT + (exponent - 7) * SUB_BUCKETS + mantissa) as usize
}

/// Largest value that falls into bucket `index`.
fn bucket_upper(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR_LIMIT {
        return index;
    }
    let exponent = (index - LINEAR_LIMIT) / SUB_BUCKETS + 7;
    let mantissa = (index - LINEAR_LIMIT) % SUB_BUCKETS + SUB_BUCKETS;
    let width = 1u64 << (exponent - 6);
    (mantissa << (exponent - 6)).saturating_add(width - 1)
}

/// A histogram that many tasks record into at once.
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl AtomicHistogram {
    /// Creates an empty histogram (about 30 KiB).
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    /// Adds one value, in nanoseconds.
    pub fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Copies the current counts.
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A copy of the counts of an [`AtomicHistogram`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u64>,
    max: u64,
}

impl Histogram {
    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Largest recorded value, exact.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Returns the value at quantile `q` (0.0 to 1.0): the smallest value that
    /// at least `ceil(q * count)` recorded values do not exceed. The result
    /// is the upper edge of its bucket, capped at the exact maximum, so it
    /// overstates the true quantile by at most 1/64 and never understates
    /// it. Returns `None` for an empty histogram.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &bucket) in self.buckets.iter().enumerate() {
            seen += bucket;
            if seen >= rank {
                return Some(bucket_upper(index).min(self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn bucket_edges_are_contiguous() {
        for index in 1..BUCKETS - 1 {
            let upper = bucket_upper(index);
            assert_eq!(bucket_of(upper), index, "upper edge of bucket {index}");
            assert_eq!(
                bucket_of(upper + 1),
                index + 1,
                "value after bucket {index}"
            );
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn quantile_matches_exact_within_error() {
        let histogram = AtomicHistogram::new();
        // A skewed set: most values near 100 us, a tail up to 80 ms.
        let mut values: Vec<u64> = (0..10_000u64)
            .map(|i| 90_000 + (i * 7919) % 20_000)
            .collect();
        values.extend((1..=100u64).map(|i| i * 800_000));
        for &value in &values {
            histogram.record(value);
        }
        values.sort_unstable();
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), values.len() as u64);
        assert_eq!(snapshot.max(), 80_000_000);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let exact = exact_quantile(&values, q);
            let estimate = snapshot.quantile(q).unwrap();
            assert!(estimate >= exact, "q {q}: {estimate} below exact {exact}");
            assert!(
                estimate <= exact + exact / 64,
                "q {q}: {estimate} more than 1/64 above exact {exact}"
            );
        }
    }

    #[test]
    fn small_values_are_exact() {
        let histogram = AtomicHistogram::new();
        for value in [3, 3, 5, 7] {
            histogram.record(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.quantile(0.5), Some(3));
        assert_eq!(snapshot.quantile(0.75), Some(5));
        assert_eq!(snapshot.quantile(1.0), Some(7));
    }

    #[test]
    fn empty_histogram_has_no_quantile() {
        assert_eq!(AtomicHistogram::new().snapshot().quantile(0.5), None);
    }
}
