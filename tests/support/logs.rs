//! A `tracing` recorder for tests of the crate's log lines: every event whose target is this
//! crate, with its level, message and fields as text.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, OnceLock},
};

use tracing::{
    Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{layer::Context, prelude::*};

/// One log event of the crate: its level, message and other fields (as text).
#[derive(Clone, Debug)]
pub struct Record {
    pub level: Level,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

impl Record {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// A `tracing` layer that records every event whose target is this crate.
#[derive(Clone, Default)]
pub struct LogRecorder {
    records: Arc<Mutex<Vec<Record>>>,
}

impl LogRecorder {
    /// Installs the recorder as this thread's subscriber until the guard is dropped. For tests
    /// on a current-thread runtime, where the driver task logs on the test's thread too.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    /// One recorder for a whole test binary, installed once as the global subscriber. (A
    /// per-test `set_default` subscriber can miss events when tests run in parallel: another
    /// thread may register a callsite with no subscriber interested.) Tests tell their records
    /// apart by server name, with [`find`](Self::find).
    pub fn global() -> &'static Self {
        static LOGS: OnceLock<LogRecorder> = OnceLock::new();
        LOGS.get_or_init(|| {
            let recorder = Self::default();
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(recorder.clone()),
            )
            .expect("no other global subscriber in this test binary");
            recorder
        })
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// `(level, message)` of every record whose message is one of `messages`, in order.
    pub fn only(&self, messages: &[&str]) -> Vec<(Level, String)> {
        self.records()
            .into_iter()
            .filter(|r| messages.contains(&r.message.as_str()))
            .map(|r| (r.level, r.message))
            .collect()
    }

    /// The records with message `message` from the server named `server_name`.
    pub fn find(&self, server_name: &str, message: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| {
                r.message == message && r.field("persistent_connection_to") == Some(server_name)
            })
            .collect()
    }
}

/// Collects an event's fields as text.
struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for LogRecorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        if !metadata.target().starts_with("persistent_connection") {
            return;
        }
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        self.records.lock().unwrap().push(Record {
            level: *metadata.level(),
            message,
            fields,
        });
    }
}
