//! Latency samples and their summary (median, percentiles) for the benchmark reports.

use std::time::Duration;

/// A summary of latency samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest.
    pub min: Duration,
    /// 50th percentile.
    pub median: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
}

impl Summary {
    /// Summarises `samples` (order does not matter); `None` when there are none.
    ///
    /// Percentiles are nearest-rank on the sorted samples: `p` picks the sample at index
    /// `round(p * (n - 1))`, so the median of an even count is the upper middle sample.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Self {
            n: sorted.len(),
            min: sorted[0],
            median: percentile(&sorted, 0.5),
            p90: percentile(&sorted, 0.9),
            p99: percentile(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// The nearest-rank percentile `p` (0..=1) of non-empty, sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let last = sorted.len() - 1;
    let index = (p.clamp(0.0, 1.0) * last as f64).round() as usize;
    sorted[index.min(last)]
}

/// Milliseconds with three decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let s = Summary::of(&ms_list(&[7])).unwrap();
        let seven = Duration::from_millis(7);
        assert_eq!(s.n, 1);
        assert_eq!([s.min, s.median, s.p90, s.max], [seven; 4]);
    }

    #[test]
    fn percentiles_of_unsorted_samples() {
        // 1..=10 shuffled: median index round(4.5) = 5 -> 6 ms; p90 index round(8.1) = 8 -> 9.
        let s = Summary::of(&ms_list(&[4, 9, 1, 10, 6, 2, 8, 3, 7, 5])).unwrap();
        assert_eq!(s.n, 10);
        assert_eq!(s.min, Duration::from_millis(1));
        assert_eq!(s.median, Duration::from_millis(6));
        assert_eq!(s.p90, Duration::from_millis(9));
        assert_eq!(s.max, Duration::from_millis(10));
    }

    #[test]
    fn formats_milliseconds() {
        assert_eq!(ms(Duration::from_micros(1234)), "1.234");
    }
}
