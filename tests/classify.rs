//! Disconnect classification: a predicate on each request's outcome marks the connection dead
//! (a proxy answering 502 to everything), the layer reconnects through the close signal, the
//! outcome still reaches the caller, and a panicking predicate is harmless.

mod support;

#[path = "support/h2server.rs"]
mod h2server;

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use h2server::H2Server;
use http_body_util::{BodyExt, Empty, Full};
use persistent_connection::{
    BoxError, Event, PersistentConnection, PersistentConnectionLayer,
    classify::{self, Classified, ClassifyLayer, MarkedDead},
    http::{Http2Connection, Http2Connector},
};
use support::{Conn, Events, Maker, let_tasks_run, ms, secs, yield_until};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_test::{assert_pending, assert_ready};
use tower::{Layer, Service, ServiceExt, service_fn};

// === helpers ===

/// The predicate of most tests: an answer to the request `"502"` marks the connection dead
/// (a [`Conn`] answers `"{id}:{request}"`).
fn answers_502(outcome: Result<&String, &io::Error>) -> bool {
    matches!(outcome, Ok(reply) if reply.ends_with(":502"))
}

/// The persistent connection of most tests: the scripted maker wrapped in the classifier,
/// a fixed address, a 10 s retry delay without jitter, and the combined close signal (the
/// dead-mark or the connection's own signal).
fn persistent<P>(
    maker: &Maker,
    predicate: P,
    recorder: &Events,
) -> PersistentConnection<Classified<Conn, P>>
where
    P: Fn(Result<&String, &io::Error>) -> bool + Send + Sync + 'static,
{
    PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .on_event(recorder.hook_with(|c: &Classified<Conn, P>| c.get_ref().id()))
        .close_signal(classify::close_signal(|c: &Conn| c.closed()))
        .layer(ClassifyLayer::new(predicate).layer(maker.clone()))
}

/// Sends `request` once the service is ready, and returns the outcome.
async fn send<S>(svc: &mut S, request: &str) -> Result<S::Response, S::Error>
where
    S: Service<String>,
{
    svc.ready().await?.call(request.to_string()).await
}

// === marking dead ===

/// A connection whose response the predicate marks dead is replaced with no `poll_ready`
/// after it (so none failing): the response still reaches the caller, the close signal
/// reports `Disconnected` at once, and since the connection lived longer than the retry
/// delay the next attempt is immediate.
#[tokio::test(start_paused = true)]
async fn a_connection_marked_dead_on_a_response_is_replaced_without_a_request() {
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let mut svc = persistent(&maker, answers_502, &recorder);

    assert_eq!(send(&mut svc, "hello").await.unwrap(), "0:hello");
    tokio::time::sleep(secs(30)).await;
    assert_eq!(recorder.names().last().unwrap(), "Connected(0)");

    // The answer that marks the connection dead is still this request's answer.
    assert_eq!(send(&mut svc, "502").await.unwrap(), "0:502");
    let polls = maker.conn(0).polls();
    yield_until("connection 1 reported", || {
        recorder.count(support::connected) >= 2
    })
    .await;

    assert_eq!(
        recorder.timed_secs(),
        [
            (0, "Attempting".to_string()),
            (0, "Address(a)".to_string()),
            (0, "Connected(0)".to_string()),
            (30, "Disconnected".to_string()),
            (30, "Attempting".to_string()),
            (30, "Address(a)".to_string()),
            (30, "Connected(1)".to_string()),
        ]
    );
    assert_eq!(maker.attempt_times(), [secs(0), secs(30)]);
    assert_eq!(
        maker.conn(0).polls(),
        polls,
        "nobody polled the dead connection"
    );
    assert_eq!(send(&mut svc, "next").await.unwrap(), "1:next");
}

/// A connection marked dead sooner than the retry delay after it was made waits out the rest
/// of the delay, like any other short-lived connection (here with `Classified::closed` alone
/// as the close signal): made at 0 s, marked at 3 s, next attempt at 10 s.
#[tokio::test(start_paused = true)]
async fn a_young_connection_marked_dead_waits_the_rest_of_the_retry_delay() {
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let mut svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .retry_delay(|| secs(10))
        .on_event(recorder.hook_with(|c: &Classified<Conn, _>| c.get_ref().id()))
        .close_signal(Classified::closed)
        .layer(ClassifyLayer::new(answers_502).layer(maker.clone()));
    svc.handle().connected().await.unwrap();

    tokio::time::sleep(secs(3)).await;
    assert_eq!(send(&mut svc, "502").await.unwrap(), "0:502");
    yield_until("the disconnect reported", || {
        recorder.count(support::disconnected) >= 1
    })
    .await;
    assert_eq!(
        recorder.timed_secs().last().unwrap(),
        &(3, "Disconnected".to_string())
    );

    tokio::time::sleep(secs(7) - ms(1)).await;
    assert_eq!(maker.attempt_times(), [secs(0)]);
    tokio::time::sleep(ms(1)).await;
    yield_until("connection 1 reported", || {
        recorder.count(support::connected) >= 2
    })
    .await;
    assert_eq!(maker.attempt_times(), [secs(0), secs(10)]);
    assert_eq!(recorder.names().last().unwrap(), "Connected(1)");
}

/// A connection whose requests fail with an error that is not a transport failure of its own
/// (here: the server behind it reset the stream).
#[derive(Clone)]
struct Upstream(Conn);

impl Service<String> for Upstream {
    type Response = String;
    type Error = io::Error;
    type Future = std::future::Ready<Result<String, io::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: String) -> Self::Future {
        std::future::ready(if request == "reset" {
            Err(io::Error::other("upstream reset the stream"))
        } else {
            Ok(format!("{}:{request}", self.0.id()))
        })
    }
}

/// A predicate on errors marks the connection dead too: the caller gets the error, the driver
/// reconnects, and the close reason names the error.
#[tokio::test(start_paused = true)]
async fn a_predicate_on_errors_marks_the_connection_dead() {
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let mut svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(recorder.hook_with(|c: &Classified<Upstream, _>| c.get_ref().0.id()))
        .close_signal(Classified::closed)
        .layer(
            ClassifyLayer::new(|outcome: Result<&String, &io::Error>| outcome.is_err())
                .layer(maker.clone().map_response(Upstream)),
        );
    let first = svc.handle().connected().await.unwrap();
    tokio::time::sleep(secs(60)).await;

    assert_eq!(send(&mut svc, "fine").await.unwrap(), "0:fine");
    assert!(!first.is_marked_dead(), "an Ok outcome is not dead here");
    let error = send(&mut svc, "reset").await.unwrap_err();
    assert_eq!(error.to_string(), "upstream reset the stream");
    assert!(first.is_marked_dead());
    yield_until("connection 1 reported", || {
        recorder.count(support::connected) >= 2
    })
    .await;

    assert_eq!(
        recorder.names()[2..],
        [
            "Connected(0)",
            "Disconnected",
            "Attempting",
            "Address(a)",
            "Connected(1)"
        ]
    );
    assert_eq!(
        first.closed().await.to_string(),
        "closed with error: connection marked dead by the disconnect classifier on an error: \
         upstream reset the stream"
    );
}

/// A predicate that says "not dead" leaves the connection up: one connection, one attempt,
/// a hundred requests, each outcome shown to the predicate.
#[tokio::test(start_paused = true)]
async fn a_predicate_that_says_alive_keeps_the_connection() {
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let judged = Arc::new(AtomicUsize::new(0));
    let mut svc = persistent(
        &maker,
        {
            let judged = judged.clone();
            move |_: Result<&String, &io::Error>| {
                judged.fetch_add(1, Ordering::SeqCst);
                false
            }
        },
        &recorder,
    );

    for i in 0..100 {
        assert_eq!(
            send(&mut svc, &i.to_string()).await.unwrap(),
            format!("0:{i}")
        );
        tokio::time::sleep(secs(1)).await;
    }
    assert_eq!(judged.load(Ordering::SeqCst), 100);
    assert_eq!(maker.attempts(), 1);
    assert_eq!(maker.conn(0).calls(), 100);
    assert_eq!(
        recorder.names(),
        ["Attempting", "Address(a)", "Connected(0)"]
    );
    assert!(!svc.get_ref().unwrap().is_marked_dead());
}

/// A `Write` into a shared buffer, for capturing the log.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A panic in the predicate is caught: the caller still gets its response, the connection
/// stays up and serves the next request, and the panic is logged at WARN.
#[tokio::test(start_paused = true)]
async fn a_panicking_predicate_is_caught_and_the_connection_stays_up() {
    let log = LogBuffer::default();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .finish(),
    );
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let mut svc = persistent(
        &maker,
        |outcome: Result<&String, &io::Error>| {
            if matches!(outcome, Ok(reply) if reply.ends_with(":explode")) {
                panic!("the classifier exploded");
            }
            false
        },
        &recorder,
    );

    assert_eq!(send(&mut svc, "explode").await.unwrap(), "0:explode");
    let_tasks_run().await;
    assert_eq!(send(&mut svc, "after").await.unwrap(), "0:after");
    tokio::time::sleep(secs(60)).await;

    assert_eq!(maker.attempts(), 1);
    assert_eq!(
        recorder.names(),
        ["Attempting", "Address(a)", "Connected(0)"]
    );
    let log = log.text();
    assert!(
        log.contains("WARN")
            && log.contains("the disconnect classifier panicked")
            && log.contains("the classifier exploded"),
        "{log}"
    );
}

// === the wrapper on its own ===

/// A connection answering each request with itself, classified: `502` marks it dead.
fn classified_echo() -> Classified<
    impl Service<u16, Response = u16, Error = Infallible, Future: Send> + Clone,
    impl Fn(Result<&u16, &Infallible>) -> bool,
> {
    Classified::new(
        service_fn(|request: u16| async move { Ok::<u16, Infallible>(request) }),
        |outcome: Result<&u16, &Infallible>| matches!(outcome, Ok(502)),
    )
}

/// Once marked, `poll_ready` fails with `MarkedDead` on the clone that sent the request and on
/// every other clone; before, it was ready, also after an answer the predicate accepts.
#[tokio::test]
async fn after_the_mark_poll_ready_fails_on_every_clone() {
    let mut cx = Context::from_waker(Waker::noop());
    let mut svc = classified_echo();
    let mut other = svc.clone();

    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    assert_eq!(svc.call(200).await.unwrap(), 200);
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    assert!(matches!(other.poll_ready(&mut cx), Poll::Ready(Ok(()))));

    assert_eq!(svc.call(502).await.unwrap(), 502);
    for clone in [&mut svc, &mut other] {
        let Poll::Ready(Err(error)) = clone.poll_ready(&mut cx) else {
            panic!("poll_ready after the mark must fail");
        };
        let marked = error
            .downcast_ref::<MarkedDead>()
            .expect("a MarkedDead error");
        assert!(marked.on_response());
        assert_eq!(
            error.to_string(),
            "connection marked dead by the disconnect classifier on a response"
        );
    }
}

/// `closed()` made before the mark stays pending and is woken by the mark; one made before
/// but first polled after the mark, and one made after it, resolve at once.
#[tokio::test]
async fn closed_resolves_on_the_mark_whenever_it_was_made() {
    let mut svc = classified_echo();
    let mut waiting = tokio_test::task::spawn(svc.closed());
    let unpolled = svc.closed();
    assert_pending!(waiting.poll());

    assert_eq!(svc.ready().await.unwrap().call(502).await.unwrap(), 502);
    assert!(waiting.is_woken(), "the mark wakes a waiting close signal");
    let reason = assert_ready!(waiting.poll());
    assert_eq!(
        reason.to_string(),
        "closed with error: connection marked dead by the disconnect classifier on a response"
    );
    assert!(!reason.is_graceful());

    assert_ready!(tokio_test::task::spawn(unpolled).poll());
    assert_ready!(tokio_test::task::spawn(svc.closed()).poll());
}

/// The combined close signal also fires on the inner connection's own signal: a killed idle
/// connection is replaced without any request.
#[tokio::test(start_paused = true)]
async fn the_combined_close_signal_also_fires_on_the_connections_own_signal() {
    let maker = Maker::always_connect();
    let recorder = Events::new();
    let svc = persistent(&maker, answers_502, &recorder);
    let first = svc.handle().connected().await.unwrap();
    tokio::time::sleep(secs(30)).await;

    first.get_ref().kill();
    yield_until("connection 1 reported", || {
        recorder.count(support::connected) >= 2
    })
    .await;
    assert_eq!(
        recorder.timed_secs()[2..],
        [
            (0, "Connected(0)".to_string()),
            (30, "Disconnected".to_string()),
            (30, "Attempting".to_string()),
            (30, "Address(a)".to_string()),
            (30, "Connected(1)".to_string()),
        ]
    );
    assert_eq!(
        first.get_ref().polls(),
        0,
        "nobody polled the killed connection"
    );
    assert!(
        !first.is_marked_dead(),
        "the connection's own signal, not the mark"
    );
}

// === over real HTTP/2 ===

/// A bound on anything that should happen at once on localhost.
const SOON: Duration = Duration::from_secs(5);

/// A hyper HTTP/2 server on 127.0.0.1 that answers `502 Bad Gateway` to every request,
/// as a proxy whose upstream is gone; counts the requests.
struct BadGateway {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl BadGateway {
    async fn start() -> Self {
        use hyper::{Response, server::conn::http2, service::service_fn};
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                let service = service_fn(move |_request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = Response::builder()
                        .status(http::StatusCode::BAD_GATEWAY)
                        .body(Full::new(Bytes::from_static(b"bad gateway")));
                    async move { response }
                });
                tokio::spawn(async move {
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }
}

impl Drop for BadGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Over real HTTP/2: discovery offers the server answering 502 first, then a good one. The
/// 502 reaches the caller and marks the connection dead; the client moves to the good server
/// and the next request succeeds. No request fails at the transport level.
#[tokio::test]
async fn over_http2_a_502_moves_the_client_to_a_good_server() {
    let bad = BadGateway::start().await;
    let good = H2Server::start("good").await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut svc = PersistentConnectionLayer::round_robin([bad.addr, good.addr()])
        .retry_delay(|| Duration::from_millis(50))
        .on_event({
            let events = events.clone();
            move |event: &Event<_, _>| events.lock().unwrap().push(event.name())
        })
        .close_signal(classify::close_signal(Http2Connection::closed))
        .layer(
            ClassifyLayer::new(
                |outcome: Result<&http::Response<hyper::body::Incoming>, &BoxError>| {
                    matches!(outcome, Ok(r) if r.status() == http::StatusCode::BAD_GATEWAY)
                },
            )
            .layer(Http2Connector::<Empty<Bytes>>::new().origin("http://billing")),
        );
    let request = |path: &str| http::Request::get(path).body(Empty::new()).unwrap();

    let first = tokio::time::timeout(SOON, svc.handle().connected())
        .await
        .expect("connected in time")
        .unwrap();
    let response = tokio::time::timeout(SOON, svc.ready().await.unwrap().call(request("/a")))
        .await
        .expect("answered in time")
        .expect("the 502 is a response, not a transport failure");
    assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
    assert!(first.is_marked_dead());

    let response =
        tokio::time::timeout(SOON, async { svc.ready().await?.call(request("/b")).await })
            .await
            .expect("answered in time")
            .expect("no transport failure");
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "good http://billing/b");

    assert_eq!(bad.requests.load(Ordering::SeqCst), 1);
    assert_eq!(good.counts().requests, 1);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "AttemptingToConnect",
            "ObtainedAddress",
            "Connected",
            "Disconnected",
            "AttemptingToConnect",
            "ObtainedAddress",
            "Connected",
        ]
    );
    svc.handle().close().await;
}
