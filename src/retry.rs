//! The delay between connection attempts: the user's `retry_delay`, randomized by a seedable
//! jitter and clamped to [`MAX_RETRY_DELAY`].

use std::{fmt, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};

/// The longest delay between two attempts: one day. A `retry_delay` that returns more is
/// clamped to this, with one warning per driver, and jitter never takes a delay beyond it.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The default delay between attempts: 10 s, as in the seed.
pub(crate) const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(10);

/// The default jitter: ±30 %.
pub(crate) const DEFAULT_JITTER: f64 = 0.3;

pub(crate) type DelayFn = Arc<dyn Fn() -> Duration + Send + Sync>;

/// One driver's source of retry delays.
pub(crate) struct Backoff {
    delay: DelayFn,
    jitter: f64,
    rng: StdRng,
    warned: bool,
}

impl Backoff {
    /// `seed` is `(layer seed, driver index)`: each driver of a seeded layer gets its own,
    /// reproducible stream.
    pub(crate) fn new(delay: DelayFn, jitter: f64, seed: Option<(u64, u64)>) -> Self {
        let rng = match seed {
            Some((seed, index)) => StdRng::seed_from_u64(mix(seed, index)),
            None => StdRng::from_os_rng(),
        };
        Self {
            delay,
            jitter,
            rng,
            warned: false,
        }
    }

    /// The delay to arm before the next attempt: `retry_delay()`, clamped, then randomized
    /// uniformly within `[1 - jitter, 1 + jitter]` of itself, and never more than
    /// [`MAX_RETRY_DELAY`]. A panic in `retry_delay` is caught and logged, and the default
    /// delay is used for that attempt.
    pub(crate) fn next_delay(&mut self, server_name: &str) -> Duration {
        let mut delay = match std::panic::catch_unwind(AssertUnwindSafe(|| (self.delay)())) {
            Ok(delay) => delay,
            Err(panic) => {
                tracing::warn!(
                    persistent_connection_to = %server_name,
                    panic = %crate::driver::panic_message(&*panic),
                    default = ?DEFAULT_RETRY_DELAY,
                    "retry_delay panicked; using the default delay",
                );
                DEFAULT_RETRY_DELAY
            }
        };
        if delay > MAX_RETRY_DELAY {
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    persistent_connection_to = %server_name,
                    requested = ?delay,
                    max = ?MAX_RETRY_DELAY,
                    "retry_delay returned more than the maximum; clamping it",
                );
            }
            delay = MAX_RETRY_DELAY;
        }
        if self.jitter > 0.0 {
            let factor = self.rng.random_range(1.0 - self.jitter..=1.0 + self.jitter);
            delay = delay.mul_f64(factor).min(MAX_RETRY_DELAY);
        }
        delay
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

/// Derives the seed of driver `index` from the layer's seed (SplitMix64's finalizer over the
/// two, so neighbouring indices give unrelated streams).
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(seed: u64, index: u64, jitter: f64) -> Backoff {
        Backoff::new(
            Arc::new(|| Duration::from_secs(10)),
            jitter,
            Some((seed, index)),
        )
    }

    /// Jittered delays stay within ±jitter and actually vary.
    #[test]
    fn jitter_is_uniform_within_bounds() {
        let mut b = backoff(7, 0, 0.3);
        let delays: Vec<f64> = (0..2000).map(|_| b.next_delay("t").as_secs_f64()).collect();
        assert!(delays.iter().all(|d| (7.0..=13.0).contains(d)));
        let below = delays.iter().filter(|d| **d < 8.5).count();
        let above = delays.iter().filter(|d| **d > 11.5).count();
        // Uniform: a quarter of the range at each end holds about a quarter of the draws.
        assert!((400..600).contains(&below), "{below}");
        assert!((400..600).contains(&above), "{above}");
    }

    /// The same seed and index repeat the same delays; another index gives another stream.
    #[test]
    fn seeded_streams_repeat_per_index_and_differ_across_indices() {
        let draw = |i| {
            let mut b = backoff(42, i, 0.3);
            (0..8).map(|_| b.next_delay("t")).collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
    }

    /// Zero jitter gives exactly `retry_delay()`.
    #[test]
    fn zero_jitter_is_exact() {
        let mut b = backoff(1, 0, 0.0);
        assert!((0..10).all(|_| b.next_delay("t") == Duration::from_secs(10)));
    }

    /// Jitter never takes a delay past the maximum.
    #[test]
    fn jitter_stays_within_the_maximum() {
        let mut b = Backoff::new(Arc::new(|| MAX_RETRY_DELAY), 0.3, Some((3, 0)));
        let delays: Vec<_> = (0..200).map(|_| b.next_delay("t")).collect();
        assert!(delays.iter().all(|d| *d <= MAX_RETRY_DELAY));
        assert!(
            delays.iter().any(|d| *d < MAX_RETRY_DELAY),
            "jitter still applies below"
        );
    }

    /// A panic in `retry_delay` is caught; that attempt uses the default delay.
    #[test]
    fn panic_in_retry_delay_falls_back_to_the_default() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let mut b = Backoff::new(
            Arc::new(move || {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    panic!("retry_delay exploded");
                }
                Duration::from_secs(3)
            }),
            0.0,
            Some((1, 0)),
        );
        assert_eq!(b.next_delay("t"), DEFAULT_RETRY_DELAY);
        assert_eq!(b.next_delay("t"), Duration::from_secs(3));
    }

    /// An absurd delay is clamped to the maximum, and the warning is given once.
    #[test]
    fn absurd_delay_is_clamped() {
        let mut b = Backoff::new(Arc::new(|| Duration::MAX), 0.0, Some((1, 0)));
        assert_eq!(b.next_delay("t"), MAX_RETRY_DELAY);
        assert!(b.warned);
        assert_eq!(b.next_delay("t"), MAX_RETRY_DELAY);
    }
}
