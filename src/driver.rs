//! The driver: the background task, one per layer application, that keeps the connection up.
//!
//! It runs connection *cycles*. Each cycle reports `AttemptingToConnect`, then makes attempts
//! (arm the retry timer, discover the address, connect, check health, all bounded by the
//! connect timeout) until one succeeds, publishes the connection to every service clone, and
//! serves until the connection ends; then it reports `Disconnected` and decides, from how the
//! connection ended, whether the next cycle starts at once or after the retry timer armed
//! before the successful attempt:
//!
//! - the server's goodbye after serving (`CloseReason::Graceful`: `GOAWAY`, `Connection:
//!   close`, an idle close), or a goodbye before serving from a connection that outlived the
//!   flap guard: at once, and no failure is counted;
//! - anything else (an error, a failed `poll_ready`, a failed health check, a goodbye before
//!   serving from a young connection): at the retry timer, which has already expired if the
//!   connection lived longer than the delay.
//!
//! While serving, two things keep the connection without ending the cycle:
//!
//! - a periodic health check that answers [`NotServing`](crate::NotServing) withdraws the
//!   connection (requests wait) and publishes it again when the server serves again;
//! - with a maximum connection age, the driver makes the replacement *before* breaking the old
//!   one: the old one serves until the new one is connected and healthy, then the new one is
//!   published (reported as `Disconnected` of the old, then a cycle for the new one). If the
//!   replacement attempt fails, the old keeps serving and the rotation is tried again after
//!   the retry delay.
//!
//! # Shutdown
//!
//! The driver stops when [`Handle::close`](crate::Handle::close) is called, when the
//! connection ends after [`Handle::close_after_current`](crate::Handle::close_after_current),
//! or when every service clone and handle has been dropped (its command channel closes: there
//! is nobody left to connect for). Whatever ends it, including the task being dropped with its
//! runtime, its [`EndGuard`] closes the shared state, drops the shared copy of the connection
//! and wakes every waiter, so no caller is left `Pending` forever.

use std::{
    convert::Infallible,
    fmt,
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc as StdArc,
    time::Duration,
};

use futures_util::FutureExt as _;
use tokio::{
    sync::mpsc::UnboundedReceiver,
    time::{Instant, sleep_until, timeout_at},
};
use tower_service::Service;
use tracing::{debug, info, trace, warn};

use crate::{
    BoxError,
    close::{CloseReason, CloseSignal},
    command::Command,
    discover::GetAddress,
    error::ConnectError,
    event::{Event, OnEvent},
    health::{HealthCheck, NotServing},
    panic::{self, Guarded, guarded},
    retry::{Backoff, RetryContext},
    shared::{Ending, Shared, Word},
    state::State,
    sync::Arc,
};

/// Why the driver stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `close()` or `close_after_current()`.
    Closed,
    /// The retry policy gave up.
    GaveUp,
    /// Every service clone and handle is gone.
    Abandoned,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::GaveUp => "the retry policy gave up",
            Self::Abandoned => "every service clone and handle was dropped",
        })
    }
}

/// The result of a whole attempt run as one future (a rotation's, started while serving): the
/// maker handed back, and the address with the new connection, or the failure.
type AttemptOutput<A, M, C> = (
    M,
    Result<(A, Connection<<M as Service<A>>::Response, C>), ConnectError>,
);

/// A whole attempt as one future, owning the maker while it runs.
type AttemptFuture<A, M, C> = Pin<Box<dyn Future<Output = AttemptOutput<A, M, C>> + Send>>;

/// Everything one driver owns. `M` is the maker, `E` the event hook, `C` the close signal,
/// `H` the health check.
pub(crate) struct Driver<A, M: Service<A>, E, C: CloseSignal<M::Response>, H> {
    pub(crate) shared: Arc<Shared<M::Response>>,
    pub(crate) inbox: Inbox,
    /// The maker; `None` while a rotation's attempt owns it (see `in_flight`).
    pub(crate) maker: Option<M>,
    pub(crate) get_address: GetAddress<A>,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    /// A connection that lived at least this long resets the retry policy's failure count,
    /// and its goodbye is not a failure even if it served nothing.
    pub(crate) flap_guard: Duration,
    /// How often to check a live connection's health, if at all.
    pub(crate) health_check_interval: Option<Duration>,
    /// Replace a connection make-before-break once it is this old (jittered), if set.
    pub(crate) max_connection_age: Option<Duration>,
    pub(crate) on_event: std::sync::Arc<E>,
    pub(crate) close_signal: std::sync::Arc<C>,
    pub(crate) health_check: std::sync::Arc<H>,
    pub(crate) close_after_current: bool,
    /// What the retry policy is told: failures in a row, the last connection's life.
    pub(crate) streak: Streak,
    /// The delay the policy chose after the last failure or disconnect, for the next attempt
    /// (unless `reconnect_now` resets the policy first).
    pub(crate) next_delay: Option<Duration>,
    /// De-duplication state of the current cycle.
    pub(crate) cycle: Cycle<A>,
    /// A rotation's attempt that was still running when the connection it was to replace
    /// ended: the next cycle's first attempt.
    pub(crate) in_flight: Option<AttemptFuture<A, M, C>>,
    /// Declared last so it runs after everything else the driver owns has been dropped.
    pub(crate) _end: EndGuard<M::Response>,
}

/// The last address and error text reported in this cycle (events S5).
pub(crate) struct Cycle<A> {
    address: Option<A>,
    error: Option<String>,
}

impl<A> Default for Cycle<A> {
    fn default() -> Self {
        Self {
            address: None,
            error: None,
        }
    }
}

/// The retry policy's view of the recent past; see [`RetryContext`].
#[derive(Default)]
pub(crate) struct Streak {
    failures: u32,
    last_connected_for: Option<Duration>,
    last_error: Option<ConnectError>,
}

impl Streak {
    fn context(&self) -> RetryContext<'_> {
        RetryContext::new(
            self.failures,
            self.last_connected_for,
            self.last_error.as_ref(),
        )
    }

    fn failed(&mut self, error: ConnectError) {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
    }

    fn reset(&mut self) {
        self.failures = 0;
        self.last_error = None;
    }
}

/// A new connection and the future of its close signal (a panic in it is caught).
pub(crate) struct Connection<S, C: CloseSignal<S>> {
    service: S,
    closed: Guarded<C::Future>,
}

/// Runs one step of an attempt, user code that returns a future (`call`, called now), until
/// `deadline`: a panic (in the call or its future) and the deadline are failed attempts, like
/// the step's own error, which `error` maps.
fn bounded<T, E, F>(
    deadline: Instant,
    timeout: Duration,
    call: impl FnOnce() -> F,
    error: impl FnOnce(E) -> ConnectError,
) -> impl Future<Output = Result<T, ConnectError>>
where
    F: Future<Output = Result<T, E>>,
{
    let future = guarded(call);
    async move {
        let future = future.map_err(|panic| ConnectError::panic(&panic))?;
        match timeout_at(deadline, future).await {
            Err(_elapsed) => Err(ConnectError::timeout(timeout)),
            Ok(Err(panic)) => Err(ConnectError::panic(&panic::message(&*panic))),
            Ok(Ok(result)) => result.map_err(error),
        }
    }
}

/// The outcome of one periodic health check.
enum Health {
    Serving,
    NotServing,
    Failed(BoxError),
}

/// How a served connection ended.
enum Disconnect {
    /// Its close signal fired.
    Signal(CloseReason),
    /// A service clone's `poll_ready` on it failed.
    Failed(BoxError),
    /// A periodic health check failed.
    Unhealthy(BoxError),
}

/// How serving a connection ended.
enum Served<A, S, C: CloseSignal<S>> {
    /// The connection ended; `at_once` says whether the next cycle starts at once.
    Ended { at_once: bool },
    /// It reached its maximum age and was replaced by `connection` (already withdrawn and
    /// reported `Disconnected`; the new one is not published yet).
    Rotated {
        address: A,
        connection: Connection<S, C>,
    },
}

/// The reason a close signal gave, or the panic it ended with.
fn signal_reason(reason: std::thread::Result<CloseReason>) -> CloseReason {
    reason.unwrap_or_else(|panic| {
        CloseReason::Error(format!("close signal panicked: {}", panic::message(&*panic)).into())
    })
}

/// For the log: the connection's error with its causes (hyper's own text leaves out the
/// cause, e.g. "connection error" for a reset).
impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, error): (&str, &(dyn std::error::Error + 'static)) = match self {
            Self::Signal(CloseReason::Error(error)) => ("closed with error", &**error),
            Self::Signal(reason) => return fmt::Display::fmt(reason, f),
            Self::Failed(error) => ("poll_ready failed", &**error),
            Self::Unhealthy(error) => ("health check failed", &**error),
        };
        write!(f, "{prefix}: {error}")?;
        let mut last = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = cause.source();
        }
        Ok(())
    }
}

/// What connecting needs besides the maker, owned, so an attempt can run beside the driver.
struct Dialer<C, H> {
    health_check: StdArc<H>,
    close_signal: StdArc<C>,
    /// The health check interval: a new connection whose server answers "not serving" is
    /// checked again after it, within the attempt's deadline.
    recheck: Option<Duration>,
    timeout: Duration,
}

impl<C, H> Dialer<C, H> {
    /// The maker's `call`, then the health check, then the close signal; all within
    /// `deadline`. Hands the maker back with the outcome.
    async fn connect<A, M>(
        self,
        mut maker: M,
        address: A,
        deadline: Instant,
    ) -> (M, Result<Connection<M::Response, C>, ConnectError>)
    where
        M: Service<A>,
        M::Error: Into<BoxError>,
        C: CloseSignal<M::Response>,
        H: HealthCheck<M::Response>,
    {
        let outcome = self.connect_with(&mut maker, address, deadline).await;
        (maker, outcome)
    }

    async fn connect_with<A, M>(
        &self,
        maker: &mut M,
        address: A,
        deadline: Instant,
    ) -> Result<Connection<M::Response, C>, ConnectError>
    where
        M: Service<A>,
        M::Error: Into<BoxError>,
        C: CloseSignal<M::Response>,
        H: HealthCheck<M::Response>,
    {
        let connection = bounded(
            deadline,
            self.timeout,
            move || async move {
                poll_fn(|cx| maker.poll_ready(cx)).await?;
                maker.call(address).await
            },
            |error: M::Error| ConnectError::connect(error.into()),
        )
        .await?;

        // ## Connected? Not before the health check passes. A server that answers "not
        // serving" is asked again at the check interval, within the deadline.
        loop {
            let checked = bounded(
                deadline,
                self.timeout,
                || self.health_check.check(&connection),
                ConnectError::health_check,
            )
            .await;
            match (checked, self.recheck) {
                (Ok(()), _) => break,
                (Err(error), Some(interval))
                    if is_not_serving_error(&error) && Instant::now() + interval < deadline =>
                {
                    tokio::time::sleep(interval).await;
                }
                (Err(error), _) => return Err(error),
            }
        }

        // A panic in the close signal's closure fails the attempt at once; one in its future
        // ends the connection later, as an error.
        let closed = guarded(|| self.close_signal.closed(&connection))
            .map_err(|panic| ConnectError::panic(&panic))?;
        Ok(Connection {
            service: connection,
            closed,
        })
    }
}

// === impl Driver ===

impl<A, M, E, C, H> Driver<A, M, E, C, H>
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
    /// Runs cycles until the driver stops.
    pub(crate) async fn run(mut self) {
        let Err(stop) = self.run_cycles().await;
        // Closed before the hook hears it, so the state it is told matches the handle's.
        drop(self.shared.close().1);
        self.set_state(State::Closed);
        if let Stop::GaveUp = stop {
            warn!(
                persistent_connection_to = %self.shared.server_name,
                consecutive_failures = self.streak.failures,
                last_error = ?self.streak.last_error,
                "the retry policy gave up; closing",
            );
        }
        debug!(
            persistent_connection_to = %self.shared.server_name,
            reason = ?stop,
            "driver stopped",
        );
    }

    async fn run_cycles(&mut self) -> Result<Infallible, Stop> {
        self.report_state(State::Connecting);
        loop {
            // ## start of cycle => Connecting
            self.start_cycle()?;
            let (mut connection, retry_at) = self.connect_until_successful().await?;
            let at_once = loop {
                match self.serve_until_disconnected(connection).await? {
                    Served::Ended { at_once } => break at_once,
                    // ## Connected => Connected (make before break)
                    //
                    // The old connection is withdrawn and reported `Disconnected`; the new
                    // one gets a cycle of its own, as if it had been made after a goodbye.
                    Served::Rotated {
                        address,
                        connection: new,
                    } => {
                        self.start_cycle()?;
                        self.emit(Event::ObtainedAddress(address));
                        connection = new;
                    }
                }
            };

            // ## Disconnected => (Closed | Connecting | Waiting)
            //
            // A server that said goodbye after serving (or after a life longer than the flap
            // guard) is not failing: replace its connection at once, whatever its age, and
            // count no failure. Anything else waits for the timer armed before the attempt
            // that made this connection: a connection that lived longer than the delay is
            // replaced at once, a short-lived one waits out the rest, so a flapping server is
            // not hammered.
            if self.close_after_current {
                return Err(Stop::Closed);
            }
            self.next_delay = Some(self.decide_delay()?);
            if at_once {
                self.check_open()?;
                self.set_state(State::Connecting);
                tokio::task::yield_now().await;
            } else {
                self.wait_until(retry_at).await?;
            }
        }
    }

    /// Starts a cycle: forgets what the last one reported (so its first address and error are
    /// reported again) and reports `AttemptingToConnect`.
    fn start_cycle(&mut self) -> Result<(), Stop> {
        self.check_open()?;
        self.cycle = Cycle::default();
        self.set_state(State::Connecting);
        self.emit(Event::AttemptingToConnect);
        Ok(())
    }

    /// Tells the retry streak how the connection ended after `lived`; returns whether the
    /// next cycle starts at once.
    fn connection_ended(&mut self, disconnect: &Disconnect, lived: Duration) -> bool {
        self.streak.last_connected_for = Some(lived);
        let goodbye = self.is_goodbye(disconnect, lived);
        if goodbye || lived >= self.flap_guard {
            self.streak.reset();
        } else {
            self.streak.failures = self.streak.failures.saturating_add(1);
            self.streak.last_error = Some(ConnectError::connect(
                format!(
                    "the connection ended after {lived:?}, within the flap guard: {disconnect}"
                )
                .into(),
            ));
        }
        goodbye
    }

    /// Whether a connection that ended so after `lived` said goodbye (replaced at once, no
    /// failure): a graceful close after serving, or one before serving from a connection older
    /// than the flap guard (an idle close of an unused connection). A goodbye before serving
    /// from a younger one (accept-then-close, `GOAWAY` before any response) is a failure.
    fn is_goodbye(&self, disconnect: &Disconnect, lived: Duration) -> bool {
        match disconnect {
            Disconnect::Signal(reason) if reason.replaces_at_once() => true,
            Disconnect::Signal(reason) if reason.is_graceful() => lived >= self.flap_guard,
            _ => false,
        }
    }

    /// Attempts until one succeeds; returns the connection with its close signal, and the
    /// time its retry timer expires.
    async fn connect_until_successful(
        &mut self,
    ) -> Result<(Connection<M::Response, C>, Instant), Stop> {
        loop {
            // ## Connecting => (Connected | Waiting)
            //
            // The retry timer is armed just before the attempt, so the time an attempt takes
            // to fail counts toward the delay: a 3 s failure with a 10 s delay gives the next
            // attempt at 10 s, not 13 s.
            //
            // `reconnect_now()` resets the policy, as does a connection that lived at least
            // the flap guard (see `connection_ended`).
            self.check_open()?;
            if std::mem::take(&mut self.inbox.reset_policy) {
                self.streak.reset();
                self.next_delay = None;
            }
            let delay = match self.next_delay.take() {
                Some(delay) => delay,
                None => self.decide_delay()?,
            };
            let retry_at = Instant::now() + delay;
            self.set_state(State::Connecting);
            let outcome = match self.in_flight.take() {
                // A rotation's attempt outlived the connection it was to replace: its
                // outcome is this cycle's first (it was counted when it started).
                Some(attempt) => {
                    let (maker, outcome) = self.inbox.race(attempt).await?;
                    self.maker = Some(maker);
                    outcome.map(|(address, connection)| {
                        self.emit(Event::ObtainedAddress(address));
                        connection
                    })
                }
                None => {
                    self.shared.start_attempt(delay, self.streak.failures);
                    self.attempt().await?
                }
            };
            match outcome {
                Ok(connection) => return Ok((connection, retry_at)),
                Err(error) => {
                    self.streak.failed(error.clone());
                    self.shared
                        .finish_attempt(Some(error.clone()), self.streak.failures);
                    self.emit(Event::FailedToConnect(error));
                    // Ask the policy now, so that giving up happens at the failure, not a
                    // delay later; the answer is armed before the next attempt.
                    self.next_delay = Some(self.decide_delay()?);
                    // ## Waiting => Connecting
                    self.wait_until(retry_at).await?;
                }
            }
        }
    }

    /// Asks the retry policy for the delay before the next attempt; if it gives up, records
    /// the error to close with and stops the driver.
    fn decide_delay(&mut self) -> Result<Duration, Stop> {
        match self
            .backoff
            .next_delay(&self.shared.server_name, &self.streak.context())
        {
            Some(delay) => Ok(delay),
            None => {
                // ## (Connecting | Disconnected) => Closed (the policy gave up)
                let error = self.streak.last_error.clone();
                self.shared
                    .give_up(error.unwrap_or_else(ConnectError::closed));
                Err(Stop::GaveUp)
            }
        }
    }

    /// One attempt of a cycle: discover the address (reported as soon as it is known), then
    /// connect, each step cancelled at once by `close()`.
    async fn attempt(&mut self) -> Result<Result<Connection<M::Response, C>, ConnectError>, Stop> {
        let deadline = Instant::now() + self.connect_timeout;
        let address = match self.inbox.race(self.discover(deadline)).await? {
            Ok(address) => address,
            Err(error) => return Ok(Err(error)),
        };
        self.emit(Event::ObtainedAddress(address.clone()));
        let connect = self.connect(address, deadline);
        let (maker, outcome) = self.inbox.race(connect).await?;
        self.maker = Some(maker);
        Ok(outcome)
    }

    /// An attempt as one future that owns what it needs (a rotation's, run while the old
    /// connection serves): the driver stays free to serve meanwhile.
    fn whole_attempt(&mut self) -> AttemptFuture<A, M, C> {
        let deadline = Instant::now() + self.connect_timeout;
        let discover = self.discover(deadline);
        let maker = self.take_maker();
        let dialer = self.dialer();
        Box::pin(async move {
            let address = match discover.await {
                Ok(address) => address,
                Err(error) => return (maker, Err(error)),
            };
            let (maker, outcome) = dialer.connect(maker, address.clone(), deadline).await;
            (maker, outcome.map(|connection| (address, connection)))
        })
    }

    /// Discovery, bounded by `deadline`.
    fn discover(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<A, ConnectError>> + Send + 'static + use<A, M, E, C, H> {
        let get_address = self.get_address.clone();
        let timeout = self.connect_timeout;
        async move { bounded(deadline, timeout, || get_address(), ConnectError::discovery).await }
    }

    /// Connecting to `address`, bounded by `deadline`, with the maker moved into the future
    /// and handed back with the outcome.
    fn connect(
        &mut self,
        address: A,
        deadline: Instant,
    ) -> impl Future<Output = (M, Result<Connection<M::Response, C>, ConnectError>)>
    + Send
    + 'static
    + use<A, M, E, C, H> {
        let maker = self.take_maker();
        self.dialer().connect(maker, address, deadline)
    }

    fn take_maker(&mut self) -> M {
        self.maker
            .take()
            .expect("the maker is handed back before the next attempt starts")
    }

    fn dialer(&self) -> Dialer<C, H> {
        Dialer {
            health_check: self.health_check.clone(),
            close_signal: self.close_signal.clone(),
            recheck: self.health_check_interval,
            timeout: self.connect_timeout,
        }
    }

    /// Publishes `connection` and serves until it ends or is rotated.
    async fn serve_until_disconnected(
        &mut self,
        connection: Connection<M::Response, C>,
    ) -> Result<Served<A, M::Response, C>, Stop> {
        let Connection {
            service: connection,
            closed,
        } = connection;
        self.set_state(State::Connected);
        self.shared.finish_attempt(None, self.streak.failures);
        let mut word = Some(
            self.shared
                .publish(connection.clone())
                .ok_or(Stop::Closed)?,
        );
        self.inbox.reconnect_now = false;
        self.inbox.reset_policy = false;
        // With periodic health checks the driver keeps one copy, to check it and to publish
        // it again after "not serving"; else none: the service clones keep their own.
        let service = self.health_check_interval.map(|_| connection.clone());
        let connected_at = Instant::now();
        self.emit(Event::Connected(connection));

        let mut health = Box::pin(self.next_health_check(service.as_ref()));
        let mut rotate_at = self
            .max_connection_age
            .map(|age| Instant::now() + self.backoff.jittered(age));
        let mut rotation: Option<AttemptFuture<A, M, C>> = None;

        // ## Connected => Disconnected
        //
        // Either the connection's close signal fires, or a clone reports that `poll_ready`
        // on this very connection failed, or a health check fails. Reports about older
        // connections are stale and ignored: a slow clone must not tear down a fresh
        // connection.
        tokio::pin!(closed);
        let ended = loop {
            tokio::select! {
                biased;
                command = self.inbox.commands.recv() => match command {
                    None => break Err(Stop::Abandoned),
                    Some(Command::Close) => break Err(Stop::Closed),
                    Some(Command::CloseAfterCurrent) => self.close_after_current = true,
                    Some(Command::ReconnectNow) => {}
                    Some(Command::Failed { word: failed, error }) if Some(failed) == word => {
                        // A connection that says goodbye (GOAWAY) fails `poll_ready` and fires
                        // its close signal at once; a clone's report may arrive first. The
                        // signal says more (a goodbye is replaced at once): prefer it.
                        break Ok(match closed.as_mut().now_or_never() {
                            Some(reason) => Disconnect::Signal(signal_reason(reason)),
                            None => Disconnect::Failed(error),
                        });
                    }
                    Some(Command::Failed { word: failed, .. }) => trace!(
                        persistent_connection_to = %self.shared.server_name,
                        stale = ?failed,
                        current = ?word,
                        "ignoring a failure report about an older connection",
                    ),
                },
                reason = &mut closed => break Ok(Disconnect::Signal(signal_reason(reason))),
                health_now = &mut health => {
                    match health_now {
                        Health::Failed(error) => break Ok(Disconnect::Unhealthy(error)),
                        // ## Connected => NotServing: the connection stays, requests wait.
                        Health::NotServing => if let Some(old) = word.take() {
                            drop(self.shared.withdraw(old));
                            self.set_state(State::NotServing);
                            info!(
                                persistent_connection_to = %self.shared.server_name,
                                "the server is not serving; requests wait on this connection's health",
                            );
                        },
                        // ## NotServing => Connected
                        Health::Serving => if let (None, Some(service)) = (word, &service) {
                            word = Some(self.shared.publish(service.clone()).ok_or(Stop::Closed)?);
                            self.set_state(State::Connected);
                            info!(
                                persistent_connection_to = %self.shared.server_name,
                                "the server is serving again",
                            );
                        },
                    }
                    health.set(self.next_health_check(service.as_ref()));
                }
                () = sleep_until(rotate_at.unwrap_or_else(Instant::now)),
                    if rotate_at.is_some() && rotation.is_none() =>
                {
                    debug!(
                        persistent_connection_to = %self.shared.server_name,
                        "the connection reached its maximum age; making its replacement",
                    );
                    self.shared.start_attempt(Duration::ZERO, self.streak.failures);
                    rotation = Some(self.whole_attempt());
                }
                (maker, outcome) = async { rotation.as_mut().expect("guarded by the condition").await },
                    if rotation.is_some() =>
                {
                    rotation = None;
                    self.maker = Some(maker);
                    match outcome {
                        Ok((address, new)) => {
                            // ## make before break: the replacement is up; retire the old one.
                            let reason = "rotated: the connection reached its maximum age and its replacement is up";
                            self.retire(word, Ok(Ending::Rotation), reason, connected_at.elapsed(), service);
                            return Ok(Served::Rotated { address, connection: new });
                        }
                        Err(error) => {
                            self.shared.finish_attempt(Some(error.clone()), self.streak.failures);
                            let delay = self
                                .backoff
                                .next_delay(&self.shared.server_name, &RetryContext::new(1, None, Some(&error)))
                                .unwrap_or(self.connect_timeout);
                            warn!(
                                persistent_connection_to = %self.shared.server_name,
                                %error,
                                retry_in = ?delay,
                                "the replacement of an aged connection failed; the old one keeps serving",
                            );
                            rotate_at = Some(Instant::now() + delay);
                        }
                    }
                }
            }
        };
        drop(health);
        // A rotation's attempt still running is the next cycle's first.
        self.in_flight = rotation;
        let lived = connected_at.elapsed();
        let (ending, reason, at_once) = match &ended {
            Ok(disconnect) => {
                let at_once = self.connection_ended(disconnect, lived);
                if at_once {
                    let reason = format!(
                        "the server said goodbye ({disconnect}); replacing the connection at once"
                    );
                    (Ok(Ending::Goodbye), reason, true)
                } else {
                    (Ok(Ending::Failure), disconnect.to_string(), false)
                }
            }
            Err(stop) => (Err(*stop), stop.to_string(), false),
        };
        self.retire(word, ending, &reason, lived, service);
        ended.map(|_| Served::Ended { at_once })
    }

    /// Withdraws the connection published as `word` (if it is still published), records and
    /// logs its end, and reports `Disconnected`: every `Connected` is followed by a
    /// `Disconnected`, also when the driver stops.
    fn retire(
        &mut self,
        word: Option<Word>,
        ending: Result<Ending, Stop>,
        reason: &str,
        lived: Duration,
        service: Option<M::Response>,
    ) {
        if let Some(word) = word {
            drop(self.shared.withdraw(word));
        }
        drop(service);
        self.shared
            .disconnected(self.streak.failures, ending.unwrap_or(Ending::Failure));
        info!(
            persistent_connection_to = %self.shared.server_name,
            %reason,
            connected_for = ?lived,
            "disconnected",
        );
        self.emit(Event::Disconnected);
    }

    /// A future that waits for the health check interval, then checks `connection` once.
    /// Without an interval: a future that never resolves.
    fn next_health_check(
        &self,
        connection: Option<&M::Response>,
    ) -> impl Future<Output = Health> + Send + use<A, M, E, C, H> {
        let checked = self
            .health_check_interval
            .zip(connection)
            .map(|(interval, connection)| {
                (interval, self.health_check.clone(), connection.clone())
            });
        let limit = self.connect_timeout;
        async move {
            let Some((interval, health_check, connection)) = checked else {
                return std::future::pending().await;
            };
            tokio::time::sleep(interval).await;
            let deadline = Instant::now() + limit;
            let checked = bounded(
                deadline,
                limit,
                || health_check.check(&connection),
                ConnectError::health_check,
            )
            .await;
            match checked {
                Ok(()) => Health::Serving,
                Err(error) if is_not_serving_error(&error) => Health::NotServing,
                Err(error) => Health::Failed(Box::new(error)),
            }
        }
    }

    /// Stops the driver if the shared state was closed (by `close()`, possibly racing with
    /// the event that woke the driver): no new cycle, attempt or wait starts after close.
    fn check_open(&self) -> Result<(), Stop> {
        if self.shared.load().is_closed() {
            Err(Stop::Closed)
        } else {
            Ok(())
        }
    }

    /// Waits until `at`, or less on `reconnect_now`. Always yields to the runtime first, so a
    /// zero delay never starves other tasks.
    async fn wait_until(&mut self, at: Instant) -> Result<(), Stop> {
        self.check_open()?;
        // A timer that has already fired (the connection outlived the delay) is no wait.
        self.set_state(if at > Instant::now() {
            State::Waiting { next_attempt: at }
        } else {
            State::Connecting
        });
        tokio::task::yield_now().await;
        self.check_open()?;
        self.inbox.sleep_until(at).await
    }

    /// Publishes `state` to handles, and tells the hook if it changed. (`Closed` is published
    /// by whoever closes the shared state; the hook hears it when the driver stops.)
    fn set_state(&self, state: State) {
        if self.shared.set_state(state) || state == State::Closed {
            self.report_state(state);
        }
    }

    /// Tells the hook about `state`.
    fn report_state(&self, state: State) {
        let on_event = &self.on_event;
        if let Err(panic) = panic::catch(|| on_event.on_state(state)) {
            warn!(
                persistent_connection_to = %self.shared.server_name,
                ?state,
                %panic,
                "on_state panicked; the driver carries on",
            );
        }
    }

    /// Reports `event`: de-duplicates it within the cycle, logs it, and hands it to the hook.
    fn emit(&mut self, event: Event<A, M::Response>) {
        let name = &*self.shared.server_name;
        match &event {
            Event::AttemptingToConnect => {
                debug!(persistent_connection_to = %name, "attempting to connect")
            }
            Event::ObtainedAddress(address) => {
                if self.cycle.address.as_ref() == Some(address) {
                    return;
                }
                self.cycle.address = Some(address.clone());
                debug!(persistent_connection_to = %name, ?address, "obtained address");
            }
            Event::FailedToConnect(error) => {
                let text = error.to_string();
                if self.cycle.error.as_ref() == Some(&text) {
                    return;
                }
                self.cycle.error = Some(text);
                warn!(persistent_connection_to = %name, %error, kind = ?error.kind(), "failed to connect");
            }
            Event::Connected(_) => info!(persistent_connection_to = %name, "connected"),
            // Logged with its reason where it happens.
            Event::Disconnected => {}
        }
        let on_event = &self.on_event;
        if let Err(panic) = panic::catch(|| on_event.on_event(&event)) {
            warn!(
                persistent_connection_to = %name,
                event = event.name(),
                %panic,
                "on_event panicked; the event is dropped and the driver carries on",
            );
        }
    }
}

// === Inbox ===

/// The driver's command channel, and what it remembers between commands.
pub(crate) struct Inbox {
    pub(crate) commands: UnboundedReceiver<Command>,
    /// `reconnect_now` arrived while an attempt was running: skip the next wait.
    pub(crate) reconnect_now: bool,
    /// `reconnect_now` arrived: reset the retry policy before the next attempt.
    pub(crate) reset_policy: bool,
}

impl Inbox {
    pub(crate) fn new(commands: UnboundedReceiver<Command>) -> Self {
        Self {
            commands,
            reconnect_now: false,
            reset_policy: false,
        }
    }

    /// Runs `future` (an attempt's step) to completion unless a command stops the driver
    /// first; dropping the future cancels the attempt at once. Failure reports are stale here
    /// (nothing is connected), and `reconnect_now` is remembered for the wait that follows.
    async fn race<F: Future>(&mut self, future: F) -> Result<F::Output, Stop> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => if unconnected(command)? {
                    self.reconnect_now = true;
                    self.reset_policy = true;
                },
                output = &mut future => return Ok(output),
            }
        }
    }

    /// Sleeps until `at`, unless `reconnect_now` arrives first (or arrived during the attempt
    /// before) or a command stops the driver.
    async fn sleep_until(&mut self, at: Instant) -> Result<(), Stop> {
        if std::mem::take(&mut self.reconnect_now) {
            return Ok(());
        }
        let sleep = sleep_until(at);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                command = self.commands.recv() => if unconnected(command)? {
                    self.reset_policy = true;
                    return Ok(());
                },
                () = &mut sleep => return Ok(()),
            }
        }
    }
}

/// What a command means while not connected: stop the driver (`Err`), `reconnect_now`
/// (`Ok(true)`), or nothing (`Ok(false)`: a failure report is stale when nothing is
/// connected). "Close after the current connection" closes now, as there is none.
fn unconnected(command: Option<Command>) -> Result<bool, Stop> {
    match command {
        None => Err(Stop::Abandoned),
        Some(Command::Close | Command::CloseAfterCurrent) => Err(Stop::Closed),
        Some(Command::ReconnectNow) => Ok(true),
        Some(Command::Failed { .. }) => Ok(false),
    }
}

// === EndGuard ===

/// Closes the shared state when the driver ends, however it ends.
pub(crate) struct EndGuard<S>(pub(crate) Arc<Shared<S>>);

impl<S> Drop for EndGuard<S> {
    fn drop(&mut self) {
        let (_, connection) = self.0.close();
        drop(connection);
        self.0.set_ended();
    }
}

/// Whether a failed check's error says "not serving" (a [`NotServing`] in its chain).
fn is_not_serving_error(error: &ConnectError) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if error.is::<NotServing>() {
            return true;
        }
        source = error.source();
    }
    false
}
