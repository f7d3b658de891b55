//! Capped exponential backoff with "equal jitter": the one formula behind every retry in fortimisp (the
//! FortiGate and MISP clients' request retries, the blocker's retries of pending actions).
//!
//! Attempt `n` (1-based) waits a uniform draw from `[d/2, d]`, where `d = min(max, initial · 2^(n-1))`. The lower
//! half keeps retries from hammering a struggling server; the random upper half keeps many clients (or many
//! pending actions) from retrying in step.

use std::time::Duration;

use rand::Rng;

/// Initial and maximum delay of a capped exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait; doubles with each failed attempt.
    pub initial: Duration,
    /// The ceiling never exceeds this.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// The upper bound of the wait after failed attempt `attempt` (1-based; 0 counts as 1), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << exp).min(self.max)
    }

    /// The wait after failed attempt `attempt`: a uniform draw from the upper half of [`Backoff::ceiling`].
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self.ceiling(attempt);
        let half = full / 2;
        let spread = u64::try_from((full - half).as_micros()).unwrap_or(u64::MAX);
        let extra = if spread == 0 { 0 } else { rand::thread_rng().gen_range(0..=spread) };
        half + Duration::from_micros(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let ceilings: Vec<u128> = (0..10).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [500, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delay_is_in_the_upper_half_of_the_ceiling() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        for attempt in 1..12 {
            let ceiling = b.ceiling(attempt);
            for _ in 0..200 {
                let d = b.delay(attempt);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "attempt {attempt}: {d:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn zero_initial_never_waits() {
        assert_eq!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).delay(3), Duration::ZERO);
    }
}
