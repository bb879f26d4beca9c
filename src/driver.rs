//! The driver: the background task, one per layer application, that keeps the connection up.
//!
//! It runs connection *cycles*. Each cycle reports `AttemptingToConnect`, then makes attempts
//! (arm the retry timer, discover the address, connect, all bounded by the connect timeout)
//! until one succeeds, publishes the connection to every service clone, and serves until the
//! connection ends; then it reports `Disconnected`, waits for the timer armed before the
//! successful attempt (already expired if the connection lived longer than the delay), and
//! starts the next cycle.
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
    any::Any,
    convert::Infallible,
    fmt,
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
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
    discover::GetAddress,
    error::ConnectError,
    event::{Event, OnEvent},
    health::HealthCheck,
    retry::{Backoff, RetryContext},
    shared::{Shared, Word},
    state::State,
    sync::Arc,
};

/// What service clones and handles tell the driver.
pub(crate) enum Command {
    /// A clone's `poll_ready` on the connection published as `word` failed.
    Failed { word: Word, error: BoxError },
    /// Stop now (the shared state is already closed by the sender).
    Close,
    /// Stop once the current connection ends; stop now if there is none.
    CloseAfterCurrent,
    /// Skip the rest of the current retry delay (or the next one, if an attempt is running).
    ReconnectNow,
}

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

/// Everything one driver owns. `M` is the maker, `E` the event hook, `C` the close signal,
/// `H` the health check.
pub(crate) struct Driver<A, M: Service<A>, E, C, H> {
    pub(crate) shared: Arc<Shared<M::Response>>,
    pub(crate) inbox: Inbox,
    pub(crate) maker: M,
    pub(crate) get_address: GetAddress<A>,
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    /// A graceful close of a connection that lived at least this long is followed by an
    /// immediate reconnect.
    pub(crate) graceful_reconnect_after: Duration,
    /// A connection that lived at least this long resets the retry policy's failure count.
    pub(crate) flap_guard: Duration,
    /// How often to check a live connection's health, if at all.
    pub(crate) health_check_interval: Option<Duration>,
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

    /// A connection ended after `lived`: it resets the count if it lived at least
    /// `flap_guard`, else it counts as one more failure, whose error says how it ended.
    fn connection_ended(
        &mut self,
        lived: Duration,
        flap_guard: Duration,
        ended: &Result<Disconnect, Stop>,
    ) {
        self.last_connected_for = Some(lived);
        if lived >= flap_guard {
            self.reset();
        } else {
            self.failures = self.failures.saturating_add(1);
            let how = match ended {
                Ok(disconnect) => disconnect.to_string(),
                Err(stop) => stop.to_string(),
            };
            self.last_error = Some(ConnectError::connect(
                format!("the connection ended after {lived:?}, within the flap guard: {how}")
                    .into(),
            ));
        }
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

/// A user future whose panic is caught.
type Guarded<F> = futures_util::future::CatchUnwind<AssertUnwindSafe<F>>;

/// Calls user code that returns a future: a panic in the call is caught now (its message is
/// the error), one in the future when it is polled.
fn guarded<F: Future>(call: impl FnOnce() -> F) -> Result<Guarded<F>, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(future) => Ok(AssertUnwindSafe(future).catch_unwind()),
        Err(panic) => Err(panic_message(&*panic)),
    }
}

/// What a connection's end means for the next attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Closed gracefully after living at least `graceful_reconnect_after`: reconnect at once.
    GracefullyAfterUse,
    /// Anything else: wait for the retry timer.
    Otherwise,
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

/// The reason a close signal gave, or the panic it ended with.
fn signal_reason(reason: std::thread::Result<CloseReason>) -> CloseReason {
    reason.unwrap_or_else(|panic| {
        CloseReason::Error(format!("close signal panicked: {}", panic_message(&*panic)).into())
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
            //
            // At start and after every disconnect: forget what this cycle has reported, so
            // the first address and error of the new cycle are reported again.
            self.check_open()?;
            self.cycle = Cycle::default();
            self.set_state(State::Connecting);
            self.emit(Event::AttemptingToConnect);

            let (connection, retry_at) = self.connect_until_successful().await?;
            let disconnect = self.serve_until_disconnected(connection).await?;

            // ## Disconnected => (Closed | Waiting | Connecting)
            //
            // The timer was armed before the attempt that made this connection: a connection
            // that lived longer than the delay is replaced at once, a short-lived one waits
            // out the rest, so a flapping server is not hammered. A server that said goodbye
            // (idle close, GOAWAY) after a useful life is not failing: replace its connection
            // at once rather than leave requests waiting.
            if self.close_after_current {
                return Err(Stop::Closed);
            }
            self.next_delay = Some(self.decide_delay()?);
            if disconnect == Ended::GracefullyAfterUse {
                self.check_open()?;
                self.set_state(State::Connecting);
                tokio::task::yield_now().await;
            } else {
                self.wait_until(retry_at).await?;
            }
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
            // the flap guard (see `serve_until_disconnected`).
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
            self.shared.start_attempt(delay, self.streak.failures);
            self.set_state(State::Connecting);
            match self.attempt().await? {
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

    /// One attempt: discover the address, connect and check the connection's health, within
    /// the connect timeout, then ask for the connection's close signal. A panic in any of these user code paths is caught
    /// and becomes a failed attempt.
    async fn attempt(&mut self) -> Result<Result<Connection<M::Response, C>, ConnectError>, Stop> {
        let deadline = Instant::now() + self.connect_timeout;
        let timed_out = ConnectError::timeout(self.connect_timeout);

        // Both the closure and its future are user code: catch a panic in either.
        let get_address = &self.get_address;
        let discover = match guarded(|| get_address()) {
            Ok(discover) => discover,
            Err(panic) => return Ok(Err(ConnectError::panic(&panic))),
        };
        let address = match self.inbox.race(timeout_at(deadline, discover)).await? {
            Err(_elapsed) => return Ok(Err(timed_out)),
            Ok(Err(panic)) => return Ok(Err(ConnectError::panic(&panic_message(&*panic)))),
            Ok(Ok(Err(error))) => return Ok(Err(ConnectError::discovery(error))),
            Ok(Ok(Ok(address))) => address,
        };
        self.emit(Event::ObtainedAddress(address.clone()));

        let maker = &mut self.maker;
        let connect = AssertUnwindSafe(async move {
            poll_fn(|cx| maker.poll_ready(cx)).await?;
            maker.call(address).await
        })
        .catch_unwind();
        let connection = match self.inbox.race(timeout_at(deadline, connect)).await? {
            Err(_elapsed) => return Ok(Err(timed_out)),
            Ok(Err(panic)) => return Ok(Err(ConnectError::panic(&panic_message(&*panic)))),
            Ok(Ok(Err(error))) => return Ok(Err(ConnectError::connect(error.into()))),
            Ok(Ok(Ok(connection))) => connection,
        };

        // ## Connected? Not before the health check passes.
        let health_check = &self.health_check;
        let check = match guarded(|| health_check.check(&connection)) {
            Ok(check) => check,
            Err(panic) => return Ok(Err(ConnectError::panic(&panic))),
        };
        match self.inbox.race(timeout_at(deadline, check)).await? {
            Err(_elapsed) => return Ok(Err(timed_out)),
            Ok(Err(panic)) => return Ok(Err(ConnectError::panic(&panic_message(&*panic)))),
            Ok(Ok(Err(error))) => return Ok(Err(ConnectError::health_check(error))),
            Ok(Ok(Ok(()))) => {}
        }

        // A panic in the close signal's closure fails the attempt at once; one in its future
        // ends the connection later, as an error.
        let close_signal = &self.close_signal;
        let closed = match guarded(|| close_signal.closed(&connection)) {
            Ok(closed) => closed,
            Err(panic) => return Ok(Err(ConnectError::panic(&panic))),
        };
        Ok(Ok(Connection {
            service: connection,
            closed,
        }))
    }

    /// Publishes `connection` and waits until it ends.
    async fn serve_until_disconnected(
        &mut self,
        connection: Connection<M::Response, C>,
    ) -> Result<Ended, Stop> {
        let Connection {
            service: connection,
            closed,
        } = connection;
        self.set_state(State::Connected);
        self.shared.finish_attempt(None, self.streak.failures);
        let word = self
            .shared
            .publish(connection.clone())
            .ok_or(Stop::Closed)?;
        self.inbox.reconnect_now = false;
        self.inbox.reset_policy = false;
        let connected_at = Instant::now();
        // The driver keeps no copy (but the periodic health check's): after this the
        // connection lives in the shared state and in the service clones (and wherever the
        // event hook put it).
        let mut unhealthy = Box::pin(self.periodic_health_check(&connection));
        self.emit(Event::Connected(connection));

        // ## Connected => Disconnected
        //
        // Either the connection's close signal fires, or a clone reports that `poll_ready`
        // on this very connection failed. Reports about older connections are stale and
        // ignored: a slow clone must not tear down a fresh connection.
        tokio::pin!(closed);
        let ended = loop {
            tokio::select! {
                biased;
                command = self.inbox.commands.recv() => match command {
                    None => break Err(Stop::Abandoned),
                    Some(Command::Close) => break Err(Stop::Closed),
                    Some(Command::CloseAfterCurrent) => self.close_after_current = true,
                    Some(Command::ReconnectNow) => {}
                    Some(Command::Failed { word: failed, error }) if failed == word => {
                        // A connection that says goodbye (GOAWAY) fails `poll_ready` and fires
                        // its close signal at once; a clone's report may arrive first. The
                        // signal says more (a graceful close reconnects at once): prefer it.
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
                error = &mut unhealthy => break Ok(Disconnect::Unhealthy(error)),
            }
        };
        drop(unhealthy);
        // Every `Connected` is followed by a `Disconnected`, also when the driver stops.
        drop(self.shared.withdraw(word));
        let lived = connected_at.elapsed();
        self.streak.connection_ended(lived, self.flap_guard, &ended);
        self.shared.disconnected(self.streak.failures);
        let reason = match &ended {
            Ok(disconnect) => disconnect.to_string(),
            Err(stop) => stop.to_string(),
        };
        info!(
            persistent_connection_to = %self.shared.server_name,
            %reason,
            connected_for = ?lived,
            "disconnected",
        );
        self.emit(Event::Disconnected);
        let graceful = matches!(&ended, Ok(Disconnect::Signal(reason)) if reason.is_graceful());
        ended.map(|_| {
            if graceful && lived >= self.graceful_reconnect_after {
                Ended::GracefullyAfterUse
            } else {
                Ended::Otherwise
            }
        })
    }

    /// With a health check interval: a future that checks `connection` every interval and
    /// resolves with the first failure (a panic or a check longer than the connect timeout
    /// counts as one). Without: a future that never resolves.
    fn periodic_health_check(
        &self,
        connection: &M::Response,
    ) -> impl Future<Output = BoxError> + Send + use<A, M, E, C, H> {
        let checked = self
            .health_check_interval
            .map(|interval| (interval, self.health_check.clone(), connection.clone()));
        let limit = self.connect_timeout;
        async move {
            let Some((interval, health_check, connection)) = checked else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(interval).await;
                let check = match guarded(|| health_check.check(&connection)) {
                    Ok(check) => check,
                    Err(panic) => return format!("health check panicked: {panic}").into(),
                };
                match tokio::time::timeout(limit, check).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(error))) => return error,
                    Ok(Err(panic)) => {
                        return format!("health check panicked: {}", panic_message(&*panic)).into();
                    }
                    Err(_elapsed) => {
                        return format!("health check timed out after {limit:?}").into();
                    }
                }
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
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| on_event.on_state(state)))
        {
            warn!(
                persistent_connection_to = %self.shared.server_name,
                ?state,
                panic = %panic_message(&*panic),
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
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| on_event.on_event(&event)))
        {
            warn!(
                persistent_connection_to = %name,
                event = event.name(),
                panic = %panic_message(&*panic),
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

/// The text of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
