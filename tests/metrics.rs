//! The `metrics` feature: the driver's counters reach the installed `metrics` recorder.
#![cfg(feature = "metrics")]

mod support;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use persistent_connection::PersistentConnectionLayer;
use support::{Conn, Maker, Plan, secs};
use tower::Layer;

/// A recorder that keeps every value where the test can read it (without resetting it).
#[derive(Clone)]
struct TestRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

impl TestRecorder {
    fn key(name: &str, labels: &[(&str, &str)]) -> Key {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(k.to_string(), v.to_string()))
            .collect();
        Key::from_parts(name.to_string(), labels)
    }

    /// The counter `name` with exactly `labels`; 0 if never recorded.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .get_counter_handles()
            .get(&Self::key(name, labels))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// The gauge `name` of server "billing"; `None` if never recorded.
    fn gauge(&self, name: &str) -> Option<f64> {
        self.0
            .get_gauge_handles()
            .get(&Self::key(name, &[("server", "billing")]))
            .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }
}

/// Two failures, a connection, a kill and a reconnect are counted under the server's name,
/// with the failure kind; the gauges follow the connection and the armed delay.
#[test]
fn the_counters_reach_the_metrics_recorder() {
    let recorder = TestRecorder(Arc::new(Registry::atomic()));
    let metrics = recorder.clone();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(async {
                let maker = Maker::new(
                    [Plan::Fail("refused"), Plan::Fail("refused"), Plan::Connect],
                    Plan::Connect,
                );
                let svc = PersistentConnectionLayer::fixed_address("a")
                    .server_name("billing")
                    .retry_delay(|| Duration::from_secs(10))
                    .jitter(0.0)
                    .close_signal(|c: &Conn| c.closed())
                    .layer(maker.clone());
                let handle = svc.handle();
                handle.connected().await.unwrap();

                let m = &metrics;
                let server = [("server", "billing")];
                assert_eq!(
                    m.counter("persistent_connection_attempts_total", &server),
                    3
                );
                assert_eq!(
                    m.counter(
                        "persistent_connection_failed_attempts_total",
                        &[("server", "billing"), ("kind", "connect")],
                    ),
                    2
                );
                assert_eq!(
                    m.counter("persistent_connection_connections_total", &server),
                    1
                );
                assert_eq!(m.gauge("persistent_connection_connected"), Some(1.0));
                assert_eq!(
                    m.gauge("persistent_connection_next_delay_seconds"),
                    Some(10.0)
                );

                // The connection lives 30 s, dies, and is replaced at once.
                tokio::time::sleep(secs(30)).await;
                maker.conn(0).kill();
                support::yield_until("the disconnection is counted", || {
                    m.counter("persistent_connection_disconnections_total", &server) == 1
                })
                .await;
                assert_eq!(
                    m.counter("persistent_connection_disconnections_total", &server),
                    1
                );
                handle.connected().await.unwrap();
                assert_eq!(
                    m.counter("persistent_connection_connections_total", &server),
                    2
                );
                assert_eq!(
                    m.counter("persistent_connection_attempts_total", &server),
                    4
                );
                assert_eq!(m.gauge("persistent_connection_connected"), Some(1.0));

                handle.close().await;
                assert_eq!(
                    m.counter("persistent_connection_disconnections_total", &server),
                    2
                );
                assert_eq!(m.gauge("persistent_connection_connected"), Some(0.0));
                // Stats and metrics tell the same story.
                let stats = handle.stats();
                assert_eq!((stats.attempts, stats.failed_attempts), (4, 2));
                assert_eq!((stats.connections, stats.disconnections), (2, 2));
            });
    });
}
