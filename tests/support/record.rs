//! Event recorders.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use persistent_connection::Event;
use tokio::time::Instant;

use super::{Addr, Conn};

/// Records events as short strings with their time since the recorder was made:
/// `"Attempting"`, `"Address(a)"`, `"Failed(text)"`, `"Connected(id)"`, `"Disconnected"`.
#[derive(Clone)]
pub struct Events {
    log: Arc<Mutex<Vec<(Duration, String)>>>,
    start: Instant,
}

impl Events {
    pub fn new() -> Self {
        Self {
            log: Arc::new(Mutex::new(Vec::new())),
            start: Instant::now(),
        }
    }

    /// The hook to pass to `on_event`.
    pub fn hook(&self) -> impl Fn(&Event<Addr, Conn>) + Send + Sync + 'static {
        self.hook_with(Conn::id)
    }

    /// The hook for any connection type: `id` reads a connection's id.
    pub fn hook_with<S: 'static>(
        &self,
        id: fn(&S) -> usize,
    ) -> impl Fn(&Event<Addr, S>) + Send + Sync + 'static {
        let this = self.clone();
        move |event: &Event<Addr, S>| {
            let text = match event {
                Event::AttemptingToConnect => "Attempting".to_string(),
                Event::ObtainedAddress(a) => format!("Address({a})"),
                Event::FailedToConnect(e) => format!("Failed({e})"),
                Event::Connected(c) => format!("Connected({})", id(c)),
                Event::Disconnected => "Disconnected".to_string(),
                other => other.name().to_string(),
            };
            this.log.lock().unwrap().push((this.start.elapsed(), text));
        }
    }

    /// The event texts so far.
    pub fn names(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.1.clone())
            .collect()
    }

    /// The events so far with their times.
    pub fn timed(&self) -> Vec<(Duration, String)> {
        self.log.lock().unwrap().clone()
    }

    /// The events so far with their times in whole seconds.
    pub fn timed_secs(&self) -> Vec<(u64, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(t, e)| (t.as_secs(), e.clone()))
            .collect()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}
