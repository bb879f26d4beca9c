//! Requests the server provably never processed are sent again on the next connection
//! (HTTP/2 streams above `GOAWAY`'s last stream id, `REFUSED_STREAM`; HTTP/1 idempotent
//! requests whose reused connection closed before any response byte), bounded, and those that
//! cannot be sent again fail with `NotProcessed`; a request the server may have processed is
//! never sent again. Also: the close signals tell a goodbye after serving from one before.
//! Real servers on 127.0.0.1.

#[path = "support/refusing.rs"]
mod refusing;

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use persistent_connection::{
    BoxError, PersistentConnection, PersistentConnectionLayer,
    close::CloseReason,
    http::{Http1Connector, Http2Connector, Idempotent, NotProcessed},
};
use refusing::{GUARD, GoawayFirst, H1Closer, ID, Mode, RawH2, Streaming, find, text};
use tokio::time::timeout;
use tower::{Service, ServiceExt};

type Body = Full<Bytes>;

/// A short retry delay: the tests do not depend on how the driver treats a goodbye.
fn quick() -> Duration {
    Duration::from_millis(50)
}

fn post(id: u64, body: &str) -> Request<Body> {
    Request::post("/echo")
        .header(ID, id.to_string())
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn get(id: u64) -> Request<Body> {
    Request::get("/echo")
        .header(ID, id.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends `request` through `svc` (waiting for readiness), bounded by [`GUARD`]; the answer's
/// text.
async fn send<S>(mut svc: S, request: Request<Body>) -> Result<String, BoxError>
where
    S: Service<Request<Body>, Response = http::Response<hyper::body::Incoming>, Error = BoxError>,
{
    timeout(GUARD, async move {
        let response = svc.ready().await?.call(request).await?;
        text(response).await
    })
    .await
    .unwrap_or_else(|_| panic!("the request did not finish within {GUARD:?}"))
}

fn h2_service(
    addr: std::net::SocketAddr,
    connector: Http2Connector<Body>,
) -> PersistentConnection<persistent_connection::http::Http2Connection<Body>> {
    PersistentConnectionLayer::fixed_address(addr)
        .retry_delay(quick)
        .http2(connector)
}

/// The connection number in an answer `conn=<n> id=<id> body=<body>`.
fn conn_of(answer: &str) -> usize {
    answer
        .strip_prefix("conn=")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an answer: {answer:?}"))
}

// === HTTP/2 ===

/// The server takes streams 1, 3 and 5 of its first connection, never sees the ones above
/// (some were sent: their `HEADERS` were dropped), and says `GOAWAY` with last stream id 5.
/// Every one of twenty concurrent POSTs succeeds with its own body echoed: three answered by
/// the first connection, the rest by the second, each processed exactly once, and the layer's
/// stats count the resends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_above_goaway_last_stream_id_are_replayed_with_their_bodies() {
    let server = RawH2::start(Mode::GoawayAbove(5)).await;
    let svc = h2_service(server.addr, Http2Connector::new());

    let requests: Vec<_> = (0..20u64)
        .map(|id| {
            let svc = svc.clone();
            tokio::spawn(async move { (id, send(svc, post(id, &format!("payload-{id}"))).await) })
        })
        .collect();
    let mut by_connection = HashMap::<usize, usize>::new();
    for request in requests {
        let (id, answer) = request.await.unwrap();
        let answer = answer.unwrap_or_else(|error| {
            panic!(
                "request {id} failed: {error:?}; processed {:?}; accepted {}; {:?}",
                server.record.processed(),
                server.record.accepted(),
                svc.handle().stats()
            )
        });
        assert!(
            answer.ends_with(&format!(" id={id} body=payload-{id}")),
            "{answer}"
        );
        *by_connection.entry(conn_of(&answer)).or_default() += 1;
    }
    assert_eq!(by_connection.get(&1), Some(&3), "{by_connection:?}");
    assert_eq!(by_connection.get(&2), Some(&17), "{by_connection:?}");
    for id in 0..20u64 {
        assert_eq!(
            server.record.times_processed(&id.to_string()),
            1,
            "request {id}: {:?}",
            server.record.processed()
        );
    }
    let stats = svc.handle().stats();
    assert!(
        (1..=17).contains(&stats.replayed_requests),
        "replayed: {}",
        stats.replayed_requests
    );
    assert_eq!(stats.refused_requests, 0);
}

/// Streams the server resets with `REFUSED_STREAM` (the even request ids, once each) are sent
/// again and succeed; each request is processed exactly once, and each refusal counts one
/// resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_replayed() {
    let server = RawH2::start(Mode::RefuseEvenOnce).await;
    let svc = h2_service(server.addr, Http2Connector::new());

    let requests: Vec<_> = (0..10u64)
        .map(|id| {
            let svc = svc.clone();
            tokio::spawn(async move { (id, send(svc, post(id, "x")).await) })
        })
        .collect();
    for request in requests {
        let (id, answer) = request.await.unwrap();
        let answer = answer.unwrap_or_else(|error| panic!("request {id} failed: {error:?}"));
        assert!(answer.ends_with(&format!(" id={id} body=x")), "{answer}");
    }
    assert_eq!(server.record.refused().len(), 5);
    for id in 0..10u64 {
        assert_eq!(server.record.times_processed(&id.to_string()), 1, "{id}");
    }
    let stats = svc.handle().stats();
    assert_eq!(stats.replayed_requests, 5);
    assert_eq!(stats.refused_requests, 0);
}

/// A refused request whose body outgrew the bytes kept for a resend fails with `NotProcessed`
/// (saying so), counted once; the server never processed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_with_a_body_over_the_limit_fails_with_not_processed() {
    let server = RawH2::start(Mode::RefuseAfterData).await;
    let svc = h2_service(server.addr, Http2Connector::new().max_replay_body(1024));

    let error = send(svc.clone(), post(1, &"x".repeat(4096)))
        .await
        .expect_err("the server refused it");
    let not_processed =
        find::<NotProcessed>(&*error).unwrap_or_else(|| panic!("not a NotProcessed: {error:?}"));
    let message = not_processed.to_string();
    assert!(message.contains("REFUSED_STREAM"), "{message}");
    assert!(message.contains("larger than the 1024 bytes"), "{message}");
    assert!(std::error::Error::source(not_processed).is_some());
    let stats = svc.handle().stats();
    assert_eq!((stats.refused_requests, stats.replayed_requests), (1, 0));
    assert_eq!(server.record.times_processed("1"), 0);
    assert_eq!(server.record.refused(), ["1"]);
}

/// A request refused again and again is sent `max_replays` times and then fails with
/// `NotProcessed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_stop_at_max_replays() {
    let server = RawH2::start(Mode::RefuseAfterData).await;
    let svc = h2_service(server.addr, Http2Connector::new().max_replays(2));

    let error = send(svc.clone(), post(7, "small")).await.unwrap_err();
    let not_processed = find::<NotProcessed>(&*error).expect("NotProcessed");
    assert!(
        not_processed.to_string().contains("sent again 2 times"),
        "{not_processed}"
    );
    assert_eq!(server.record.refused(), ["7", "7", "7"]);
    let stats = svc.handle().stats();
    assert_eq!((stats.replayed_requests, stats.refused_requests), (2, 1));
}

/// A stream the server took (at or below the last stream id of its `GOAWAY`, or with no
/// `GOAWAY` at all) whose connection then dies is never sent again: it fails with a plain
/// connection error, though a new connection is up, and the server saw it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_stream_whose_connection_dies_is_not_replayed() {
    for goaway in [true, false] {
        let server = RawH2::start(Mode::AcceptThenDie { goaway }).await;
        let svc = h2_service(server.addr, Http2Connector::new());

        let error = send(svc.clone(), post(1, "once"))
            .await
            .expect_err("the server died under the request");
        assert!(
            find::<NotProcessed>(&*error).is_none(),
            "goaway={goaway}: {error:?}"
        );
        // The connection after it works, and did not get the request.
        server.record.wait_accepted(2).await;
        let answer = send(svc.clone(), post(2, "after")).await.unwrap();
        assert_eq!(conn_of(&answer), 2);
        assert_eq!(server.record.times_processed("1"), 1, "goaway={goaway}");
        let stats = svc.handle().stats();
        assert_eq!(
            (stats.replayed_requests, stats.refused_requests),
            (0, 0),
            "goaway={goaway}"
        );
    }
}

/// A long streaming response open when the server sends `GOAWAY` completes with its whole
/// body on the old connection, while a request sent after the goodbye goes to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_finishes_across_goaway_while_new_requests_move_on() {
    let mut server = Streaming::start().await;
    let svc = h2_service(server.addr, Http2Connector::new());

    let mut streaming = svc.clone();
    let response = timeout(GUARD, async {
        streaming
            .ready()
            .await?
            .call(
                Request::get("/stream")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
    })
    .await
    .unwrap()
    .unwrap();
    let feed = server.feed().await;
    feed.send(Bytes::from_static(b"first ")).unwrap();

    server.goaway();
    server.record.wait_accepted(2).await;
    let answer = send(svc.clone(), get(2)).await.unwrap();
    assert_eq!(conn_of(&answer), 2, "{answer}");

    feed.send(Bytes::from_static(b"last")).unwrap();
    drop(feed);
    let body = timeout(GUARD, text(response)).await.unwrap().unwrap();
    assert_eq!(body, "first last");
    assert_eq!(svc.handle().stats().refused_requests, 0);
}

/// `Http2Connection::closed` says `Graceful` for a `GOAWAY` after a response, and
/// `GracefulBeforeServing` for a server that sends `GOAWAY` before any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_close_signal_tells_whether_the_connection_served() {
    let server = Streaming::start().await;
    let mut connector = Http2Connector::<Body>::new();
    let mut connection = timeout(GUARD, connector.call(server.addr))
        .await
        .unwrap()
        .unwrap();
    let answer = send(&mut connection, get(1)).await.unwrap();
    assert_eq!(conn_of(&answer), 1);
    server.goaway();
    let reason = timeout(GUARD, connection.closed()).await.unwrap();
    assert!(matches!(reason, CloseReason::Graceful), "{reason:?}");

    let rude = GoawayFirst::start().await;
    let connection = timeout(GUARD, connector.call(rude.addr))
        .await
        .unwrap()
        .unwrap();
    let reason = timeout(GUARD, connection.closed()).await.unwrap();
    assert!(
        matches!(reason, CloseReason::GracefulBeforeServing),
        "{reason:?}"
    );
}

// === HTTP/1 ===

/// Sends a warm-up GET (answered: the connection is now reused), then `request`, on which the
/// server closes the connection without a byte of response.
async fn after_warm_up(
    server: &H1Closer,
    connector: Http1Connector<Body>,
    request: Request<Body>,
) -> (
    Result<String, BoxError>,
    PersistentConnection<persistent_connection::http::Http1Connection<Body>>,
) {
    let svc = PersistentConnectionLayer::fixed_address(server.addr)
        .retry_delay(quick)
        .http1(connector);
    let warm = send(svc.clone(), get(0)).await.unwrap();
    assert_eq!(conn_of(&warm), 1);
    (send(svc.clone(), request).await, svc)
}

/// An idempotent GET whose reused connection closed before any byte of its response is sent
/// again on the next connection and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_idempotent_request_on_a_reused_connection_closed_early_is_replayed() {
    let server = H1Closer::start().await;
    let (answer, svc) = after_warm_up(&server, Http1Connector::new(), get(1)).await;
    let answer = answer.unwrap();
    assert_eq!(answer, "conn=2 id=1 body=");
    assert_eq!(
        server.arrived(),
        [(1, "0".into()), (1, "1".into()), (2, "1".into())]
    );
    assert_eq!(svc.handle().stats().replayed_requests, 1);
}

/// A POST in the same situation may have been processed: it fails, and is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_post_on_a_reused_connection_closed_early_is_not_replayed() {
    let server = H1Closer::start().await;
    let (answer, svc) = after_warm_up(&server, Http1Connector::new(), post(1, "pay")).await;
    let error = answer.expect_err("the POST must fail");
    assert!(find::<NotProcessed>(&*error).is_none(), "{error:?}");
    // The next connection works, and never saw the POST.
    server.record.wait_accepted(2).await;
    let answer = send(svc.clone(), get(2)).await.unwrap();
    assert_eq!(answer, "conn=2 id=2 body=");
    assert_eq!(
        server.arrived(),
        [(1, "0".into()), (1, "1".into()), (2, "2".into())]
    );
    assert_eq!(svc.handle().stats().replayed_requests, 0);
}

/// A POST marked `Idempotent` is sent again, with its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_post_marked_idempotent_is_replayed() {
    let server = H1Closer::start().await;
    let mut request = post(1, "set=7");
    request.extensions_mut().insert(Idempotent);
    let (answer, svc) = after_warm_up(&server, Http1Connector::new(), request).await;
    assert_eq!(answer.unwrap(), "conn=2 id=1 body=set=7");
    assert_eq!(svc.handle().stats().replayed_requests, 1);
}

/// `Http1Connection::closed` says `Graceful` for a clean close after a response, and
/// `GracefulBeforeServing` for a server that accepts and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_close_signal_tells_whether_the_connection_served() {
    let server = H1Closer::start().await;
    let mut connector = Http1Connector::<Body>::new();
    let mut connection = timeout(GUARD, connector.call(server.addr))
        .await
        .unwrap()
        .unwrap();
    // The server answers with `Connection: close` and closes.
    let mut request = get(1);
    request
        .headers_mut()
        .insert(refusing::CLOSE, http::HeaderValue::from_static("1"));
    assert_eq!(
        send(&mut connection, request).await.unwrap(),
        "conn=1 id=1 body="
    );
    let reason = timeout(GUARD, connection.closed()).await.unwrap();
    assert!(matches!(reason, CloseReason::Graceful), "{reason:?}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let connection = timeout(GUARD, connector.call(addr)).await.unwrap().unwrap();
    let reason = timeout(GUARD, connection.closed()).await.unwrap();
    closer.abort();
    assert!(
        matches!(reason, CloseReason::GracefulBeforeServing),
        "{reason:?}"
    );
}

/// A request waiting to be sent again fails with `NotProcessed` once no next connection can
/// come: the connector that would make it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_fails_with_not_processed_when_the_connector_is_gone() {
    let server = H1Closer::start().await;
    let mut connector = Http1Connector::<Body>::new();
    let mut connection = timeout(GUARD, connector.call(server.addr))
        .await
        .unwrap()
        .unwrap();
    send(&mut connection, get(0)).await.unwrap();
    let pending = tokio::spawn(send(connection.clone(), get(1)));
    drop(connector);
    let error = pending
        .await
        .unwrap()
        .expect_err("no connection to resend on");
    let not_processed =
        find::<NotProcessed>(&*error).unwrap_or_else(|| panic!("not a NotProcessed: {error:?}"));
    assert!(
        not_processed
            .to_string()
            .contains("no next connection will come"),
        "{not_processed}"
    );
    assert_eq!(server.arrived(), [(1, "0".into()), (1, "1".into())]);
}
