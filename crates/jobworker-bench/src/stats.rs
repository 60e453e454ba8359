//! Percentiles, rates, and how they are printed.
//!
//! Rates are in decimal GB/s and server totals in decimal MB, as the targets are
//! stated; sizes of outputs and per-item memory in binary units.

use std::time::Duration;

/// Latencies of one repeated operation, sorted.
#[derive(Debug, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Sorts the samples.
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort_unstable();
        Samples(samples)
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The nearest-rank percentile `p` (0 < p ≤ 100); zero when there are no samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    /// The 99th percentile: the tail a user notices.
    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    /// "p50 1.23 ms, p99 4.56 ms".
    pub fn summary(&self) -> String {
        format!("p50 {}, p99 {}", ms(self.p50()), ms(self.p99()))
    }
}

/// Bytes moved in some time.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// How many bytes arrived.
    pub bytes: u64,
    /// From the request to the last byte.
    pub elapsed: Duration,
}

impl Transfer {
    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The transfer with the median rate (the upper median for an even count).
pub fn median_rate(transfers: &[Transfer]) -> Option<Transfer> {
    let mut sorted = transfers.to_vec();
    sorted.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    sorted.get(sorted.len() / 2).copied()
}

/// CPU seconds per decimal GB moved.
pub fn per_gb(time: Duration, bytes: u64) -> f64 {
    time.as_secs_f64() / (bytes as f64 / 1e9).max(1e-12)
}

/// A latency in milliseconds.
pub fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

/// A rate in decimal gigabytes per second.
pub fn gbps(bytes_per_second: f64) -> String {
    format!("{:.2} GB/s", bytes_per_second / 1e9)
}

/// A size in binary units, as the outputs are chosen: "1 GiB", "64 MiB", "1.5 KiB".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A server's memory in decimal megabytes.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A ratio such as "0.83×".
pub fn times(ratio: f64) -> String {
    format!("{ratio:.2}×")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Samples {
        Samples::new(values.iter().map(|&v| Duration::from_millis(v)).collect())
    }

    #[test]
    fn percentiles_are_nearest_rank_over_sorted_samples() {
        let samples = millis(&[5, 1, 4, 2, 3]);
        assert_eq!(samples.p50(), Duration::from_millis(3));
        assert_eq!(samples.percentile(100.0), Duration::from_millis(5));
        assert_eq!(samples.percentile(1.0), Duration::from_millis(1));
    }

    #[test]
    fn p99_of_a_hundred_samples_is_the_second_largest() {
        let samples = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(samples.p99(), Duration::from_millis(99));
    }

    #[test]
    fn no_samples_give_zero_rather_than_a_panic() {
        assert_eq!(millis(&[]).p99(), Duration::ZERO);
    }

    #[test]
    fn sizes_print_in_the_largest_whole_binary_unit() {
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(64 << 20), "64 MiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(10), "10 B");
    }

    #[test]
    fn the_median_rate_is_the_middle_one() {
        let transfer = |secs| Transfer {
            bytes: 1000,
            elapsed: Duration::from_secs(secs),
        };
        let median = median_rate(&[transfer(1), transfer(4), transfer(2)]);
        assert_eq!(median.map(|t| t.elapsed), Some(Duration::from_secs(2)));
    }
}
