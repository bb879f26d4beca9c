//! A model-based property test: random sequences of maker outcomes, connection deaths,
//! `reconnect_now` calls, closes and clock advances are run against the real layer under
//! paused time, and checked against a small reference model of the seed semantics
//! (DESIGN.md section 1): the events and their times, the attempt times, and the readiness
//! and state of the service after every step.
//!
//! The property runs 128 cases by default (a second or so). Proptest reads its environment:
//! `PROPTEST_CASES=5000 cargo test --test model` runs more, `PROPTEST_RNG_SEED=<n>` repeats a
//! run. Failing cases are shrunk and printed, not saved: turn a minimal one into a named test
//! below with [`check`].

mod support;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, Once, atomic::Ordering},
    task::{Context, Poll, Waker},
};

use persistent_connection::{
    Closed, Event, PersistentConnection, PersistentConnectionLayer, State,
};
use proptest::{prelude::*, test_runner::TestCaseError};
use support::{Addr, Conn, Events, Maker, Plan, let_tasks_run, ms};
use tokio::time::Instant;
use tower::{Layer, Service};

/// The retry delay, in milliseconds (jitter is off).
const DELAY: u64 = 10_000;
/// The connect timeout, in milliseconds.
const TIMEOUT: u64 = 20_000;

// === Operations ===

/// The text a failing attempt fails with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Text {
    Refused,
    Reset,
}

impl Text {
    fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
        }
    }
}

/// What the maker does for one attempt (times in milliseconds).
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Fail(Text),
    FailAfter(u64, Text),
    Connect,
    ConnectAfter(u64),
    Hang,
    Panic,
}

impl Outcome {
    fn plan(self) -> Plan {
        match self {
            Self::Fail(text) => Plan::Fail(text.as_str()),
            Self::FailAfter(after, text) => Plan::FailAfter(ms(after), text.as_str()),
            Self::Connect => Plan::Connect,
            Self::ConnectAfter(after) => Plan::ConnectAfter(ms(after)),
            Self::Hang => Plan::Hang,
            Self::Panic => Plan::Panic,
        }
    }
}

/// What `get_address` does.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// Returns this address at once.
    Address(Addr),
    /// Fails at once.
    Fails,
    /// Never finishes.
    Hangs,
}

/// One step of a scenario.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// Let this many milliseconds pass (every timer fires at its own instant), then let the
    /// driver run.
    Advance(u64),
    /// Queue the outcome of the maker's next unplanned attempt.
    NextOutcome(Outcome),
    /// What `get_address` does from now on.
    SetSource(Source),
    /// The latest connection dies: its `poll_ready` fails and its close signal fires.
    Kill,
    /// The latest connection's `poll_ready` fails (no close signal), and a fresh service
    /// clone polls it.
    Fail,
    ReconnectNow,
    /// The service polls for readiness.
    PollReady,
    CloseAfterCurrent,
    Close,
}

/// A scenario: the maker's outcome once its queued plans run out, and the steps.
#[derive(Clone, Debug)]
struct Case {
    fallback: Outcome,
    ops: Vec<Op>,
}

/// What `poll_ready` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    Pending,
    Closed,
}

/// `Handle::state()`, with the time of the next attempt in milliseconds since the start.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Waiting(u64),
    Connected,
    Closed,
    Other(String),
}

/// Everything observed in one run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Trace {
    /// Every event: time in milliseconds since the start, and the `Events` text.
    events: Vec<(u64, String)>,
    /// The time of every attempt the maker saw.
    attempts: Vec<u64>,
    /// The answer of every poll: the index of its step, and the readiness.
    polls: Vec<(usize, Readiness)>,
    /// After every step (and once before the first): the state, and how many attempts are
    /// in flight.
    steps: Vec<(Phase, usize)>,
}

// === The reference model ===

/// What the driver is doing, in the model.
#[derive(Clone, Debug)]
enum Doing {
    /// An attempt started; it ends at `ends_at` with `result`. Its retry timer expires at
    /// `retry_at`.
    Attempting {
        retry_at: u64,
        ends_at: u64,
        result: Result<(), String>,
        /// Whether the maker was called (discovery succeeded).
        in_maker: bool,
    },
    /// Waiting until `until`; then the next attempt starts, in a new cycle if `new_cycle`.
    Waiting {
        until: u64,
        new_cycle: bool,
    },
    /// A connection is up; the timer armed before its attempt expires at `retry_at`.
    Connected {
        retry_at: u64,
    },
    Closed,
}

/// The seed's semantics, with a constant retry delay, no jitter and immediate discovery,
/// written as plainly as possible.
struct Model {
    now: u64,
    doing: Doing,
    plans: VecDeque<Outcome>,
    fallback: Outcome,
    source: Source,
    /// `reconnect_now` arrived during an attempt: skip the wait after it.
    reconnect_now: bool,
    close_after_current: bool,
    /// The last address and error reported in this cycle (S5).
    cycle_address: Option<Addr>,
    cycle_error: Option<String>,
    connections: usize,
    trace: Trace,
}

impl Model {
    /// The trace the seed semantics give for `case`.
    fn run(case: &Case) -> Trace {
        let mut model = Self {
            now: 0,
            doing: Doing::Closed,
            plans: VecDeque::new(),
            fallback: case.fallback,
            source: Source::Address("a"),
            reconnect_now: false,
            close_after_current: false,
            cycle_address: None,
            cycle_error: None,
            connections: 0,
            trace: Trace::default(),
        };
        // The first cycle starts at once (S7: the first attempt is immediate).
        model.start_cycle();
        model.record_step();
        for (index, op) in case.ops.iter().enumerate() {
            model.apply(index, *op);
            model.record_step();
        }
        model.trace
    }

    fn emit(&mut self, event: String) {
        self.trace.events.push((self.now, event));
    }

    /// S4: `AttemptingToConnect` once per cycle; the de-duplication state starts afresh.
    fn start_cycle(&mut self) {
        self.cycle_address = None;
        self.cycle_error = None;
        self.emit("Attempting".into());
        self.attempt();
    }

    /// One attempt: arm the retry timer, obtain the address, call the maker, within the
    /// connect timeout (S1, S5, S6, S7).
    fn attempt(&mut self) {
        let retry_at = self.now + DELAY;
        let address = match self.source {
            Source::Address(address) => address,
            Source::Fails => {
                let error = "address discovery failed: no replica".into();
                return self.start_attempt(retry_at, 0, Err(error), false);
            }
            Source::Hangs => return self.start_attempt(retry_at, u64::MAX, Ok(()), false),
        };
        if self.cycle_address != Some(address) {
            self.cycle_address = Some(address);
            self.emit(format!("Address({address})"));
        }
        self.trace.attempts.push(self.now);
        let outcome = self.plans.pop_front().unwrap_or(self.fallback);
        let failed = |text: Text| Err(format!("connect failed: {}", text.as_str()));
        let (takes, result) = match outcome {
            Outcome::Fail(text) => (0, failed(text)),
            Outcome::FailAfter(after, text) => (after, failed(text)),
            Outcome::Connect => (0, Ok(())),
            Outcome::ConnectAfter(after) => (after, Ok(())),
            Outcome::Hang => (u64::MAX, Ok(())),
            Outcome::Panic => (0, Err("connect attempt panicked: maker exploded".into())),
        };
        self.start_attempt(retry_at, takes, result, true);
    }

    /// The attempt will end after `takes` with `result`, or time out.
    fn start_attempt(
        &mut self,
        retry_at: u64,
        takes: u64,
        result: Result<(), String>,
        in_maker: bool,
    ) {
        // An outcome due exactly at the deadline still counts; a later one is a timeout.
        let (takes, result) = if takes > TIMEOUT {
            (
                TIMEOUT,
                Err(format!(
                    "connect attempt timed out after {}s {}",
                    TIMEOUT / 1000,
                    if in_maker {
                        "while connecting"
                    } else {
                        "in address discovery"
                    }
                )),
            )
        } else {
            (takes, result)
        };
        self.doing = Doing::Attempting {
            retry_at,
            ends_at: self.now + takes,
            result,
            in_maker,
        };
        if takes == 0 {
            self.end_attempt();
        }
    }

    /// The running attempt ends now.
    fn end_attempt(&mut self) {
        let Doing::Attempting {
            retry_at, result, ..
        } = std::mem::replace(&mut self.doing, Doing::Closed)
        else {
            unreachable!("no attempt is running");
        };
        match result {
            Ok(()) => {
                let id = self.connections;
                self.connections += 1;
                self.reconnect_now = false;
                self.doing = Doing::Connected { retry_at };
                self.emit(format!("Connected({id})"));
            }
            Err(error) => {
                if self.cycle_error.as_ref() != Some(&error) {
                    self.cycle_error = Some(error.clone());
                    self.emit(format!("Failed({error})"));
                }
                self.wait(retry_at, false);
            }
        }
    }

    /// Waits for the retry timer, unless it has expired or `reconnect_now` came during the
    /// attempt.
    fn wait(&mut self, until: u64, new_cycle: bool) {
        if std::mem::take(&mut self.reconnect_now) || until <= self.now {
            self.next_attempt(new_cycle);
        } else {
            self.doing = Doing::Waiting { until, new_cycle };
        }
    }

    fn next_attempt(&mut self, new_cycle: bool) {
        if new_cycle {
            self.start_cycle();
        } else {
            self.attempt();
        }
    }

    /// The connection ended (S4, S7, S12, S13).
    fn disconnect(&mut self) {
        let Doing::Connected { retry_at } = self.doing else {
            unreachable!("not connected");
        };
        self.emit("Disconnected".into());
        if self.close_after_current {
            self.doing = Doing::Closed;
        } else {
            self.wait(retry_at, true);
        }
    }

    /// Lets every timer up to `to` fire, each at its own instant.
    fn advance_to(&mut self, to: u64) {
        loop {
            match self.doing {
                Doing::Attempting { ends_at, .. } if ends_at <= to => {
                    self.now = ends_at;
                    self.end_attempt();
                }
                Doing::Waiting { until, new_cycle } if until <= to => {
                    self.now = until;
                    self.next_attempt(new_cycle);
                }
                _ => break,
            }
        }
        self.now = to;
    }

    fn readiness(&self) -> Readiness {
        match self.doing {
            Doing::Connected { .. } => Readiness::Ready,
            Doing::Closed => Readiness::Closed,
            Doing::Attempting { .. } | Doing::Waiting { .. } => Readiness::Pending,
        }
    }

    fn record_step(&mut self) {
        let step = match self.doing {
            Doing::Attempting { in_maker, .. } => (Phase::Connecting, usize::from(in_maker)),
            Doing::Waiting { until, .. } => (Phase::Waiting(until), 0),
            Doing::Connected { .. } => (Phase::Connected, 0),
            Doing::Closed => (Phase::Closed, 0),
        };
        self.trace.steps.push(step);
    }

    fn apply(&mut self, index: usize, op: Op) {
        let connected = matches!(self.doing, Doing::Connected { .. });
        match op {
            Op::Advance(by) => self.advance_to(self.now + by),
            Op::NextOutcome(outcome) => self.plans.push_back(outcome),
            Op::SetSource(source) => self.source = source,
            // The latest connection is the current one, if any is up.
            Op::Kill => {
                if connected {
                    self.disconnect();
                }
            }
            Op::Fail => {
                // The clone sees its connection fail: `Pending`, never the error (S9, API).
                let polled = match self.doing {
                    Doing::Closed => Readiness::Closed,
                    _ => Readiness::Pending,
                };
                self.trace.polls.push((index, polled));
                if connected {
                    self.disconnect();
                }
            }
            Op::ReconnectNow => match self.doing {
                Doing::Attempting { .. } => self.reconnect_now = true,
                Doing::Waiting { new_cycle, .. } => self.next_attempt(new_cycle),
                Doing::Connected { .. } | Doing::Closed => {}
            },
            Op::PollReady => {
                let readiness = self.readiness();
                self.trace.polls.push((index, readiness));
            }
            Op::CloseAfterCurrent => match self.doing {
                Doing::Connected { .. } => self.close_after_current = true,
                _ => self.doing = Doing::Closed,
            },
            // S10: an attempt in flight is cancelled; a connection ends with `Disconnected`.
            Op::Close => {
                if connected {
                    self.emit("Disconnected".into());
                }
                self.doing = Doing::Closed;
            }
        }
    }
}

// === The real layer ===

/// Runs `case` against the real layer, on a fresh runtime with paused time.
fn run_real(case: &Case) -> Trace {
    quiet_maker_panics();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(run_real_async(case))
}

async fn run_real_async(case: &Case) -> Trace {
    let start = Instant::now();
    let maker = Maker::new([], case.fallback.plan());
    let events = Events::new();
    let conns = Arc::new(Mutex::new(Vec::<Conn>::new()));
    let source = Arc::new(Mutex::new(Source::Address("a")));
    let record = events.hook();
    let layer = PersistentConnectionLayer::new({
        let source = source.clone();
        move || {
            let source = *source.lock().unwrap();
            async move {
                match source {
                    Source::Address(address) => Ok(address),
                    Source::Fails => Err(std::io::Error::other("no replica")),
                    Source::Hangs => std::future::pending().await,
                }
            }
        }
    })
    .retry_delay(|| ms(DELAY))
    .jitter(0.0)
    .connect_timeout(ms(TIMEOUT))
    .close_signal(|c: &Conn| c.closed())
    .on_event({
        let conns = conns.clone();
        move |event: &Event<Addr, Conn>| {
            if let Event::Connected(conn) = event {
                conns.lock().unwrap().push(conn.clone());
            }
            record(event);
        }
    });
    let mut svc = layer.layer(maker.clone());
    let handle = svc.handle();
    let latest = || conns.lock().unwrap().last().cloned();

    let mut trace = Trace::default();
    let record_step = |trace: &mut Trace| {
        let phase = match handle.state() {
            State::Connecting => Phase::Connecting,
            State::Waiting { next_attempt, .. } => {
                Phase::Waiting(millis(next_attempt.duration_since(start)))
            }
            State::Connected => Phase::Connected,
            State::Closed => Phase::Closed,
            other => Phase::Other(format!("{other:?}")),
        };
        trace
            .steps
            .push((phase, maker.in_flight.load(Ordering::SeqCst)));
    };

    let_tasks_run().await;
    record_step(&mut trace);
    for (index, op) in case.ops.iter().enumerate() {
        match *op {
            Op::Advance(by) => tokio::time::sleep(ms(by)).await,
            Op::NextOutcome(outcome) => maker.push([outcome.plan()]),
            Op::SetSource(new) => *source.lock().unwrap() = new,
            Op::Kill => {
                if let Some(conn) = latest() {
                    conn.kill();
                }
            }
            Op::Fail => {
                if let Some(conn) = latest() {
                    conn.fail();
                }
                let polled = poll_ready(&mut svc.clone());
                trace.polls.push((index, polled));
            }
            Op::ReconnectNow => handle.reconnect_now(),
            Op::PollReady => trace.polls.push((index, poll_ready(&mut svc))),
            Op::CloseAfterCurrent => handle.close_after_current(),
            // Closing starts at the call; the future is not needed.
            Op::Close => drop(handle.close()),
        }
        let_tasks_run().await;
        record_step(&mut trace);
    }

    trace.events = events
        .timed()
        .into_iter()
        .map(|(at, text)| (millis(at), text))
        .collect();
    trace.attempts = maker.attempt_times().into_iter().map(millis).collect();
    trace
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).expect("a test runs for less than 584 million years")
}

/// One `poll_ready` of `svc`, with a waker that does nothing.
fn poll_ready(svc: &mut PersistentConnection<Conn>) -> Readiness {
    let mut cx = Context::from_waker(Waker::noop());
    match <PersistentConnection<Conn> as Service<String>>::poll_ready(svc, &mut cx) {
        Poll::Ready(Ok(())) => Readiness::Ready,
        Poll::Pending => Readiness::Pending,
        Poll::Ready(Err(error)) if error.is::<Closed>() => Readiness::Closed,
        Poll::Ready(Err(error)) => panic!("poll_ready failed with something else: {error}"),
    }
}

/// `Plan::Panic` is a caught panic; keep it out of the output of failing cases.
fn quiet_maker_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"maker exploded") {
                default(info);
            }
        }));
    });
}

/// Runs `case` on the real layer and on the model, and compares what they did.
fn check(case: &Case) -> Result<(), TestCaseError> {
    let real = run_real(case);
    let model = Model::run(case);
    prop_assert_eq!(&real.events, &model.events, "events (ms, text)");
    prop_assert_eq!(&real.attempts, &model.attempts, "attempt times (ms)");
    prop_assert_eq!(&real.polls, &model.polls, "readiness (step, answer)");
    prop_assert_eq!(
        &real.steps,
        &model.steps,
        "state and attempts in flight per step"
    );
    Ok(())
}

// === Strategies ===

/// A duration in milliseconds, on a 500 ms grid so that events often coincide with the
/// retry delay (10 s) and the connect timeout (20 s).
fn duration() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0..=4u64).prop_map(|k| k * 500),
        (0..=60u64).prop_map(|k| k * 500)
    ]
}

fn text() -> impl Strategy<Value = Text> {
    prop_oneof![Just(Text::Refused), Just(Text::Reset)]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => text().prop_map(Outcome::Fail),
        2 => (duration(), text()).prop_map(|(after, text)| Outcome::FailAfter(after, text)),
        3 => Just(Outcome::Connect),
        2 => duration().prop_map(Outcome::ConnectAfter),
        1 => Just(Outcome::Hang),
        1 => Just(Outcome::Panic),
    ]
}

/// Any step but closing.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => duration().prop_map(Op::Advance),
        4 => outcome().prop_map(Op::NextOutcome),
        2 => prop_oneof![
            3 => prop_oneof![Just("a"), Just("b")].prop_map(Source::Address),
            1 => Just(Source::Fails),
            1 => Just(Source::Hangs),
        ]
        .prop_map(Op::SetSource),
        2 => Just(Op::Kill),
        1 => Just(Op::Fail),
        2 => Just(Op::ReconnectNow),
        3 => Just(Op::PollReady),
    ]
}

/// Up to 40 steps, optionally followed by a close and a few more steps.
fn case() -> impl Strategy<Value = Case> {
    let close = prop::option::of(prop_oneof![Just(Op::Close), Just(Op::CloseAfterCurrent)]);
    (
        outcome(),
        prop::collection::vec(op(), 1..40),
        close,
        prop::collection::vec(op(), 0..6),
    )
        .prop_map(|(fallback, mut ops, close, after)| {
            if let Some(close) = close {
                ops.push(close);
                ops.extend(after);
            }
            Case { fallback, ops }
        })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        // Minimal failing cases become named tests here instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// For any sequence of maker outcomes, connection deaths, `reconnect_now` calls, closes
    /// and clock advances, the layer emits the events the seed semantics give, at the same
    /// times, attempts at the same times, and is ready exactly while connected.
    #[test]
    fn the_layer_follows_the_reference_model(case in case()) {
        check(&case)?;
    }
}

/// A fixed script that goes through every kind of step but `close_after_current` (attempts
/// that fail, time out, panic and connect; both kinds of connection death; `reconnect_now`
/// while waiting, during an attempt and while connected; discovery failing and hanging;
/// closing during a hung discovery) runs as the model says.
#[test]
fn a_script_using_every_operation_follows_the_reference_model() {
    use Op::*;
    let case = Case {
        fallback: Outcome::Fail(Text::Refused),
        ops: vec![
            PollReady,
            NextOutcome(Outcome::FailAfter(3000, Text::Reset)),
            NextOutcome(Outcome::Hang),
            NextOutcome(Outcome::ConnectAfter(500)),
            Advance(10_000),
            ReconnectNow,
            Advance(30_000),
            PollReady,
            Advance(15_000),
            Kill,
            PollReady,
            NextOutcome(Outcome::Connect),
            SetSource(Source::Address("b")),
            Advance(10_000),
            Fail,
            NextOutcome(Outcome::Panic),
            SetSource(Source::Fails),
            ReconnectNow,
            Advance(5000),
            SetSource(Source::Address("a")),
            ReconnectNow,
            NextOutcome(Outcome::ConnectAfter(2000)),
            Advance(1000),
            ReconnectNow,
            Advance(1000),
            ReconnectNow,
            Advance(1000),
            Kill,
            SetSource(Source::Hangs),
            Advance(10_000),
            PollReady,
            Close,
            Advance(30_000),
            PollReady,
        ],
    };
    // The script is meant to reach each of these; a change that skips one makes it vacuous.
    let expected = Model::run(&case);
    let texts: Vec<&str> = expected.events.iter().map(|e| e.1.as_str()).collect();
    for wanted in [
        "Connected(0)",
        "Connected(1)",
        "Connected(2)",
        "Address(b)",
        "Failed(connect failed: reset)",
        "Failed(connect attempt timed out after 20s while connecting)",
        "Failed(connect attempt panicked: maker exploded)",
        "Failed(address discovery failed: no replica)",
    ] {
        assert!(
            texts.contains(&wanted),
            "the script no longer reaches {wanted}: {texts:?}"
        );
    }
    check(&case).unwrap();
}
