//! One writer per FortiGate target across instances (issue 16): the lease rules, pure. No I/O here: the store
//! grants and renews lease rows, the blocker asks [`Lease::write_window`] before each FortiGate write.
//!
//! The lease row lives in the shared store and expires on the *store's* clock: `expires_at = now() + ttl`, set
//! by the statement that grants or renews it, so instances never compare their own clocks. An instance does not
//! trust that row for its own writes either. It notes, on its monotonic clock, when it *sent* the grant or renewal
//! (`sent_at`), and counts its lease from there: the store's `now()` ran after that moment, so the row expires
//! no earlier than `sent_at + ttl`, and the instance's own deadline, `sent_at + ttl - margin`, falls before it.
//! An instance cut off from the store (network cut, store restart, a stopped process resumed) therefore stops
//! writing before another instance can be granted the target; `margin` covers clock rate differences and the
//! time a write already started takes to land, which the blocker bounds by starting a write only while the
//! window left is at least `min_window` (and giving the request no longer than that window).
//!
//! Failover bound: a dead leader's row expires `ttl` after its last renewal, and a follower asks every
//! `renew_every`, so another instance leads within `ttl + renew_every` of the death (with the defaults 10 s +
//! 2 s). Each grant bumps the row's `epoch` (shown by `integration cluster status` and `fortimisp_lease_epoch`).
//! The epoch is not a fencing token: the journal does not check it on writes. What keeps two instances from
//! writing to one FortiGate is the local deadline above (a leader stops before its row can expire); what keeps
//! their journal rows consistent is the store itself (one open pending action per target, kind and address, and
//! the first outcome recorded for it wins).

use std::time::Duration;

use tokio::time::Instant;

/// The lease timings. All instances of a cluster must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a grant or renewal holds, on the store's clock.
    pub ttl: Duration,
    /// How often a leader renews and a follower asks.
    pub renew_every: Duration,
    /// Subtracted from the lease on this instance's clock (clock rates, scheduling delays).
    pub margin: Duration,
    /// A write starts only with at least this much of the lease left, and is given no more than what is left.
    pub min_window: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            margin: Duration::from_secs(1),
            min_window: Duration::from_secs(2),
        }
    }
}

impl Timings {
    /// The timings for a configured ttl and renewal interval: the margin is a tenth of the ttl, the shortest
    /// write window a fifth (the defaults: 1 s and 2 s of 10 s).
    pub fn scaled(ttl: Duration, renew_every: Duration) -> Timings {
        Timings { ttl, renew_every, margin: ttl / 10, min_window: ttl / 5 }
    }

    /// The longest time between a leader's death and another instance leading.
    pub fn failover_bound(&self) -> Duration {
        self.ttl + self.renew_every
    }

    /// Whether a leader can renew in time and still have a window for writes: the timings make sense.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.renew_every.is_zero() || self.renew_every * 2 > self.ttl {
            return Err("renew_every must be more than 0 and at most half the ttl (a leader renews twice per ttl)");
        }
        if self.margin + self.min_window + self.renew_every >= self.ttl {
            return Err("margin + min_window + renew_every must be less than the ttl, or a leader can never write");
        }
        Ok(())
    }
}

/// What the store answered to a grant or renewal request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The row is this instance's, at this epoch, from the statement's time on.
    Granted { epoch: i64 },
    /// Another instance holds an unexpired lease.
    Held,
    /// No answer (store unreachable, timeout): nothing is known.
    Unknown,
}

/// This instance's view of its lease on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    timings: Timings,
    /// The epoch and the local deadline of the lease this instance holds, if any.
    held: Option<(i64, Instant)>,
}

impl Lease {
    pub fn new(timings: Timings) -> Lease {
        Lease { timings, held: None }
    }

    /// Takes in the answer to a request sent at `sent_at`.
    pub fn on_answer(&mut self, answer: Answer, sent_at: Instant) {
        match answer {
            Answer::Granted { epoch } => {
                let until = sent_at + self.timings.ttl.saturating_sub(self.timings.margin);
                self.held = Some((epoch, until));
            }
            Answer::Held => self.held = None,
            // Keep what was held: it runs out on its own deadline, which is before the row can expire.
            Answer::Unknown => {}
        }
    }

    /// The epoch a write must carry and how long it may take, if this instance may start a write at `now`.
    pub fn write_window(&self, now: Instant) -> Option<(i64, Duration)> {
        let (epoch, until) = self.held?;
        let left = until.checked_duration_since(now)?;
        (left >= self.timings.min_window).then_some((epoch, left))
    }

    /// Whether this instance leads the target at `now` (its lease has not run out on its own clock).
    pub fn is_leader(&self, now: Instant) -> bool {
        self.held.is_some_and(|(_, until)| now < until)
    }

    /// When to send the next grant or renewal request, after one sent at `sent_at`.
    pub fn next_request(&self, sent_at: Instant) -> Instant {
        sent_at + self.timings.renew_every
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_default_timings_are_consistent_and_fail_over_within_12_seconds() {
        let t = Timings::default();
        assert_eq!(t.check(), Ok(()));
        assert_eq!(t.failover_bound(), 12 * S);
        assert_eq!(Timings::scaled(t.ttl, t.renew_every), t);
        assert!(Timings { renew_every: 6 * S, ..t }.check().is_err());
        assert!(Timings { min_window: 7 * S, ..t }.check().is_err());
    }

    #[test]
    fn a_grant_opens_a_window_that_closes_before_the_store_row_expires() {
        let t = Timings::default();
        let start = Instant::now();
        let mut lease = Lease::new(t);
        assert_eq!(lease.write_window(start), None, "a follower never writes");
        lease.on_answer(Answer::Granted { epoch: 4 }, start);
        assert_eq!(lease.write_window(start + S), Some((4, 8 * S)));
        assert_eq!(lease.write_window(start + 7 * S), Some((4, 2 * S)));
        assert_eq!(lease.write_window(start + 7 * S + Duration::from_millis(1)), None, "less than min_window left");
        assert!(lease.is_leader(start + 8 * S) && !lease.is_leader(start + 9 * S));
        // The store unreachable: the lease runs out on its own, it is not extended.
        lease.on_answer(Answer::Unknown, start + 2 * S);
        assert_eq!(lease.write_window(start + 8 * S), None);
        // Another instance got it.
        lease.on_answer(Answer::Granted { epoch: 4 }, start + 2 * S);
        lease.on_answer(Answer::Held, start + 4 * S);
        assert!(!lease.is_leader(start + 4 * S));
    }

    proptest! {
        /// Split brain: whatever the answers and delays, a write this instance starts ends (at the latest, after
        /// its window) before the store's row, granted no earlier than the request was sent, can expire and be
        /// granted to another instance.
        #[test]
        fn no_write_outlives_the_store_lease(
            answers in proptest::collection::vec((0u8..3, 0u64..5_000, 0u64..3_000), 1..40),
            probe_ms in 0u64..60_000,
        ) {
            let t = Timings::default();
            let origin = Instant::now();
            let mut lease = Lease::new(t);
            let mut sent = origin;
            // When the store's rows granted to us expire, at the earliest (statement time >= sent time).
            let mut row_expires: Option<Instant> = None;
            for (kind, gap_ms, latency_ms) in answers {
                sent += Duration::from_millis(gap_ms);
                let answer = match kind {
                    0 => Answer::Granted { epoch: 1 },
                    1 => Answer::Held,
                    _ => Answer::Unknown,
                };
                if let Answer::Granted { .. } = answer {
                    // The statement ran somewhere between sending and the answer.
                    let statement = sent + Duration::from_millis(latency_ms / 2);
                    row_expires = Some(statement + t.ttl);
                }
                lease.on_answer(answer, sent);
                if answer == Answer::Held {
                    row_expires = None;
                }
                let now = sent + Duration::from_millis(latency_ms) + Duration::from_millis(probe_ms % 20_000);
                if let Some((_, window)) = lease.write_window(now) {
                    let expires = row_expires.expect("a window only under a grant");
                    prop_assert!(now + window + t.margin <= expires, "a write could outlive the row");
                }
            }
        }
    }
}
