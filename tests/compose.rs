//! Composition with tower's own layers: `Buffer`, `LoadShed`, `Timeout`, a `ServiceBuilder`
//! stack, and the `ServiceExt` helpers, over the persistent connection.
mod support;

use futures_util::{StreamExt as _, stream};
use persistent_connection::{
    BoxError, Closed, PersistentConnection, PersistentConnectionLayer, close::CloseSignal,
};
use support::*;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_test::{assert_pending, assert_ready_ok, task};
use tower::{
    Layer, Service, ServiceBuilder, ServiceExt,
    buffer::Buffer,
    load_shed::{LoadShed, error::Overloaded},
    timeout::{Timeout, error::Elapsed},
};

/// The layer of every test: the fixed address `"a"`, a 10 s retry delay without jitter, and
/// the close signal that fires on `Conn::kill()`.
fn layer() -> PersistentConnectionLayer<Addr, (), impl CloseSignal<Conn>> {
    PersistentConnectionLayer::fixed_address("a")
        .retry_delay(|| secs(10))
        .jitter(0.0)
        .close_signal(|c: &Conn| c.closed())
}

/// A maker whose first attempt (at 0 s) fails and whose next one (at 10 s) connects: a 10 s
/// outage from the start.
fn down_for_ten_seconds() -> Maker {
    Maker::new([Plan::Fail("refused")], Plan::Connect)
}

/// Waits until `svc` is ready, sends `req`, and awaits the response.
async fn send<S>(svc: &mut S, req: &str) -> Result<String, BoxError>
where
    S: Service<String, Response = String, Error = BoxError>,
{
    within_an_hour(req, async {
        svc.ready().await?.call(req.to_string()).await
    })
    .await
}

/// Sends `req` through a clone of `svc` on a spawned task; the task returns the outcome and
/// the time it came.
fn spawn_send<S>(svc: &S, req: String) -> JoinHandle<(Result<String, BoxError>, Instant)>
where
    S: Service<String, Response = String, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut svc = svc.clone();
    tokio::spawn(async move {
        let reply = send(&mut svc, &req).await;
        (reply, Instant::now())
    })
}

// === Buffer ===

/// Twenty requests sent through a `Buffer` during a 10 s outage wait in its queue, and all
/// succeed, on the connection that arrives at 10 s.
#[tokio::test(start_paused = true)]
async fn buffered_requests_sent_during_an_outage_all_succeed_once_connected() {
    let maker = down_for_ten_seconds();
    let start = Instant::now();
    let buffer = Buffer::new(layer().layer(maker.clone()), 32);

    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(spawn_send(&buffer, format!("r{i}")));
        tokio::time::sleep(ms(450)).await;
    }
    // The last request went out at 8.55 s, during the outage.
    assert_eq!(maker.connections(), 0);

    for (i, task) in tasks.into_iter().enumerate() {
        let (reply, at) = task.await.unwrap();
        assert_eq!(reply.unwrap(), format!("0:r{i}"));
        assert_eq!(at - start, secs(10), "request {i}");
    }
    assert_eq!(maker.attempt_times(), [secs(0), secs(10)]);
}

/// A disconnect never poisons a `Buffer` above the layer: after a connection is killed,
/// requests through the same buffer succeed on the next connection.
#[tokio::test(start_paused = true)]
async fn a_disconnect_does_not_poison_the_buffer() {
    let maker = Maker::always_connect();
    let mut buffer = Buffer::new(layer().layer(maker.clone()), 32);
    assert_eq!(send(&mut buffer, "a").await.unwrap(), "0:a");

    let first = maker.conn(0);
    first.kill();
    let killed_at = Instant::now();
    // Sent at once: the buffer's worker meets the dead connection (or its absence), and the
    // request waits for the next one instead of failing the worker.
    assert_eq!(send(&mut buffer, "b").await.unwrap(), "1:b");
    // The connection lived 0 s: the retry waits the rest of the 10 s delay.
    assert_eq!(killed_at.elapsed(), secs(10));
    assert_eq!(send(&mut buffer, "c").await.unwrap(), "1:c");
    assert_eq!(first.calls(), 1);
}

/// A connection that dies while a `Buffer`'s worker waits on it (busy, with a request queued)
/// does not poison the buffer: the worker meets the failed `poll_ready` first, the queued
/// request waits for the next connection and succeeds on it, and so do later ones.
#[tokio::test(start_paused = true)]
async fn a_connection_dying_under_a_waiting_buffer_does_not_poison_it() {
    let maker = Maker::always_connect();
    let mut buffer = Buffer::new(layer().layer(maker.clone()), 32);
    assert_eq!(send(&mut buffer, "a").await.unwrap(), "0:a");

    let first = maker.conn(0);
    first.set_busy(true);
    let queued = spawn_send(&buffer, "b".into());
    let_tasks_run().await;
    assert!(!queued.is_finished());
    let polls = first.polls();

    // Wakes the worker (waiting on the busy connection) before the driver sees the signal.
    first.kill();
    let killed_at = Instant::now();
    let (reply, at) = queued.await.unwrap();
    assert!(
        first.polls() > polls,
        "the worker never polled the dead connection"
    );
    assert_eq!(reply.unwrap(), "1:b");
    assert_eq!(at - killed_at, secs(10));
    assert_eq!(send(&mut buffer, "c").await.unwrap(), "1:c");
    assert_eq!(first.calls(), 1);
}

/// After `close()`, requests queued in a `Buffer` during an outage fail at once with an error
/// whose source chain holds `Closed`, and so do requests sent after the close.
#[tokio::test(start_paused = true)]
async fn closing_fails_queued_and_later_buffered_requests_with_closed() {
    let maker = Maker::new([], Plan::Fail("refused"));
    let svc = layer().layer(maker.clone());
    let handle = svc.handle();
    let buffer = Buffer::new(svc, 32);

    let queued: Vec<_> = (0..3)
        .map(|i| spawn_send(&buffer, format!("q{i}")))
        .collect();
    tokio::time::sleep(secs(5)).await;
    assert!(queued.iter().all(|task| !task.is_finished()));

    let closed_at = Instant::now();
    handle.close().await;
    for task in queued {
        let (reply, at) = task.await.unwrap();
        let err = reply.unwrap_err();
        assert!(Closed::find_in(&*err).is_some(), "not Closed: {err}");
        assert_eq!(at, closed_at);
    }

    let (reply, _) = spawn_send(&buffer, "late".into()).await.unwrap();
    let err = reply.unwrap_err();
    assert!(Closed::find_in(&*err).is_some(), "not Closed: {err}");
    assert_eq!(maker.connections(), 0);
}

// === LoadShed ===

/// `LoadShed` above the layer fails a request at once with `Overloaded` while disconnected,
/// and lets requests through once connected.
#[tokio::test(start_paused = true)]
async fn load_shed_fails_fast_while_disconnected_and_passes_once_connected() {
    let maker = down_for_ten_seconds();
    let start = Instant::now();
    let svc = layer().layer(maker.clone());
    let handle = svc.handle();
    let mut svc = LoadShed::new(svc);
    yield_until("the first attempt", || maker.attempts() == 1).await;
    assert_eq!(maker.attempts(), 1);

    let err = send(&mut svc, "a").await.unwrap_err();
    assert!(err.is::<Overloaded>(), "not Overloaded: {err}");
    assert_eq!(start.elapsed(), secs(0));

    within_an_hour("the connection", handle.connected())
        .await
        .unwrap();
    assert_eq!(start.elapsed(), secs(10));
    assert_eq!(send(&mut svc, "b").await.unwrap(), "0:b");
    assert_eq!(start.elapsed(), secs(10));
}

/// `LoadShed` above the layer also sheds while the connection itself is not ready (busy, as
/// an HTTP/1 connection with a request in flight): the documented behaviour. The request never
/// reaches the connection; once it is ready again, requests pass.
#[tokio::test(start_paused = true)]
async fn load_shed_also_sheds_while_the_connection_is_busy() {
    let maker = Maker::always_connect();
    let svc = layer().layer(maker.clone());
    let handle = svc.handle();
    let mut svc = LoadShed::new(svc);
    let conn = within_an_hour("the connection", handle.connected())
        .await
        .unwrap();

    conn.set_busy(true);
    let err = send(&mut svc, "a").await.unwrap_err();
    assert!(err.is::<Overloaded>(), "not Overloaded: {err}");
    assert_eq!(conn.calls(), 0);

    conn.set_busy(false);
    assert_eq!(send(&mut svc, "b").await.unwrap(), "0:b");
    assert_eq!(conn.calls(), 1);
}

// === Bounding the wait ===

/// `Timeout` above a `Buffer` above the layer bounds the wait for a connection: during an
/// outage a request fails with `Elapsed` exactly at the timeout.
#[tokio::test(start_paused = true)]
async fn timeout_over_buffer_fails_a_request_at_the_timeout_during_an_outage() {
    let maker = down_for_ten_seconds();
    let mut svc = Timeout::new(Buffer::new(layer().layer(maker.clone()), 32), secs(5));

    let sent_at = Instant::now();
    let err = send(&mut svc, "a").await.unwrap_err();
    assert!(err.is::<Elapsed>(), "not Elapsed: {err}");
    assert_eq!(sent_at.elapsed(), secs(5));
    assert_eq!(maker.connections(), 0);
}

/// `Timeout` above a `Buffer` above the layer lets a request through when the connection comes
/// within the timeout: it is sent the moment the connection is up.
#[tokio::test(start_paused = true)]
async fn timeout_over_buffer_lets_a_request_through_when_the_connection_comes_in_time() {
    let maker = down_for_ten_seconds();
    let mut svc = Timeout::new(Buffer::new(layer().layer(maker.clone()), 32), secs(15));

    let sent_at = Instant::now();
    assert_eq!(send(&mut svc, "a").await.unwrap(), "0:a");
    assert_eq!(sent_at.elapsed(), secs(10));
}

/// `tokio::time::timeout(d, svc.ready())` bounds the wait for a connection: it gives up at
/// `d` during an outage, and returns the ready service when the connection comes within `d`.
#[tokio::test(start_paused = true)]
async fn tokio_timeout_around_ready_bounds_the_wait_for_a_connection() {
    let maker = down_for_ten_seconds();
    let mut svc = layer().layer(maker.clone());
    let start = Instant::now();

    let waited = tokio::time::timeout(secs(4), ServiceExt::<String>::ready(&mut svc)).await;
    assert!(waited.is_err(), "ready during the outage");
    assert_eq!(start.elapsed(), secs(4));

    let ready = tokio::time::timeout(secs(8), ServiceExt::<String>::ready(&mut svc))
        .await
        .expect("the connection came at 10 s, within the second wait");
    let svc = ready.unwrap();
    assert_eq!(start.elapsed(), secs(10));
    assert_eq!(svc.call("a".to_string()).await.unwrap(), "0:a");
}

/// `Timeout` directly above the layer does not bound the wait for a connection (its clock
/// starts in `call`): its `ready()` is still pending well past the timeout, and the request
/// sent once connected succeeds.
#[tokio::test(start_paused = true)]
async fn timeout_directly_over_the_layer_does_not_bound_the_wait_for_a_connection() {
    let maker = down_for_ten_seconds();
    let mut svc = Timeout::new(layer().layer(maker.clone()), secs(2));
    let start = Instant::now();

    let waited = tokio::time::timeout(secs(8), ServiceExt::<String>::ready(&mut svc)).await;
    assert!(waited.is_err(), "ready() ended before the connection came");
    assert_eq!(start.elapsed(), secs(8));

    assert_eq!(send(&mut svc, "a").await.unwrap(), "0:a");
    assert_eq!(start.elapsed(), secs(10));
}

// === A ServiceBuilder stack ===

/// A full `ServiceBuilder` stack (timeout, load shed, concurrency limit, buffer, the layer)
/// builds without type annotations and, during an outage, keeps up to the limit of requests
/// waiting (failing with `Elapsed` at the timeout) and sheds the rest at once; a request whose
/// timeout outlasts the outage, and every request after, succeeds.
#[tokio::test(start_paused = true)]
async fn a_service_builder_stack_bounds_waiting_and_sheds_the_excess_during_an_outage() {
    let maker = down_for_ten_seconds();
    let start = Instant::now();
    // From the bottom up:
    // - the layer: one connection, `Pending` while down;
    // - `buffer`: makes the stack cheap to share among tasks (one worker drives the one
    //   connection); its `poll_ready` is ready while the queue has room, so a request waits for
    //   a connection in its response future, where `timeout` can see it;
    // - `concurrency_limit(2)`: at most 2 requests waiting or in flight at once (a permit is
    //   held until the response), so an outage cannot pile up an unbounded queue;
    // - `load_shed`: when the limit is reached, fail at once with `Overloaded` rather than
    //   wait for a slot;
    // - `timeout` on top: bounds each admitted request's total time, including its wait in the
    //   buffer for a connection (its clock starts in `call`, and nothing below waits in
    //   `poll_ready` now that `load_shed` is always ready).
    let svc = ServiceBuilder::new()
        .timeout(secs(5))
        .load_shed()
        .concurrency_limit(2)
        .buffer(16)
        .layer(layer())
        .service(maker.clone());

    let admitted = [spawn_send(&svc, "a".into()), spawn_send(&svc, "b".into())];
    let_tasks_run().await;
    let (reply, at) = spawn_send(&svc, "c".into()).await.unwrap();
    let err = reply.unwrap_err();
    assert!(err.is::<Overloaded>(), "not Overloaded: {err}");
    assert_eq!(at - start, secs(0));

    for task in admitted {
        let (reply, at) = task.await.unwrap();
        let err = reply.unwrap_err();
        assert!(err.is::<Elapsed>(), "not Elapsed: {err}");
        assert_eq!(at - start, secs(5));
    }

    // Sent at 6 s, still during the outage: its 5 s timeout outlasts it.
    tokio::time::sleep_until(start + secs(6)).await;
    let (reply, at) = spawn_send(&svc, "d".into()).await.unwrap();
    assert_eq!(reply.unwrap(), "0:d");
    assert_eq!(at - start, secs(10));

    let (reply, at) = spawn_send(&svc, "e".into()).await.unwrap();
    assert_eq!(reply.unwrap(), "0:e");
    assert_eq!(at - start, secs(10));
    assert_eq!(maker.conn(0).calls(), 2);
}

// === ServiceExt ===

/// `ServiceExt::ready` waits while disconnected and resolves to the ready service when the
/// connection arrives (its task is woken for it).
#[tokio::test(start_paused = true)]
async fn ready_waits_while_disconnected_then_resolves() {
    let maker = down_for_ten_seconds();
    let mut svc = layer().layer(maker.clone());
    let handle = svc.handle();
    let start = Instant::now();
    let_tasks_run().await;

    let mut ready = task::spawn(ServiceExt::<String>::ready(&mut svc));
    assert_pending!(ready.poll());
    tokio::time::sleep(secs(9)).await;
    assert_pending!(ready.poll());

    within_an_hour("the connection", handle.connected())
        .await
        .unwrap();
    assert_eq!(start.elapsed(), secs(10));
    assert!(ready.is_woken());
    let svc = assert_ready_ok!(ready.poll());
    assert_eq!(svc.call("a".to_string()).await.unwrap(), "0:a");
}

/// `ServiceExt::oneshot` on a clone sends one request, waiting for the connection; the clone
/// shares the original's connection, which stays usable.
#[tokio::test(start_paused = true)]
async fn oneshot_on_a_clone_waits_for_the_connection_and_sends_one_request() {
    let maker = down_for_ten_seconds();
    let mut svc: PersistentConnection<Conn> = layer().layer(maker.clone());
    let start = Instant::now();

    let reply = within_an_hour("oneshot", svc.clone().oneshot("a".to_string())).await;
    assert_eq!(reply.unwrap(), "0:a");
    assert_eq!(start.elapsed(), secs(10));

    assert_eq!(send(&mut svc, "b").await.unwrap(), "0:b");
    assert_eq!(maker.connections(), 1);
}

/// `ServiceExt::call_all` over a stream of requests survives a reconnect in the middle: every
/// request gets a successful response, in order, and those sent after the connection was
/// killed are answered by the new connection.
#[tokio::test(start_paused = true)]
async fn call_all_survives_a_reconnect_in_the_middle_of_the_stream() {
    let maker = Maker::always_connect();
    let svc = layer().layer(maker.clone());
    let (requests, mut rx) = mpsc::unbounded_channel::<String>();
    let mut responses = svc.call_all(stream::poll_fn(move |cx| rx.poll_recv(cx)));

    for i in 0..3 {
        requests.send(format!("r{i}")).unwrap();
        let reply = within_an_hour("a response", responses.next()).await;
        assert_eq!(reply.unwrap().unwrap(), format!("0:r{i}"));
    }

    let first = maker.conn(0);
    first.kill();
    for i in 3..6 {
        requests.send(format!("r{i}")).unwrap();
    }
    for i in 3..6 {
        let reply = within_an_hour("a response", responses.next()).await;
        assert_eq!(reply.unwrap().unwrap(), format!("1:r{i}"));
    }

    drop(requests);
    assert!(within_an_hour("the end", responses.next()).await.is_none());
    assert_eq!(first.calls(), 3);
}
