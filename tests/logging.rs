//! Logging: every reported event goes to `tracing` with the server's name, at its level.

#[path = "support/logs.rs"]
mod logs;
mod support;

use std::time::Duration;

use logs::{LogRecorder, Record};
use persistent_connection::{Event, PersistentConnectionLayer, retry::MAX_RETRY_DELAY};
use support::{Addr, Conn, Maker, Plan, secs};
use tower::{Layer, ServiceExt};
use tracing::Level;

/// Every reported event is logged once, at its level (`FailedToConnect` at WARN,
/// `AttemptingToConnect` and `ObtainedAddress` at DEBUG, `Connected` and `Disconnected` at
/// INFO), with `persistent_connection_to` set to the server name on every line; events
/// suppressed by de-duplication are not logged either.
#[tokio::test(start_paused = true)]
async fn every_event_is_logged_at_its_level_with_the_server_name() {
    let recorder = LogRecorder::default();
    let _guard = recorder.install();
    let maker = Maker::new(
        [Plan::Fail("refused"), Plan::Fail("refused")],
        Plan::Connect,
    );
    let svc = PersistentConnectionLayer::fixed_address("a")
        .server_name("billing")
        .jitter(0.0)
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    let handle = svc.handle();
    handle.connected().await.unwrap();
    maker.conn(0).kill();
    tokio::time::sleep(secs(20)).await;
    assert_eq!(maker.attempts(), 4);
    let logged = recorder.only(&[
        "attempting to connect",
        "obtained address",
        "failed to connect",
        "connected",
        "disconnected",
    ]);
    handle.close().await;

    let expected: Vec<(Level, String)> = [
        (Level::DEBUG, "attempting to connect"),
        (Level::DEBUG, "obtained address"),
        (Level::WARN, "failed to connect"),
        // The second, identical failure is neither reported nor logged.
        (Level::INFO, "connected"),
        (Level::INFO, "disconnected"),
        (Level::DEBUG, "attempting to connect"),
        (Level::DEBUG, "obtained address"),
        (Level::INFO, "connected"),
    ]
    .into_iter()
    .map(|(level, message)| (level, message.to_string()))
    .collect();
    assert_eq!(logged, expected);

    // Every line, including those of closing, names the server.
    let records = recorder.records();
    for record in &records {
        assert_eq!(
            record.field("persistent_connection_to"),
            Some("billing"),
            "{record:?}"
        );
    }
    let failed = records
        .iter()
        .find(|r| r.message == "failed to connect")
        .unwrap();
    assert_eq!(failed.field("error"), Some("connect failed: refused"));
    let address = records
        .iter()
        .find(|r| r.message == "obtained address")
        .unwrap();
    assert_eq!(address.field("address"), Some("\"a\""));
}

/// A `retry_delay` beyond `MAX_RETRY_DELAY` is warned about at WARN, with the server name,
/// once per driver however many attempts it delays.
#[tokio::test(start_paused = true)]
async fn the_clamp_warning_is_logged_once_per_driver() {
    let recorder = LogRecorder::default();
    let _guard = recorder.install();
    let layer = PersistentConnectionLayer::fixed_address("a")
        .server_name("billing")
        .retry_delay(|| Duration::MAX)
        .jitter(0.0);
    let clamp_warnings = || {
        recorder
            .records()
            .into_iter()
            .filter(|r| r.message.contains("clamping"))
            .collect::<Vec<_>>()
    };

    let first = Maker::new([], Plan::Fail("refused"));
    let _first = layer.layer(first.clone());
    tokio::time::sleep(MAX_RETRY_DELAY * 3 + secs(1)).await;
    assert_eq!(first.attempts(), 4);
    let warnings = clamp_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].level, Level::WARN);
    assert_eq!(
        warnings[0].field("persistent_connection_to"),
        Some("billing")
    );

    // Another driver warns for itself.
    let second = Maker::new([], Plan::Fail("refused"));
    let _second = layer.layer(second.clone());
    tokio::time::sleep(MAX_RETRY_DELAY * 2 + secs(1)).await;
    assert_eq!(second.attempts(), 3);
    assert_eq!(clamp_warnings().len(), 2);
}

/// A panic in `on_event` is logged at WARN with the server name and the event it was given.
#[tokio::test(start_paused = true)]
async fn a_panic_in_on_event_is_logged_at_warn_with_the_server_name() {
    let recorder = LogRecorder::default();
    let _guard = recorder.install();
    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("a")
        .server_name("billing")
        .jitter(0.0)
        .on_event(|event: &Event<Addr, Conn>| {
            if let Event::Connected(_) = event {
                panic!("hook exploded");
            }
        })
        .layer(maker.clone());
    svc.ready_oneshot().await.unwrap();
    let panics: Vec<Record> = recorder
        .records()
        .into_iter()
        .filter(|r| r.message.contains("on_event panicked"))
        .collect();
    assert_eq!(panics.len(), 1, "{panics:?}");
    assert_eq!(panics[0].level, Level::WARN);
    assert_eq!(panics[0].field("persistent_connection_to"), Some("billing"));
    assert_eq!(panics[0].field("event"), Some("Connected"));
    assert_eq!(panics[0].field("panic"), Some("hook exploded"));
}
