//! The delay between connection attempts: the [`RetryPolicy`] trait, the policies the crate
//! ships ([`Constant`], [`Exponential`], [`GiveUpAfter`], [`policy_fn`]). The driver clamps a
//! policy's answer to [`MAX_RETRY_DELAY`] and randomizes it with a seedable jitter.
//!
//! # How the driver uses a policy
//!
//! Just before every attempt the driver asks the policy for a delay, with a [`RetryContext`]
//! that says how many attempts failed in a row, how long the last connection lived and what
//! the last error was, and arms a timer with it (randomized by the layer's
//! [`jitter`](crate::PersistentConnectionLayer::jitter), ±30 % by default, on **every** delay,
//! also at a policy's cap). If the attempt fails, the next one starts when that timer fires;
//! if it succeeds and the connection later ends, the next cycle starts when the same timer
//! fires (at once if the connection outlived the delay).
//!
//! The failure count resets when a connection has lived at least the layer's
//! [`flap_guard`](crate::PersistentConnectionLayer::flap_guard) (1 s by default), and on
//! [`Handle::reconnect_now`](crate::Handle::reconnect_now). A connection that dies sooner
//! counts as one more failure, so a server that accepts and then drops every connection
//! still sees the delays grow (the lesson of grpc#2988).
//!
//! A policy that returns `None` gives up: the driver makes no further attempt and closes the
//! persistent connection; [`Handle::connected_or_failed_to_connect`] then returns the last
//! attempt's error.
//!
//! [`Handle::connected_or_failed_to_connect`]: crate::Handle::connected_or_failed_to_connect

use std::{fmt, sync::Arc, time::Duration};

use rand::{
    RngExt, SeedableRng,
    rngs::{StdRng, SysRng},
};

use crate::error::{ConnectError, InvalidSetting};

/// The longest delay between two attempts: one day. A policy that returns more is clamped to
/// this, with one warning per driver, and jitter never takes a delay beyond it.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The default delay between attempts: 10 s, as in the seed.
pub(crate) const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(10);

/// The default jitter: ±30 %.
pub(crate) const DEFAULT_JITTER: f64 = 0.3;

// === RetryPolicy ===

/// Chooses the delay before each connection attempt; set with
/// [`PersistentConnectionLayer::retry_policy`](crate::PersistentConnectionLayer::retry_policy).
///
/// Implemented for the seed's `Fn() -> Duration` closures (what
/// [`retry_delay`](crate::PersistentConnectionLayer::retry_delay) takes), for the policies in
/// this module, and for your own types. For a closure that wants the context, wrap it in
/// [`policy_fn`] (one blanket impl per closure shape would conflict).
///
/// The policy is shared by every driver the layer starts and called from their tasks, so it
/// takes `&self`: keep per-connection state in the [`RetryContext`], which the driver keeps.
/// A panic in the policy is caught and logged; that attempt uses the default 10 s delay.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::{PersistentConnectionLayer, retry::{RetryContext, RetryPolicy}};
///
/// /// 100 ms for the first three retries, then 5 s; give up after 20 failures in a row.
/// struct FastThenSlow;
///
/// impl RetryPolicy for FastThenSlow {
///     fn next_delay(&self, context: &RetryContext<'_>) -> Option<Duration> {
///         match context.consecutive_failures() {
///             0..3 => Some(Duration::from_millis(100)),
///             3..20 => Some(Duration::from_secs(5)),
///             _ => None,
///         }
///     }
/// }
///
/// let layer = PersistentConnectionLayer::fixed_address("127.0.0.1:8080").retry_policy(FastThenSlow);
/// # let _ = layer;
/// ```
pub trait RetryPolicy: Send + Sync + 'static {
    /// The delay to arm before the coming attempt, before jitter; `None` to give up (no more
    /// attempts: the persistent connection closes).
    fn next_delay(&self, context: &RetryContext<'_>) -> Option<Duration>;

    /// This policy, giving up once `failures` attempts in a row have failed.
    fn give_up_after(self, failures: u32) -> GiveUpAfter<Self>
    where
        Self: Sized,
    {
        GiveUpAfter {
            policy: self,
            failures,
        }
    }
}

/// The seed's `retry_delay`: called before every attempt, it may return a different delay
/// each time, and never gives up.
impl<F> RetryPolicy for F
where
    F: Fn() -> Duration + Send + Sync + 'static,
{
    fn next_delay(&self, _: &RetryContext<'_>) -> Option<Duration> {
        Some(self())
    }
}

/// What a [`RetryPolicy`] knows when it chooses the delay before an attempt.
#[derive(Clone, Copy, Debug)]
pub struct RetryContext<'a> {
    consecutive_failures: u32,
    last_connected_for: Option<Duration>,
    last_error: Option<&'a ConnectError>,
}

impl<'a> RetryContext<'a> {
    /// A context, for testing a policy.
    pub fn new(
        consecutive_failures: u32,
        last_connected_for: Option<Duration>,
        last_error: Option<&'a ConnectError>,
    ) -> Self {
        Self {
            consecutive_failures,
            last_connected_for,
            last_error,
        }
    }

    /// How many attempts failed in a row before this one: 0 for the very first attempt and
    /// after a reset (a connection that lived at least the flap guard, or
    /// [`reconnect_now`](crate::Handle::reconnect_now)). A connection that died within the flap
    /// guard counts as a failure.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// How long the latest connection lived, once one has ended (`None` before).
    pub fn last_connected_for(&self) -> Option<Duration> {
        self.last_connected_for
    }

    /// The error of the latest failed attempt, if an attempt has failed since the last reset;
    /// after a connection that died within the flap guard, an error (kind
    /// [`Connect`](crate::ConnectErrorKind::Connect)) that says how it ended.
    pub fn last_error(&self) -> Option<&'a ConnectError> {
        self.last_error
    }
}

// === Policies ===

/// The same delay before every attempt: the seed's default policy (10 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Constant {
    delay: Duration,
}

impl Constant {
    /// `delay` before every attempt.
    pub const fn new(delay: Duration) -> Self {
        Self { delay }
    }
}

impl Default for Constant {
    /// 10 seconds, the seed's default.
    fn default() -> Self {
        Self::new(DEFAULT_RETRY_DELAY)
    }
}

impl RetryPolicy for Constant {
    fn next_delay(&self, _: &RetryContext<'_>) -> Option<Duration> {
        Some(self.delay)
    }
}

/// A delay that grows by a factor with every failure in a row, up to a cap:
/// `min(initial × multiplier^failures, max)`.
///
/// The layer's jitter applies after the cap, so at the cap the delay still varies (±30 % by
/// default: uniform in `[0.7 max, 1.3 max]`); tower's, Finagle's and linkerd's backoffs lose
/// their jitter there, and clients that failed together come back together.
///
/// [`Exponential::grpc`] has gRPC's connection-backoff parameters.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::{PersistentConnectionLayer, retry::{Exponential, RetryPolicy}};
///
/// let grpc = Exponential::grpc();
/// assert_eq!(grpc.delay(0), Duration::from_secs(1));
/// assert_eq!(grpc.delay(1), Duration::from_millis(1600));
/// assert_eq!(grpc.delay(30), Duration::from_secs(120));
///
/// let layer = PersistentConnectionLayer::fixed_address("127.0.0.1:50051")
///     .retry_policy(grpc.give_up_after(50))
///     .jitter(0.2); // gRPC's ±20 %
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exponential {
    initial: Duration,
    multiplier: f64,
    max: Duration,
}

impl Exponential {
    /// `initial` before the first attempt and after a reset, multiplied by `multiplier` with
    /// every failure in a row, capped at `max`.
    ///
    /// # Panics
    ///
    /// If `multiplier` is less than 1 or not finite, or `initial` is more than `max`. See
    /// [`try_new`](Self::try_new) for a version that returns an error.
    pub fn new(initial: Duration, multiplier: f64, max: Duration) -> Self {
        match Self::try_new(initial, multiplier, max) {
            Ok(policy) => policy,
            Err(error) => panic!("Exponential::new: {error}"),
        }
    }

    /// Like [`new`](Self::new), but returns an error for invalid parameters.
    ///
    /// # Errors
    ///
    /// [`InvalidSetting`] if `multiplier` is less than 1 or not finite, or `initial` is more
    /// than `max`.
    pub fn try_new(
        initial: Duration,
        multiplier: f64,
        max: Duration,
    ) -> Result<Self, InvalidSetting> {
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(invalid_policy(format!(
                "multiplier {multiplier} must be a finite number >= 1"
            )));
        }
        if initial > max {
            return Err(invalid_policy(format!(
                "initial delay {initial:?} is more than the cap {max:?}"
            )));
        }
        Ok(Self {
            initial,
            multiplier,
            max,
        })
    }

    /// gRPC's connection backoff: 1 s, ×1.6 per failure, capped at 120 s
    /// (`doc/connection-backoff.md`). gRPC jitters by ±20 %: add
    /// [`.jitter(0.2)`](crate::PersistentConnectionLayer::jitter) to match it exactly (the
    /// layer's default is ±30 %).
    pub fn grpc() -> Self {
        Self::new(Duration::from_secs(1), 1.6, Duration::from_secs(120))
    }

    /// The delay after `failures` failures in a row, before jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        // Past the cap the power only grows: compute in seconds and stop at the cap, so huge
        // failure counts neither overflow nor panic. (Zero stays zero: 0 × ∞ would be NaN.)
        if self.initial.is_zero() {
            return Duration::ZERO;
        }
        let factor = self
            .multiplier
            .powi(i32::try_from(failures).unwrap_or(i32::MAX));
        let seconds = self.initial.as_secs_f64() * factor;
        if seconds.is_finite() && seconds < self.max.as_secs_f64() {
            Duration::from_secs_f64(seconds)
        } else {
            self.max
        }
    }
}

impl RetryPolicy for Exponential {
    fn next_delay(&self, context: &RetryContext<'_>) -> Option<Duration> {
        Some(self.delay(context.consecutive_failures()))
    }
}

/// A policy that gives up once a number of attempts in a row have failed; made with
/// [`RetryPolicy::give_up_after`].
///
/// With `give_up_after(n)`, `n` attempts are made after the last reset; when the `n`-th has
/// failed, the persistent connection closes with its error. `give_up_after(0)` never attempts.
#[derive(Clone, Copy, Debug)]
pub struct GiveUpAfter<P> {
    policy: P,
    failures: u32,
}

impl<P: RetryPolicy> RetryPolicy for GiveUpAfter<P> {
    fn next_delay(&self, context: &RetryContext<'_>) -> Option<Duration> {
        if context.consecutive_failures() >= self.failures {
            return None;
        }
        self.policy.next_delay(context)
    }
}

/// A policy from a closure that sees the [`RetryContext`].
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::{PersistentConnectionLayer, retry::policy_fn};
///
/// // Linear growth: 1 s, 2 s, 3 s, ... up to 30 s.
/// let layer = PersistentConnectionLayer::fixed_address("127.0.0.1:8080").retry_policy(
///     policy_fn(|context| {
///         let step = u64::from(context.consecutive_failures()) + 1;
///         Some(Duration::from_secs(step.min(30)))
///     }),
/// );
/// # let _ = layer;
/// ```
pub fn policy_fn<F>(f: F) -> PolicyFn<F>
where
    F: Fn(&RetryContext<'_>) -> Option<Duration> + Send + Sync + 'static,
{
    PolicyFn(f)
}

/// A [`RetryPolicy`] from a closure; see [`policy_fn`].
#[derive(Clone, Copy)]
pub struct PolicyFn<F>(F);

impl<F> RetryPolicy for PolicyFn<F>
where
    F: Fn(&RetryContext<'_>) -> Option<Duration> + Send + Sync + 'static,
{
    fn next_delay(&self, context: &RetryContext<'_>) -> Option<Duration> {
        (self.0)(context)
    }
}

impl<F> fmt::Debug for PolicyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PolicyFn(..)")
    }
}

/// Parameters that make no policy, refused by [`Exponential::try_new`].
fn invalid_policy(reason: String) -> InvalidSetting {
    InvalidSetting::new("retry policy", format!("invalid retry policy: {reason}"))
}

// === Backoff ===

pub(crate) type SharedPolicy = Arc<dyn RetryPolicy>;

/// One driver's source of retry delays.
pub(crate) struct Backoff {
    policy: SharedPolicy,
    jitter: f64,
    rng: StdRng,
    warned: bool,
}

impl Backoff {
    /// `seed` is `(layer seed, driver index)`: each driver of a seeded layer gets its own,
    /// reproducible stream.
    pub(crate) fn new(policy: SharedPolicy, jitter: f64, seed: Option<(u64, u64)>) -> Self {
        let rng = match seed {
            Some((seed, index)) => StdRng::seed_from_u64(mix(seed, index)),
            // The system's random source; should it fail, a seed from the clock still keeps
            // drivers from retrying in lockstep.
            None => StdRng::try_from_rng(&mut SysRng).unwrap_or_else(|_| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos() as u64);
                StdRng::seed_from_u64(mix(nanos, std::process::id().into()))
            }),
        };
        Self {
            policy,
            jitter,
            rng,
            warned: false,
        }
    }

    /// The delay to arm before the next attempt, or `None` if the policy gives up: the
    /// policy's delay, clamped, then randomized uniformly within `[1 - jitter, 1 + jitter]` of
    /// itself, and never more than [`MAX_RETRY_DELAY`]. A panic in the policy is caught and
    /// logged, and the default delay is used for that attempt.
    pub(crate) fn next_delay(
        &mut self,
        server_name: &str,
        context: &RetryContext<'_>,
    ) -> Option<Duration> {
        let policy = &self.policy;
        let mut delay = match crate::panic::catch(|| policy.next_delay(context)) {
            Ok(delay) => delay?,
            Err(panic) => {
                tracing::warn!(
                    persistent_connection_to = %server_name,
                    %panic,
                    default = ?DEFAULT_RETRY_DELAY,
                    "the retry policy panicked; using the default delay",
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
                    "the retry policy returned more than the maximum delay; clamping it",
                );
            }
            delay = MAX_RETRY_DELAY;
        }
        if self.jitter > 0.0 {
            let factor = self.rng.random_range(1.0 - self.jitter..=1.0 + self.jitter);
            delay = delay.mul_f64(factor).min(MAX_RETRY_DELAY);
        }
        Some(delay)
    }
}

impl Backoff {
    /// `duration` randomized like a delay (uniformly within `[1 - jitter, 1 + jitter]` of
    /// itself), so a fleet's timers do not fire in step. Saturates at `Duration::MAX` (a
    /// huge setting, such as `max_connection_age(Duration::MAX)`, stays huge).
    pub(crate) fn jittered(&mut self, duration: Duration) -> Duration {
        if self.jitter > 0.0 {
            let factor = self.rng.random_range(1.0 - self.jitter..=1.0 + self.jitter);
            // `mul_f64`, without its panic on overflow.
            Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(Duration::MAX)
        } else {
            duration
        }
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
        Backoff::new(Arc::new(Constant::default()), jitter, Some((seed, index)))
    }

    const START: RetryContext<'static> = RetryContext {
        consecutive_failures: 0,
        last_connected_for: None,
        last_error: None,
    };

    impl Backoff {
        /// The next delay with a fresh context, for tests of the jitter and clamp.
        fn next(&mut self) -> Duration {
            self.next_delay("t", &START).unwrap()
        }
    }

    /// Jittered delays stay within ±jitter and actually vary.
    #[test]
    fn jitter_is_uniform_within_bounds() {
        let mut b = backoff(7, 0, 0.3);
        let delays: Vec<f64> = (0..2000).map(|_| b.next().as_secs_f64()).collect();
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
            (0..8).map(|_| b.next()).collect::<Vec<_>>()
        };
        assert_eq!(draw(0), draw(0));
        assert_ne!(draw(0), draw(1));
    }

    /// Zero jitter gives exactly `retry_delay()`.
    #[test]
    fn zero_jitter_is_exact() {
        let mut b = backoff(1, 0, 0.0);
        assert!((0..10).all(|_| b.next() == Duration::from_secs(10)));
    }

    /// Jitter never takes a delay past the maximum.
    #[test]
    fn jitter_stays_within_the_maximum() {
        let mut b = Backoff::new(Arc::new(|| MAX_RETRY_DELAY), 0.3, Some((3, 0)));
        let delays: Vec<_> = (0..200).map(|_| b.next()).collect();
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
        assert_eq!(b.next(), DEFAULT_RETRY_DELAY);
        assert_eq!(b.next(), Duration::from_secs(3));
    }

    /// An absurd delay is clamped to the maximum, and the warning is given once.
    #[test]
    fn absurd_delay_is_clamped() {
        let mut b = Backoff::new(Arc::new(|| Duration::MAX), 0.0, Some((1, 0)));
        assert_eq!(b.next(), MAX_RETRY_DELAY);
        assert!(b.warned);
        assert_eq!(b.next(), MAX_RETRY_DELAY);
    }
}
