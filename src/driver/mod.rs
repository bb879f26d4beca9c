//! The driver: the background task, one per layer application, that keeps the connection up.
//! Its loop, [`Driver::run_cycles`] just below, is the seed's: connect until successful,
//! serve until the connection ends, then start again at once (the server said goodbye) or
//! when the retry timer expires (anything else). The rest of this module is the steps it
//! names; `attempt.rs` bounds and guards each attempt's user code, `retry.rs` owns the retry
//! policy and its streak, `report.rs` is the one place that tells handles, hooks and the log,
//! `inbox.rs` takes commands while the driver waits, `erased.rs` erases the maker and hooks.
//!
//! # Shutdown
//!
//! The driver stops when [`Handle::close`](crate::Handle::close) is called, when the
//! connection ends after [`Handle::close_after_current`](crate::Handle::close_after_current),
//! or when every service clone and handle has been dropped (its command channel closes: there
//! is nobody left to connect for). Whatever ends it, including the task being dropped with its
//! runtime, its [`EndGuard`] closes the shared state, drops the shared copy of the connection
//! and wakes every waiter, so no caller is left `Pending` forever.

mod attempt;
pub(crate) mod erased;
mod inbox;
mod report;
mod retry;

use std::{convert::Infallible, fmt, future::Future, time::Duration};

use futures_util::FutureExt as _;
use tokio::{
    sync::mpsc::UnboundedReceiver,
    time::{Instant, sleep_until},
};
use tracing::{debug, info, trace, warn};

use self::{
    attempt::{AttemptFuture, Connection, Dialer, bounded, is_not_serving_error},
    erased::{Check, Hook, Maker, Signal},
    inbox::Inbox,
    report::Reporter,
    retry::{GaveUp, Retry},
};
use crate::{
    BoxError,
    close::CloseReason,
    command::Command,
    discovery::GetAddress,
    error::ConnectError,
    event::Event,
    panic,
    retry::Backoff,
    shared::{Shared, Word},
    state::State,
    stats::Ending,
    sync::Arc,
};

impl<A, S> Driver<A, S>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    S: Clone + Send + 'static,
{
    /// The loop. Each cycle reports `AttemptingToConnect`, attempts until one succeeds (arm
    /// the retry timer, discover, connect, check health, within the connect timeout), serves
    /// the connection until it ends (a periodic check that says "not serving" only withdraws
    /// it; a maximum age replaces it make-before-break), reports `Disconnected`, and starts the
    /// next cycle at once after a goodbye, else when the timer armed before the successful
    /// attempt expires. Only a stop (close, the policy giving up, every clone gone) ends it.
    async fn run_cycles(&mut self) -> Result<Infallible, Stop> {
        self.report.tell_state(State::Connecting);
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
                        self.report.event(Event::ObtainedAddress(address));
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
            self.choose_delay()?;
            if at_once {
                self.check_open()?;
                self.report.enter(State::Connecting);
                tokio::task::yield_now().await;
            } else {
                self.wait_until(retry_at).await?;
            }
        }
    }
}

/// What a driver is told by the layer, besides its maker and hooks.
pub(crate) struct Settings {
    /// Bounds discovery plus connect plus the first health check of one attempt.
    pub(crate) connect_timeout: Duration,
    /// A connection that lived at least this long resets the retry policy's failure count,
    /// and its goodbye is not a failure even if it served nothing.
    pub(crate) flap_guard: Duration,
    /// How often to check a live connection's health, if at all.
    pub(crate) health_check_interval: Option<Duration>,
    /// Replace a connection make-before-break once it is this old (jittered), if set.
    pub(crate) max_connection_age: Option<Duration>,
}

/// The user's code the driver calls, besides the maker: the event hook, the close signal,
/// the health check.
pub(crate) struct Hooks<A, S> {
    pub(crate) on_event: Hook<A, S>,
    pub(crate) close_signal: Signal<S>,
    pub(crate) health_check: Check<S>,
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
pub(crate) struct Driver<A, S> {
    shared: Arc<Shared<S>>,
    inbox: Inbox,
    /// The maker; `None` while a rotation's attempt owns it (see `in_flight`).
    maker: Option<Maker<A, S>>,
    get_address: GetAddress<A>,
    settings: Settings,
    retry: Retry,
    report: Reporter<A, S>,
    close_signal: Signal<S>,
    health_check: Check<S>,
    close_after_current: bool,
    /// A rotation's attempt that was still running when the connection it was to replace
    /// ended: the next cycle's first attempt.
    in_flight: Option<AttemptFuture<A, S>>,
    /// Declared last so it runs after everything else the driver owns has been dropped.
    _end: EndGuard<S>,
}

impl From<GaveUp> for Stop {
    fn from(_: GaveUp) -> Self {
        Self::GaveUp
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
enum Served<A, S> {
    /// The connection ended; `at_once` says whether the next cycle starts at once.
    Ended { at_once: bool },
    /// It reached its maximum age and was replaced by `connection` (already withdrawn and
    /// reported `Disconnected`; the new one is not published yet).
    Rotated {
        address: A,
        connection: Connection<S>,
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

// === impl Driver ===

impl<A, S> Driver<A, S>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    S: Clone + Send + 'static,
{
    /// A driver for `maker`, reporting to `shared` and taking commands from `commands`.
    pub(crate) fn new(
        shared: Arc<Shared<S>>,
        commands: UnboundedReceiver<Command>,
        maker: Maker<A, S>,
        get_address: GetAddress<A>,
        backoff: Backoff,
        settings: Settings,
        Hooks {
            on_event,
            close_signal,
            health_check,
        }: Hooks<A, S>,
    ) -> Self {
        Self {
            report: Reporter::new(shared.clone(), on_event),
            _end: EndGuard(shared.clone()),
            shared,
            inbox: Inbox::new(commands),
            maker: Some(maker),
            get_address,
            settings,
            retry: Retry::new(backoff),
            close_signal,
            health_check,
            close_after_current: false,
            in_flight: None,
        }
    }

    /// Runs cycles until the driver stops.
    pub(crate) async fn run(mut self) {
        let Err(stop) = self.run_cycles().await;
        // Closed before the hook hears it, so the state it is told matches the handle's.
        drop(self.shared.close().1);
        self.report.enter(State::Closed);
        if let Stop::GaveUp = stop {
            warn!(
                persistent_connection_to = %self.shared.server_name,
                consecutive_failures = self.retry.failures(),
                last_error = ?self.retry.last_error(),
                "the retry policy gave up; closing",
            );
        }
        debug!(
            persistent_connection_to = %self.shared.server_name,
            reason = ?stop,
            "driver stopped",
        );
    }

    /// Starts a cycle: forgets what the last one reported (so its first address and error are
    /// reported again) and reports `AttemptingToConnect`.
    fn start_cycle(&mut self) -> Result<(), Stop> {
        self.check_open()?;
        self.report.new_cycle();
        self.report.enter(State::Connecting);
        self.report.event(Event::AttemptingToConnect);
        Ok(())
    }

    /// Tells the retry streak how the connection ended after `lived`; returns whether the
    /// next cycle starts at once.
    fn connection_ended(&mut self, disconnect: &Disconnect, lived: Duration) -> bool {
        let goodbye = self.is_goodbye(disconnect, lived);
        self.retry
            .connection_ended(lived, goodbye, self.settings.flap_guard, disconnect);
        goodbye
    }

    /// Whether a connection that ended so after `lived` said goodbye (replaced at once, no
    /// failure): a graceful close after serving, or one before serving from a connection older
    /// than the flap guard (an idle close of an unused connection). A goodbye before serving
    /// from a younger one (accept-then-close, `GOAWAY` before any response) is a failure.
    fn is_goodbye(&self, disconnect: &Disconnect, lived: Duration) -> bool {
        match disconnect {
            Disconnect::Signal(reason) if reason.replaces_at_once() => true,
            Disconnect::Signal(reason) if reason.is_graceful() => lived >= self.settings.flap_guard,
            _ => false,
        }
    }

    /// Attempts until one succeeds; returns the connection with its close signal, and the
    /// time its retry timer expires.
    async fn connect_until_successful(&mut self) -> Result<(Connection<S>, Instant), Stop> {
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
                self.retry.reset();
            }
            let delay = match self.retry.arm(&self.shared.server_name) {
                Ok(delay) => delay,
                Err(gave_up) => return Err(self.give_up(gave_up)),
            };
            let retry_at = Instant::now() + delay;
            self.report.enter(State::Connecting);
            let outcome = match self.in_flight.take() {
                // A rotation's attempt outlived the connection it was to replace: its
                // outcome is this cycle's first (it was counted when it started).
                Some(attempt) => {
                    let (maker, outcome) = self.inbox.race(attempt).await?;
                    self.maker = Some(maker);
                    outcome.map(|(address, connection)| {
                        self.report.event(Event::ObtainedAddress(address));
                        connection
                    })
                }
                None => {
                    self.shared.start_attempt(delay, self.retry.failures());
                    self.attempt().await?
                }
            };
            match outcome {
                Ok(connection) => return Ok((connection, retry_at)),
                Err(error) => {
                    self.retry.failed(error.clone());
                    self.shared
                        .finish_attempt(Some(error.clone()), self.retry.failures());
                    self.report.event(Event::FailedToConnect(error));
                    // Ask the policy now, so that giving up happens at the failure, not a
                    // delay later; the answer is armed before the next attempt.
                    self.choose_delay()?;
                    // ## Waiting => Connecting
                    self.wait_until(retry_at).await?;
                }
            }
        }
    }

    /// Asks the retry policy for the delay before the next attempt now; if it gives up,
    /// stops the driver.
    fn choose_delay(&mut self) -> Result<Duration, Stop> {
        match self.retry.choose(&self.shared.server_name) {
            Ok(delay) => Ok(delay),
            Err(gave_up) => Err(self.give_up(gave_up)),
        }
    }

    /// ## (Connecting | Disconnected) => Closed (the policy gave up): records the error to
    /// close with.
    fn give_up(&self, _: GaveUp) -> Stop {
        let error = self.retry.last_error().cloned();
        self.shared
            .give_up(error.unwrap_or_else(ConnectError::closed));
        Stop::GaveUp
    }

    /// One attempt of a cycle: discover the address (reported as soon as it is known), then
    /// connect, each step cancelled at once by `close()`.
    async fn attempt(&mut self) -> Result<Result<Connection<S>, ConnectError>, Stop> {
        let deadline = after(self.settings.connect_timeout);
        let address = match self.inbox.race(self.discover(deadline)).await? {
            Ok(address) => address,
            Err(error) => return Ok(Err(error)),
        };
        self.report.event(Event::ObtainedAddress(address.clone()));
        let connect = self.connect(address, deadline);
        let (maker, outcome) = self.inbox.race(connect).await?;
        self.maker = Some(maker);
        Ok(outcome)
    }

    /// An attempt as one future that owns what it needs (a rotation's, run while the old
    /// connection serves): the driver stays free to serve meanwhile.
    fn whole_attempt(&mut self) -> AttemptFuture<A, S> {
        let deadline = after(self.settings.connect_timeout);
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
    ) -> impl Future<Output = Result<A, ConnectError>> + Send + 'static + use<A, S> {
        let get_address = self.get_address.clone();
        let timeout = self.settings.connect_timeout;
        async move {
            let step = "in address discovery";
            bounded(
                deadline,
                timeout,
                step,
                || get_address(),
                ConnectError::discovery,
            )
            .await
        }
    }

    /// Connecting to `address`, bounded by `deadline`, with the maker moved into the future
    /// and handed back with the outcome.
    fn connect(
        &mut self,
        address: A,
        deadline: Instant,
    ) -> impl Future<Output = (Maker<A, S>, Result<Connection<S>, ConnectError>)>
    + Send
    + 'static
    + use<A, S> {
        let maker = self.take_maker();
        self.dialer().connect(maker, address, deadline)
    }

    fn take_maker(&mut self) -> Maker<A, S> {
        self.maker
            .take()
            .expect("the maker is handed back before the next attempt starts")
    }

    fn dialer(&self) -> Dialer<S> {
        Dialer {
            health_check: self.health_check.clone(),
            close_signal: self.close_signal.clone(),
            recheck: self.settings.health_check_interval,
            timeout: self.settings.connect_timeout,
        }
    }

    /// Publishes `connection` and serves until it ends or is rotated.
    async fn serve_until_disconnected(
        &mut self,
        connection: Connection<S>,
    ) -> Result<Served<A, S>, Stop> {
        let Connection {
            service: connection,
            closed,
        } = connection;
        self.report.enter(State::Connected);
        self.shared.finish_attempt(None, self.retry.failures());
        let mut word = Some(
            self.shared
                .publish(connection.clone())
                .ok_or(Stop::Closed)?,
        );
        self.inbox.reconnect_now = false;
        self.inbox.reset_policy = false;
        // With periodic health checks the driver keeps one copy, to check it and to publish
        // it again after "not serving"; else none: the service clones keep their own.
        let service = self
            .settings
            .health_check_interval
            .map(|_| connection.clone());
        let connected_at = Instant::now();
        self.report.event(Event::Connected(connection));

        let mut health = Box::pin(self.next_health_check(service.as_ref()));
        let mut rotate_at = self
            .settings
            .max_connection_age
            .map(|age| after(self.retry.jittered(age)));
        let mut rotation: Option<AttemptFuture<A, S>> = None;

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
                            self.report.enter(State::NotServing);
                            info!(
                                persistent_connection_to = %self.shared.server_name,
                                "the server is not serving; requests wait on this connection's health",
                            );
                        },
                        // ## NotServing => Connected
                        Health::Serving => if let (None, Some(service)) = (word, &service) {
                            word = Some(self.shared.publish(service.clone()).ok_or(Stop::Closed)?);
                            self.report.enter(State::Connected);
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
                    self.shared.start_attempt(Duration::ZERO, self.retry.failures());
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
                            self.shared.finish_attempt(Some(error.clone()), self.retry.failures());
                            let delay = self
                                .retry
                                .after_failed_rotation(&self.shared.server_name, &error)
                                .unwrap_or(self.settings.connect_timeout);
                            warn!(
                                persistent_connection_to = %self.shared.server_name,
                                %error,
                                retry_in = ?delay,
                                "the replacement of an aged connection failed; the old one keeps serving",
                            );
                            rotate_at = Some(after(delay));
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
        service: Option<S>,
    ) {
        if let Some(word) = word {
            drop(self.shared.withdraw(word));
        }
        drop(service);
        self.shared
            .disconnected(self.retry.failures(), ending.unwrap_or(Ending::Failure));
        info!(
            persistent_connection_to = %self.shared.server_name,
            %reason,
            connected_for = ?lived,
            "disconnected",
        );
        self.report.event(Event::Disconnected);
    }

    /// A future that waits for the health check interval, then checks `connection` once.
    /// Without an interval: a future that never resolves.
    fn next_health_check(
        &self,
        connection: Option<&S>,
    ) -> impl Future<Output = Health> + Send + use<A, S> {
        let checked =
            self.settings
                .health_check_interval
                .zip(connection)
                .map(|(interval, connection)| {
                    (interval, self.health_check.clone(), connection.clone())
                });
        let limit = self.settings.connect_timeout;
        async move {
            let Some((interval, health_check, connection)) = checked else {
                return std::future::pending().await;
            };
            tokio::time::sleep(interval).await;
            let deadline = after(limit);
            let checked = bounded(
                deadline,
                limit,
                "in the health check",
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
        self.report.enter(if at > Instant::now() {
            State::Waiting { next_attempt: at }
        } else {
            State::Connecting
        });
        tokio::task::yield_now().await;
        self.check_open()?;
        self.inbox.sleep_until(at).await
    }
}

/// The instant `duration` from now; for a duration too large to add to the clock (a setting
/// such as `connect_timeout(Duration::MAX)`), an instant about 30 years ahead, which never
/// comes in practice: a huge setting means "never", not a panic of the driver.
pub(super) fn after(duration: Duration) -> Instant {
    /// Far enough to never come, near enough to add to any clock (tokio's own "far future").
    const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + FAR_FUTURE)
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
