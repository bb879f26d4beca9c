//! [`PersistentConnectionLayer`]: the configuration, and the [`Layer`] that starts a driver.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    BoxError,
    close::CloseSignal,
    discovery::{self, AddressSource, GetAddress},
    driver::{
        Driver, Hooks, Settings,
        erased::{Check, Hook, Maker, Signal},
    },
    error::InvalidSetting,
    event::OnEvent,
    health::HealthCheck,
    retry::{Backoff, Constant, DEFAULT_JITTER, RetryPolicy, SharedPolicy},
    service::PersistentConnection,
    shared::Shared,
    stats::RequestCounters,
};

/// The default bound on discovery plus connect of one attempt: 20 s.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The default minimum life of a connection that resets the retry policy.
pub(crate) const DEFAULT_FLAP_GUARD: Duration = Duration::from_secs(1);

/// Wraps a maker (a `Service<A>` whose response is the connection) in a
/// [`PersistentConnection`] that keeps one connection up.
///
/// `A` is the address type, `E` the event hook ([`on_event`](Self::on_event)) and `C` the
/// close signal ([`close_signal`](Self::close_signal)). Each application of the layer
/// ([`Layer::layer`]) spawns one driver task on the current Tokio runtime, which connects at
/// once.
///
/// # Example
///
/// ```
/// use std::{convert::Infallible, time::Duration};
/// use persistent_connection::{Event, PersistentConnectionLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), persistent_connection::BoxError> {
/// // A maker: given an address, returns a connection (here, a trivial service).
/// let maker = service_fn(|addr: &'static str| async move {
///     Ok::<_, Infallible>(service_fn(move |req: String| async move {
///         Ok::<_, Infallible>(format!("{addr} got {req}"))
///     }))
/// });
/// let svc = ServiceBuilder::new()
///     .layer(
///         PersistentConnectionLayer::new(|| async { Ok::<_, Infallible>("replica-1") })
///             .server_name("echo")
///             .retry_delay(|| Duration::from_secs(1))
///             .on_event(|event: &Event<_, _>| println!("{event:?}")),
///     )
///     .service(maker);
/// let reply = svc.oneshot("hello".to_string()).await?;
/// assert_eq!(reply, "replica-1 got hello");
/// # Ok(()) }
/// ```
pub struct PersistentConnectionLayer<A, E = (), C = (), H = ()> {
    config: Config<A>,
    on_event: Arc<E>,
    close_signal: Arc<C>,
    health_check: Arc<H>,
}

/// Everything but the hooks, whose types are the layer's parameters.
struct Config<A> {
    get_address: GetAddress<A>,
    server_name: Arc<str>,
    /// Whether `server_name` was set (else it is the default, `"unnamed"`).
    named: bool,
    retry_policy: SharedPolicy,
    jitter: f64,
    rng_seed: Option<u64>,
    /// How many drivers this layer (and its clones) has started: each derives its own random
    /// stream from the seed and its index.
    drivers: Arc<AtomicU64>,
    connect_timeout: Duration,
    flap_guard: Duration,
    max_connection_age: Option<Duration>,
    health_check_interval: Option<Duration>,
    /// A connector's request counters, for `Stats` (set by `http1()`/`http2()`).
    request_counters: Option<Arc<RequestCounters>>,
}

impl<A: Send + 'static> PersistentConnectionLayer<A> {
    /// A layer whose connections go to the address `source` gives: a closure
    /// `|| async { .. }` returning `Result<A, E>`, or any [`AddressSource`] (see
    /// [`discovery`](crate::discovery) for the catalogs). It is asked before **every**
    /// attempt, so a lookup in a catalog or DNS can move the client to another replica when one
    /// dies. A failed lookup is a failed attempt.
    pub fn new(source: impl AddressSource<A>) -> Self {
        Self::from_source(discovery::boxed(source))
    }

    /// A layer that always connects to `address`.
    pub fn fixed_address(address: A) -> Self
    where
        A: Clone + Sync,
    {
        Self::new(move || std::future::ready(Ok::<_, std::convert::Infallible>(address.clone())))
    }

    /// A layer that connects to each of `addresses` in turn, one per attempt.
    ///
    /// An empty list makes every attempt fail in discovery (a
    /// [`ConnectErrorKind::Discovery`](crate::ConnectErrorKind::Discovery) error whose message
    /// says the list is empty), after the retry delay like any failed attempt; it never panics.
    pub fn round_robin(addresses: impl IntoIterator<Item = A>) -> Self
    where
        A: Clone + Sync,
    {
        Self::from_source(discovery::round_robin(addresses.into_iter().collect()))
    }

    fn from_source(get_address: GetAddress<A>) -> Self {
        Self {
            config: Config {
                get_address,
                server_name: Arc::from("unnamed"),
                named: false,
                retry_policy: Arc::new(Constant::default()),
                jitter: DEFAULT_JITTER,
                rng_seed: None,
                drivers: Arc::new(AtomicU64::new(0)),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                flap_guard: DEFAULT_FLAP_GUARD,
                max_connection_age: None,
                health_check_interval: None,
                request_counters: None,
            },
            on_event: Arc::new(()),
            close_signal: Arc::new(()),
            health_check: Arc::new(()),
        }
    }
}

impl<A, E, C, H> PersistentConnectionLayer<A, E, C, H> {
    /// Makes the [`Stats`](crate::observe::Stats) of the connections this layer makes read the request
    /// counters of a connector (its replays and refusals).
    #[cfg(feature = "hyper")]
    pub(crate) fn with_request_counters(mut self, counters: Arc<RequestCounters>) -> Self {
        self.config.request_counters = Some(counters);
        self
    }

    /// The server name, if one was set.
    pub(crate) fn explicit_name(&self) -> Option<&str> {
        self.config.named.then_some(&*self.config.server_name)
    }

    /// These settings for one replica of a catalog (the replicas adaptor): connections go to
    /// `address` only, and the server name is `key`, after the layer's own name if it has one
    /// (`"billing/10.0.0.7:8080"`).
    pub(crate) fn for_replica(&self, address: A, key: &dyn fmt::Display) -> Self
    where
        A: Clone + Send + Sync + 'static,
    {
        let mut layer = self.clone();
        layer.config.get_address = discovery::boxed(move || {
            std::future::ready(Ok::<_, std::convert::Infallible>(address.clone()))
        });
        let name = match self.config.named {
            true => format!("{}/{key}", self.config.server_name),
            false => key.to_string(),
        };
        layer.server_name(name)
    }

    /// The server's name, for logs (the field `persistent_connection_to` of every log line)
    /// and `Debug` output. Default is `"unnamed"`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.config.server_name = Arc::from(name.into());
        self.config.named = true;
        self
    }

    /// The delay between two connection attempts, called once for every attempt (so it may
    /// grow): for the first attempt of the driver when it starts, for the others as soon as
    /// the previous attempt failed or the previous connection ended. The timer is armed just before each attempt: the time the attempt takes counts
    /// toward the delay, and a connection that lived longer than the delay is replaced at once
    /// when it ends. The value is randomized by [`jitter`](Self::jitter), and clamped to
    /// [`MAX_RETRY_DELAY`](crate::retry::MAX_RETRY_DELAY) (one warning per driver). A zero delay is
    /// allowed; the driver still yields to the runtime between attempts. A panic in
    /// `retry_delay` is caught and logged, and the default delay is used for that attempt.
    ///
    /// This is the seed's shape; for a delay that depends on the number of failures in a row,
    /// or a policy that gives up, use [`retry_policy`](Self::retry_policy).
    ///
    /// Default is a constant 10 seconds.
    pub fn retry_delay(self, retry_delay: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        self.retry_policy(retry_delay)
    }

    /// Chooses the delay before each attempt with a [`RetryPolicy`], which sees the
    /// [`RetryContext`](crate::retry::RetryContext) (failures in a row, how long the last connection
    /// lived, the last error) and may give up. The crate ships [`Constant`],
    /// [`Exponential`](crate::retry::Exponential) (with [`Exponential::grpc`](crate::retry::Exponential::grpc)),
    /// [`give_up_after`](RetryPolicy::give_up_after) and [`policy_fn`](crate::retry::policy_fn); a
    /// `Fn() -> Duration` closure is a policy too. [`jitter`](Self::jitter) applies to every
    /// delay the policy returns, and the timer is armed just before each attempt, as with
    /// [`retry_delay`](Self::retry_delay) (which this replaces, and vice versa).
    ///
    /// When the policy gives up, no further attempt is made and the persistent connection
    /// closes: `poll_ready` returns [`Closed`](crate::Closed), and
    /// [`Handle::connected_or_failed_to_connect`](crate::Handle::connected_or_failed_to_connect)
    /// returns the last attempt's error.
    ///
    /// Default is `Constant::new(10 s)`.
    ///
    /// ```
    /// use persistent_connection::{
    ///     PersistentConnectionLayer,
    ///     retry::{Exponential, RetryPolicy},
    /// };
    ///
    /// let layer = PersistentConnectionLayer::fixed_address("127.0.0.1:50051")
    ///     .retry_policy(Exponential::grpc().give_up_after(30));
    /// # let _ = layer;
    /// ```
    pub fn retry_policy(mut self, policy: impl RetryPolicy) -> Self {
        self.config.retry_policy = Arc::new(policy);
        self
    }

    /// A connection must live at least `min_life` to reset the retry policy's count of
    /// failures in a row; one that dies sooner counts as one more failure. So a server that
    /// accepts every connection and drops it at once sees the delays of an
    /// [`Exponential`](crate::retry::Exponential) policy grow, rather than a reconnect every
    /// `initial` delay (grpc#2988).
    ///
    /// The server's goodbye after serving (a [`CloseReason::Graceful`](crate::close::CloseReason))
    /// is never a failure, whatever the connection's age. A goodbye before serving
    /// ([`CloseReason::GracefulBeforeServing`](crate::close::CloseReason)) is one if the
    /// connection lived less than `min_life` (a server that accepts and closes), and not one
    /// after (an idle close of a connection nobody used).
    ///
    /// Default is 1 second.
    pub fn flap_guard(mut self, min_life: Duration) -> Self {
        self.config.flap_guard = min_life;
        self
    }

    /// Randomizes each retry delay uniformly within `[1 - jitter, 1 + jitter]` of itself, so
    /// that many clients that lost their server at the same moment do not all come back at
    /// the same moment. `0.0` turns randomization off.
    ///
    /// Default is `0.3` (±30 %).
    ///
    /// # Panics
    ///
    /// If `jitter` is outside `[0, 1]` or NaN. See [`try_jitter`](Self::try_jitter) for a
    /// version that returns an error instead.
    pub fn jitter(self, jitter: f64) -> Self {
        match self.try_jitter(jitter) {
            Ok(layer) => layer,
            Err(error) => panic!("PersistentConnectionLayer::jitter: {error}"),
        }
    }

    /// Like [`jitter`](Self::jitter), but returns an error for a value outside `[0, 1]`.
    ///
    /// # Errors
    ///
    /// [`InvalidSetting`] if `jitter` is outside `[0, 1]` or NaN.
    pub fn try_jitter(mut self, jitter: f64) -> Result<Self, InvalidSetting> {
        self.config.jitter = InvalidSetting::check_jitter(jitter)?;
        Ok(self)
    }

    /// Seeds the random source of the jitter, for reproducible delays. Each driver this layer
    /// starts derives its own stream from the seed and its index (first application, second,
    /// ...), so endpoints built from one layer do not retry in lockstep, while two layers with
    /// the same seed repeat the same delays.
    ///
    /// Default is a seed from the operating system.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.config.rng_seed = Some(seed);
        self
    }

    /// Bounds one attempt: address discovery plus connect. An attempt that takes longer fails
    /// with a [`ConnectErrorKind::Timeout`](crate::ConnectErrorKind::Timeout) error. A huge
    /// timeout (up to `Duration::MAX`) is no timeout.
    ///
    /// Default is 20 seconds.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: every attempt would fail.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "PersistentConnectionLayer::connect_timeout: a zero timeout fails every attempt"
        );
        self.config.connect_timeout = timeout;
        self
    }

    /// Replaces a connection once it is `age` old (randomized by the
    /// [jitter](Self::jitter), so a fleet does not rotate in step), make before break: the
    /// old connection keeps serving until its replacement is connected (and has passed the
    /// [health check](Self::health_check), if set); then new requests go to the new one while
    /// requests in flight finish on the old. If the replacement attempt fails, the old
    /// connection keeps serving and the rotation is tried again after the retry policy's
    /// delay. Each replacement runs discovery, so rotation spreads clients onto new replicas.
    ///
    /// A rotation is reported as `Disconnected` of the old connection, then a new cycle
    /// (`AttemptingToConnect`, `ObtainedAddress`, `Connected`) for the new one, all at the
    /// moment of the switch; it is counted in [`Stats::rotations`](crate::observe::Stats::rotations).
    ///
    /// Default is no maximum age; a huge age (up to `Duration::MAX`) is none either.
    ///
    /// # Panics
    ///
    /// If `age` is zero.
    pub fn max_connection_age(mut self, age: Duration) -> Self {
        assert!(
            !age.is_zero(),
            "PersistentConnectionLayer::max_connection_age: the age must not be zero"
        );
        self.config.max_connection_age = Some(age);
        self
    }

    /// Calls `on_event` with every [`Event`](crate::Event), in order, on the driver task.
    ///
    /// Annotate the closure's argument as `&Event<_, _>`: the connection type is only known
    /// once the layer wraps a maker. A panic in `on_event` is caught and logged.
    ///
    /// Default is to report events only to the log (`tracing`).
    pub fn on_event<F>(self, on_event: F) -> PersistentConnectionLayer<A, F, C, H> {
        PersistentConnectionLayer {
            config: self.config,
            on_event: Arc::new(on_event),
            close_signal: self.close_signal,
            health_check: self.health_check,
        }
    }

    /// Tells the driver when a connection has closed by itself, so it reconnects without
    /// waiting for a request to fail: `close_signal(&conn)` returns a future that resolves,
    /// with a [`CloseReason`](crate::close::CloseReason), when `conn` has closed. See
    /// [`CloseSignal`](crate::close::CloseSignal).
    ///
    /// Default is no signal: a connection ends only when its `poll_ready` fails.
    pub fn close_signal<F>(self, close_signal: F) -> PersistentConnectionLayer<A, E, F, H> {
        PersistentConnectionLayer {
            config: self.config,
            on_event: self.on_event,
            close_signal: Arc::new(close_signal),
            health_check: self.health_check,
        }
    }

    /// Checks each new connection before it counts as connected: `check(&conn)` returns a
    /// future of `Result<(), E>`; an error (or a panic, or running past the attempt's
    /// [connect timeout](Self::connect_timeout), which covers discovery, connect and the check)
    /// makes the attempt fail with a [`ConnectErrorKind::HealthCheck`] error, and the connection
    /// is dropped. With [`health_check_interval`](Self::health_check_interval) the check also
    /// runs periodically on the live connection, and a failure ends that connection. See
    /// [`HealthCheck`](crate::health::HealthCheck), which has an example with tonic-health.
    ///
    /// Default is no check: a connection counts as connected once the maker returns it.
    ///
    /// [`ConnectErrorKind::HealthCheck`]: crate::ConnectErrorKind::HealthCheck
    pub fn health_check<F>(self, check: F) -> PersistentConnectionLayer<A, E, C, F> {
        PersistentConnectionLayer {
            config: self.config,
            on_event: self.on_event,
            close_signal: self.close_signal,
            health_check: Arc::new(check),
        }
    }

    /// Runs the [health check](Self::health_check) every `interval` while connected; a check
    /// that fails, panics or takes longer than the [connect timeout](Self::connect_timeout)
    /// ends the connection (`Disconnected`, then a new cycle after the retry delay). A check
    /// that answers [`NotServing`](crate::health::NotServing) keeps the connection but makes it
    /// unready (state [`NotServing`](crate::State::NotServing)) until a check passes again
    /// (gRFC A17).
    ///
    /// Default is no periodic check (only the check of each new connection); a huge interval
    /// (up to `Duration::MAX`) is none either.
    ///
    /// # Panics
    ///
    /// If `interval` is zero.
    pub fn health_check_interval(mut self, interval: Duration) -> Self {
        assert!(
            !interval.is_zero(),
            "PersistentConnectionLayer::health_check_interval: the interval must not be zero"
        );
        self.config.health_check_interval = Some(interval);
        self
    }
}

impl<A, E, C, H, M> Layer<M> for PersistentConnectionLayer<A, E, C, H>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    M: Service<A> + Send + 'static,
    M::Response: Clone + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send + 'static,
    E: OnEvent<A, M::Response>,
    C: CloseSignal<M::Response>,
    H: HealthCheck<M::Response>,
{
    type Service = PersistentConnection<M::Response>;

    /// Spawns the driver for `maker` and returns the service.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime: the driver is a Tokio task.
    fn layer(&self, maker: M) -> Self::Service {
        let runtime = tokio::runtime::Handle::try_current().unwrap_or_else(|_| {
            panic!(
                "PersistentConnectionLayer::layer must be called from within a Tokio runtime: \
                 it spawns the task that keeps the connection alive"
            )
        });
        let config = &self.config;
        let index = config.drivers.fetch_add(1, Ordering::Relaxed);
        let shared = crate::sync::Arc::new(
            Shared::new(config.server_name.clone())
                .with_request_counters(config.request_counters.clone()),
        );
        let (commands, inbox) = mpsc::unbounded_channel();
        let driver = Driver::new(
            shared.clone(),
            inbox,
            Maker::new(maker),
            config.get_address.clone(),
            Backoff::new(
                config.retry_policy.clone(),
                config.jitter,
                config.rng_seed.map(|seed| (seed, index)),
            ),
            Settings {
                connect_timeout: config.connect_timeout,
                flap_guard: config.flap_guard,
                health_check_interval: config.health_check_interval,
                max_connection_age: config.max_connection_age,
            },
            Hooks {
                on_event: Hook::new(self.on_event.clone()),
                close_signal: Signal::new(self.close_signal.clone()),
                health_check: Check::new(self.health_check.clone()),
            },
        );
        runtime.spawn(driver.run());
        PersistentConnection::new(shared, commands)
    }
}

impl<A, E, C, H> Clone for PersistentConnectionLayer<A, E, C, H> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            on_event: self.on_event.clone(),
            close_signal: self.close_signal.clone(),
            health_check: self.health_check.clone(),
        }
    }
}

impl<A> Clone for Config<A> {
    fn clone(&self) -> Self {
        Self {
            get_address: self.get_address.clone(),
            server_name: self.server_name.clone(),
            named: self.named,
            retry_policy: self.retry_policy.clone(),
            jitter: self.jitter,
            rng_seed: self.rng_seed,
            drivers: self.drivers.clone(),
            connect_timeout: self.connect_timeout,
            flap_guard: self.flap_guard,
            max_connection_age: self.max_connection_age,
            health_check_interval: self.health_check_interval,
            request_counters: self.request_counters.clone(),
        }
    }
}

impl<A, E, C, H> fmt::Debug for PersistentConnectionLayer<A, E, C, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.config;
        f.debug_struct("PersistentConnectionLayer")
            .field("server_name", &config.server_name)
            .field("jitter", &config.jitter)
            .field("rng_seed", &config.rng_seed)
            .field("connect_timeout", &config.connect_timeout)
            .field("flap_guard", &config.flap_guard)
            .field("max_connection_age", &config.max_connection_age)
            .field("health_check_interval", &config.health_check_interval)
            .finish_non_exhaustive()
    }
}
