//! Retrying within an operation's deadline: pauses that start small and double up to a
//! bound, a few immediate retries when a node said exactly where to go, and a `Timeout` error
//! naming the last cause once the deadline would pass.

use std::time::Duration;

use tokio::time::Instant;

use super::error::{Error, Result};

/// First pause between retries.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// Immediate retries allowed in a row (a leader hint, a refreshed region) before a pause:
/// two nodes naming each other as leader must not spin.
const IMMEDIATE_RETRIES_IN_A_ROW: u32 = 3;

/// Why an attempt should be made again, and how soon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The cache was corrected from the answer: worth trying again at once.
    pub now: bool,
    /// The shortest pause the server asked for.
    pub at_least: Duration,
    pub cause: String,
}

impl Retry {
    pub fn now(cause: String) -> Retry {
        Retry {
            now: true,
            at_least: Duration::ZERO,
            cause,
        }
    }

    pub fn after_pause(cause: String) -> Retry {
        Retry::at_least(Duration::ZERO, cause)
    }

    pub fn at_least(at_least: Duration, cause: String) -> Retry {
        Retry {
            now: false,
            at_least,
            cause,
        }
    }

    /// One retry standing for several (batch parts): at once only if all may go at once, the
    /// longest pause asked for, the causes joined.
    pub fn merge(retries: Vec<Retry>) -> Option<Retry> {
        let mut merged: Option<Retry> = None;
        for retry in retries {
            merged = Some(match merged {
                None => retry,
                Some(m) => Retry {
                    now: m.now && retry.now,
                    at_least: m.at_least.max(retry.at_least),
                    cause: if m.cause.contains(&retry.cause) {
                        m.cause
                    } else {
                        format!("{}; {}", m.cause, retry.cause)
                    },
                },
            });
        }
        merged
    }
}

/// The retry state of one operation.
pub struct Backoff {
    next_pause: Duration,
    max_pause: Duration,
    immediate_in_a_row: u32,
    started: Instant,
    deadline: Instant,
}

impl Backoff {
    pub fn new(max_pause: Duration, started: Instant, deadline: Instant) -> Backoff {
        Backoff {
            next_pause: FIRST_PAUSE.min(max_pause),
            max_pause,
            immediate_in_a_row: 0,
            started,
            deadline,
        }
    }

    /// How long to wait before retrying (pure: advances the pause sequence).
    pub fn next_delay(&mut self, retry: &Retry) -> Duration {
        if retry.now && self.immediate_in_a_row < IMMEDIATE_RETRIES_IN_A_ROW {
            self.immediate_in_a_row += 1;
            return Duration::ZERO;
        }
        self.immediate_in_a_row = 0;
        let pause = self.next_pause.max(retry.at_least);
        self.next_pause = (self.next_pause * 2).min(self.max_pause);
        pause
    }

    /// Waits before the next attempt, or fails with `Timeout` naming the last cause when the
    /// deadline would pass first.
    pub async fn wait(&mut self, retry: Retry) -> Result<()> {
        let delay = self.next_delay(&retry);
        let now = Instant::now();
        if now + delay >= self.deadline {
            return Err(Error::Timeout(format!(
                "gave up after {} ms; last cause: {}",
                now.duration_since(self.started).as_millis(),
                retry.cause
            )));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_bound_and_honor_the_server() {
        let now = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(50), now, now);
        let pause = |b: &mut Backoff| b.next_delay(&Retry::after_pause("x".into()));
        let delays: Vec<u64> = (0..5)
            .map(|_| pause(&mut backoff).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        let busy = Retry::at_least(Duration::from_millis(300), "busy".into());
        assert_eq!(backoff.next_delay(&busy), Duration::from_millis(300));
    }

    #[test]
    fn immediate_retries_are_bounded_in_a_row() {
        let now = Instant::now();
        let mut backoff = Backoff::new(Duration::from_secs(1), now, now);
        let hint = Retry::now("leader hint".into());
        let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay(&hint)).collect();
        assert_eq!(&delays[..3], &[Duration::ZERO; 3]);
        assert_eq!(delays[3], FIRST_PAUSE, "the fourth hint in a row pauses");
        assert_eq!(
            delays[4],
            Duration::ZERO,
            "after a pause, hints go at once again"
        );
    }

    #[test]
    fn merged_retries_wait_for_the_slowest_part() {
        let merged = Retry::merge(vec![
            Retry::now("a".into()),
            Retry::at_least(Duration::from_millis(5), "b".into()),
        ])
        .expect("two retries");
        assert!(!merged.now);
        assert_eq!(merged.at_least, Duration::from_millis(5));
        assert_eq!(merged.cause, "a; b");
        assert_eq!(Retry::merge(vec![]), None);
    }

    #[tokio::test]
    async fn a_retry_past_the_deadline_is_a_timeout_naming_the_cause() {
        let now = Instant::now();
        let mut backoff = Backoff::new(Duration::from_secs(1), now, now);
        let err = backoff
            .wait(Retry::after_pause("no leader for region 7".into()))
            .await
            .expect_err("the deadline has passed");
        assert!(
            matches!(&err, Error::Timeout(m) if m.contains("no leader for region 7")),
            "{err}"
        );
    }
}
