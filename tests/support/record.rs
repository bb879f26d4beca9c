//! The event recorder: an `on_event` hook feeding one shared log of events with the time each
//! was reported. Paused-time tests read the log back whole (as texts, with times); real-time
//! tests wait, bounded, for the next event of a kind.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use persistent_connection::{ConnectErrorKind, Event};
use tokio::{sync::watch, time::Instant};

use super::{Addr, Conn};

/// The events of a connection to address `a`, its end, and the next connection to `a`: what
/// a test of one reconnection expects.
pub const RECONNECTED_ONCE: [&str; 7] = [
    "Attempting",
    "Address(a)",
    "Connected(0)",
    "Disconnected",
    "Attempting",
    "Address(a)",
    "Connected(1)",
];

/// An event, reduced to what the tests compare.
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    Attempting,
    /// The address, as `Display` writes it.
    Address(String),
    /// The error's text and kind.
    Failed(String, ConnectErrorKind),
    /// The connection's id (for connections without one: how many connected before it).
    Connected(usize),
    Disconnected,
    /// Any other event, by name.
    Other(&'static str),
}

/// The texts the paused-time tests compare: `"Attempting"`, `"Address(a)"`, `"Failed(text)"`,
/// `"Connected(id)"`, `"Disconnected"`, or the event's name.
impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Attempting => write!(f, "Attempting"),
            Self::Address(address) => write!(f, "Address({address})"),
            Self::Failed(text, _) => write!(f, "Failed({text})"),
            Self::Connected(id) => write!(f, "Connected({id})"),
            Self::Disconnected => write!(f, "Disconnected"),
            Self::Other(name) => write!(f, "{name}"),
        }
    }
}

pub fn connected(event: &Ev) -> bool {
    matches!(event, Ev::Connected(_))
}

pub fn disconnected(event: &Ev) -> bool {
    *event == Ev::Disconnected
}

pub fn failed(event: &Ev) -> bool {
    matches!(event, Ev::Failed(..))
}

/// Records the events of one layer with their times. Clones share the log; each clone reads
/// on with [`Events::wait_for`] from where it stopped.
#[derive(Clone)]
pub struct Events {
    log: Arc<Mutex<Vec<(Instant, Ev)>>>,
    /// The number of events logged, to wake waiters.
    logged: Arc<watch::Sender<usize>>,
    start: Instant,
    /// How many events `wait_for` has read.
    read: usize,
}

impl Events {
    pub fn new() -> Self {
        Self {
            log: Arc::default(),
            logged: Arc::new(watch::Sender::new(0)),
            start: Instant::now(),
            read: 0,
        }
    }

    /// The hook to pass to `on_event` for the scripted connections.
    pub fn hook(&self) -> impl Fn(&Event<Addr, Conn>) + Send + Sync + 'static + use<> {
        self.hook_with(Conn::id)
    }

    /// The hook for any connection type: `id` reads a connection's id.
    pub fn hook_with<S: 'static>(
        &self,
        id: fn(&S) -> usize,
    ) -> impl Fn(&Event<Addr, S>) + Send + Sync + 'static + use<S> {
        let this = self.clone();
        move |event: &Event<Addr, S>| this.record(event, id)
    }

    /// The hook for any address and connection type; a connection's id is how many connected
    /// before it.
    pub fn hook_for<A: fmt::Display + 'static, S: 'static>(
        &self,
    ) -> impl Fn(&Event<A, S>) + Send + Sync + 'static + use<A, S> {
        let this = self.clone();
        move |event: &Event<A, S>| this.record(event, |_| this.count(connected))
    }

    fn record<A: fmt::Display, S>(&self, event: &Event<A, S>, id: impl FnOnce(&S) -> usize) {
        let event = match event {
            Event::AttemptingToConnect => Ev::Attempting,
            Event::ObtainedAddress(address) => Ev::Address(address.to_string()),
            Event::FailedToConnect(error) => Ev::Failed(error.to_string(), error.kind()),
            Event::Connected(connection) => Ev::Connected(id(connection)),
            Event::Disconnected => Ev::Disconnected,
            other => Ev::Other(other.name()),
        };
        let mut log = self.log.lock().unwrap();
        log.push((Instant::now(), event));
        self.logged.send_replace(log.len());
    }

    /// Waits (at most `bound`, else panics) for the next event after the last one this copy
    /// waited for that matches `wanted`; returns the time it was reported. The timer is
    /// polled first, and an event reported after `bound` fails the test.
    pub async fn wait_for(&mut self, wanted: impl Fn(&Ev) -> bool, bound: Duration) -> Instant {
        let deadline = Instant::now() + bound;
        let mut logged = self.logged.subscribe();
        loop {
            if let Some(at) = self.read_on(&wanted) {
                assert!(
                    at <= deadline,
                    "the expected event came {:?} after the {bound:?} bound; events: {:?}",
                    at - deadline,
                    self.seen()
                );
                return at;
            }
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => break,
                _ = logged.changed() => {}
            }
        }
        match self.read_on(&wanted) {
            Some(at) if at <= deadline => at,
            _ => panic!(
                "not the expected event within {bound:?}; events so far: {:?}",
                self.seen()
            ),
        }
    }

    /// Reads on to the next event matching `wanted`; returns its time.
    fn read_on(&mut self, wanted: impl Fn(&Ev) -> bool) -> Option<Instant> {
        let log = self.log.lock().unwrap();
        while let Some((at, event)) = log.get(self.read) {
            self.read += 1;
            if wanted(event) {
                return Some(*at);
            }
        }
        None
    }

    /// Every event so far.
    pub fn seen(&self) -> Vec<Ev> {
        let log = self.log.lock().unwrap();
        log.iter().map(|(_, event)| event.clone()).collect()
    }

    /// How many of the events so far match `which`.
    pub fn count(&self, which: impl Fn(&Ev) -> bool) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|(_, event)| which(event)).count()
    }

    /// The event texts so far.
    pub fn names(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().map(|(_, event)| event.to_string()).collect()
    }

    /// Whether the latest event's text is `name`.
    pub fn last_is(&self, name: &str) -> bool {
        let log = self.log.lock().unwrap();
        log.last()
            .is_some_and(|(_, event)| event.to_string() == name)
    }

    /// The events so far as texts with their times since the recorder was made.
    pub fn timed(&self) -> Vec<(Duration, String)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .map(|(at, event)| (*at - self.start, event.to_string()))
            .collect()
    }

    /// The events so far as texts with their times in whole seconds.
    pub fn timed_secs(&self) -> Vec<(u64, String)> {
        let timed = self.timed().into_iter();
        timed.map(|(at, event)| (at.as_secs(), event)).collect()
    }

    /// The time and kind of every `FailedToConnect` so far.
    pub fn kinds(&self) -> Vec<(Duration, ConnectErrorKind)> {
        let log = self.log.lock().unwrap();
        let failures = log.iter().filter_map(|(at, event)| match event {
            Ev::Failed(_, kind) => Some((*at - self.start, *kind)),
            _ => None,
        });
        failures.collect()
    }

    /// Forgets the events so far (only for tests that do not `wait_for`).
    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

/// An `on_event` hook for any address and connection type, and the recorder it feeds.
pub fn recorder<A: fmt::Display + 'static, S: 'static>()
-> (impl Fn(&Event<A, S>) + Send + Sync + 'static, Events) {
    let events = Events::new();
    (events.hook_for(), events)
}
