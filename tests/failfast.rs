//! `failfast::FailFastLayer`: requests wait while the service has been unready for less than
//! the set time, are answered at once with `Unavailable` (server name, last connect error)
//! after it, and go to the service again as soon as it is ready. Paused time, scripted maker.
mod support;

use std::time::Duration;

use persistent_connection::{
    BoxError, PersistentConnection, PersistentConnectionLayer,
    failfast::{FailFast, FailFastLayer, Unavailable},
};
use support::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, buffer::Buffer};

const MAX_UNREADY: Duration = Duration::from_secs(5);

/// A persistent connection named "billing" over `maker`, 10 s between attempts, no jitter,
/// under a fail-fast layer of [`MAX_UNREADY`].
fn service(maker: &Maker) -> FailFast<PersistentConnection<Conn>> {
    FailFastLayer::new(MAX_UNREADY).layer(
        PersistentConnectionLayer::fixed_address("a")
            .server_name("billing")
            .jitter(0.0)
            .retry_delay(|| secs(10))
            .close_signal(|c: &Conn| c.closed())
            .layer(maker.clone()),
    )
}

async fn send(
    svc: &mut FailFast<PersistentConnection<Conn>>,
    request: &str,
) -> Result<String, BoxError> {
    svc.ready().await?.call(request.to_owned()).await
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_until_the_service_has_been_unready_for_the_set_time_then_fails_fast() {
    let maker = Maker::new([], Plan::Fail("connection refused"));
    let mut svc = service(&maker);
    let start = Instant::now();

    let error = within_an_hour("the first request", send(&mut svc, "one"))
        .await
        .expect_err("no server: the request cannot succeed");
    // It waited exactly the set time (paused clock), not less and not until a connection.
    assert_eq!(start.elapsed(), MAX_UNREADY);
    let unavailable = Unavailable::find(&*error).expect("the error is `Unavailable`");
    assert_eq!(unavailable.server_name(), "billing");
    assert_eq!(unavailable.unready_for(), MAX_UNREADY);
    let last = unavailable
        .last_connect_error()
        .expect("the failed attempt is carried");
    assert!(last.to_string().contains("connection refused"), "{last}");
    let text = error.to_string();
    assert!(
        text.contains("billing") && text.contains("connection refused"),
        "the message names the server and the cause: {text}"
    );
    assert!(svc.is_failing_fast());
}

#[tokio::test(start_paused = true)]
async fn after_the_set_time_requests_are_answered_at_once_until_a_connection_is_back() {
    let maker = Maker::new([], Plan::Fail("connection refused"));
    let mut svc = service(&maker);
    within_an_hour("the first request", send(&mut svc, "one"))
        .await
        .expect_err("fails fast after 5 s");

    // Every request now fails at once: no time passes on the paused clock.
    for n in 0..10 {
        let before = Instant::now();
        let error = send(&mut svc, "again").await.expect_err("still down");
        assert_eq!(before.elapsed(), Duration::ZERO, "request {n} waited");
        assert!(Unavailable::find(&*error).is_some(), "{error}");
    }

    // The server comes back: the next attempt (10 s after the first) connects, and requests
    // go to the connection again.
    maker.set_fallback(Plan::Connect);
    tokio::time::sleep(secs(10)).await;
    let_tasks_run().await;
    let reply = within(secs(1), "a request once connected", send(&mut svc, "two"))
        .await
        .expect("served once connected");
    assert_eq!(reply, "0:two");
    assert!(!svc.is_failing_fast());
}

#[tokio::test(start_paused = true)]
async fn the_clock_restarts_each_time_the_service_is_ready() {
    // Connecting takes 4 s, twice: never 5 s unready in a row, so nothing fails fast.
    let maker = Maker::new([Plan::ConnectAfter(secs(4))], Plan::Connect);
    let mut svc = service(&maker);
    assert_eq!(
        within_an_hour("the first request", send(&mut svc, "one"))
            .await
            .expect("connected after 4 s"),
        "0:one"
    );
    // The connection lives past the retry delay, so the next attempt starts at once.
    tokio::time::sleep(secs(11)).await;
    maker.conn(0).kill();
    maker.push([Plan::ConnectAfter(secs(4))]);
    let start = Instant::now();
    let reply = within_an_hour("the second request", send(&mut svc, "two"))
        .await
        .expect("waits for the next connection: 4 s is under the set time");
    assert_eq!(reply, "1:two");
    println!("second request waited {:?}", start.elapsed());
    assert!(start.elapsed() < MAX_UNREADY);
}

#[tokio::test(start_paused = true)]
async fn a_busy_connection_counts_as_unready() {
    let maker = Maker::always_connect();
    let mut svc = service(&maker);
    assert_eq!(send(&mut svc, "one").await.unwrap(), "0:one");
    maker.conn(0).set_busy(true);
    let start = Instant::now();
    let error = within_an_hour("a request to a busy connection", send(&mut svc, "two"))
        .await
        .expect_err("busy for 5 s: fails fast");
    assert_eq!(start.elapsed(), MAX_UNREADY);
    let unavailable = Unavailable::find(&*error).unwrap();
    assert!(
        unavailable.last_connect_error().is_none(),
        "no attempt failed"
    );
    assert!(
        error.to_string().contains("no connect attempt has failed"),
        "{error}"
    );
    maker.conn(0).set_busy(false);
    assert_eq!(send(&mut svc, "three").await.unwrap(), "0:three");
}

#[tokio::test(start_paused = true)]
async fn under_a_buffer_queued_requests_are_answered_when_the_time_is_up() {
    let maker = Maker::new([], Plan::Fail("connection refused"));
    let svc: Buffer<String, _> = ServiceBuilder::new().buffer(16).service(service(&maker));
    let start = Instant::now();
    let requests: Vec<_> = (0..8)
        .map(|n| tokio::spawn(svc.clone().oneshot(format!("r{n}"))))
        .collect();
    for request in requests {
        let error = within_an_hour("a queued request", request)
            .await
            .unwrap()
            .expect_err("fails fast");
        assert!(Unavailable::find(&*error).is_some(), "{error}");
    }
    assert_eq!(
        start.elapsed(),
        MAX_UNREADY,
        "all answered when the time was up"
    );
}
