//! Real servers on 127.0.0.1 for the HTTP/2 tests: [`H2Server`], a hyper HTTP/2 server that
//! can be killed, restarted on the same port, and told to send `GOAWAY`; [`SilentServer`],
//! which sends its HTTP/2 preface and then never answers; and [`ClosingListener`], which
//! accepts TCP connections and closes them at once.
#![allow(dead_code, unreachable_pub)]

#[path = "h2serve.rs"]
mod h2serve;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What an [`H2Server`] has seen so far (cumulative over restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// TCP connections accepted.
    pub accepted: usize,
    /// Connections whose task has ended (closed by the client, shut down, or killed).
    pub ended: usize,
    /// Requests received.
    pub requests: usize,
    /// Requests being answered now.
    pub in_flight: usize,
    /// The largest `in_flight` seen.
    pub max_in_flight: usize,
}

struct Inner {
    name: String,
    addr: SocketAddr,
    delay: Mutex<Duration>,
    /// While `true`, requests wait before they are answered.
    hold: watch::Sender<bool>,
    /// Bumped by `goaway()`: every connection open at that moment shuts down gracefully.
    goaway: watch::Sender<u64>,
    counts: watch::Sender<Counts>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    connection_tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A hyper HTTP/2 server that answers every request with `"<name> <request URI>"`.
#[derive(Clone)]
pub struct H2Server {
    inner: Arc<Inner>,
}

impl H2Server {
    /// Starts a server named `name` on a free port of 127.0.0.1.
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a server named `name` on `addr`.
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the test server");
        let addr = listener.local_addr().unwrap();
        let server = Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                addr,
                delay: Mutex::new(Duration::ZERO),
                hold: watch::Sender::new(false),
                goaway: watch::Sender::new(0),
                counts: watch::Sender::new(Counts::default()),
                accept_task: Mutex::new(None),
                connection_tasks: Mutex::new(Vec::new()),
            }),
        };
        server.serve(listener);
        server
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Delays every answer by `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        *self.inner.delay.lock().unwrap() = delay;
    }

    /// While `hold` is true, requests are received but not answered.
    pub fn hold(&self, hold: bool) {
        self.inner.hold.send_replace(hold);
    }

    /// A snapshot of the counts.
    pub fn counts(&self) -> Counts {
        self.inner.counts.borrow().clone()
    }

    /// Waits (at most `bound`, else panics) until `predicate` holds of the counts.
    pub async fn wait_for(&self, bound: Duration, predicate: impl FnMut(&Counts) -> bool) {
        let mut counts = self.inner.counts.subscribe();
        let waited = tokio::time::timeout(bound, counts.wait_for(predicate)).await;
        match waited {
            Ok(Ok(_)) => {}
            _ => panic!(
                "the server's counts did not reach the expected state within {bound:?}: {:?}",
                self.counts()
            ),
        }
    }

    /// Stops accepting and drops every connection at once (their tasks are aborted, so the
    /// sockets close without any HTTP/2 goodbye). Resolves once all of it is done.
    pub async fn kill(&self) {
        let accept = self.inner.accept_task.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        let connections = std::mem::take(&mut *self.inner.connection_tasks.lock().unwrap());
        for connection in &connections {
            connection.abort();
        }
        for connection in connections {
            let _ = connection.await;
        }
    }

    /// Listens again on the same port (after [`kill`](Self::kill)).
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.inner.addr)
            .await
            .expect("bind the test server again on its port");
        self.serve(listener);
    }

    /// Shuts down every open connection gracefully: the server sends `GOAWAY`, lets the
    /// streams in flight finish, then closes. New connections are still accepted.
    pub fn goaway(&self) {
        self.inner.goaway.send_modify(|n| *n += 1);
    }

    fn serve(&self, listener: TcpListener) {
        let inner = self.inner.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // As any production server: without it, Nagle's algorithm holds the first
                // response on a fresh connection until the client's delayed ACK (about 40 ms).
                let _ = stream.set_nodelay(true);
                inner.counts.send_modify(|c| c.accepted += 1);
                let task = tokio::spawn(serve_connection(inner.clone(), stream));
                inner.connection_tasks.lock().unwrap().push(task);
            }
        });
        *self.inner.accept_task.lock().unwrap() = Some(accept);
    }
}

/// Counts the end of a connection task, however it ends (also when aborted).
struct Ended(Arc<Inner>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.counts.send_modify(|c| c.ended += 1);
    }
}

/// Counts a request out of `in_flight`, however its handler ends.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.counts.send_modify(|c| c.in_flight -= 1);
    }
}

async fn serve_connection(inner: Arc<Inner>, stream: TcpStream) {
    let _ended = Ended(inner.clone());
    let goaway = inner.goaway.subscribe();
    let handler = inner.clone();
    h2serve::until_goaway(
        stream,
        move |request| answer(handler.clone(), request),
        goaway,
    )
    .await;
}

async fn answer(
    inner: Arc<Inner>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read before the request is counted: a test that changes the delay once it sees the
    // request in flight must not change this request's delay.
    let delay = *inner.delay.lock().unwrap();
    inner.counts.send_modify(|c| {
        c.requests += 1;
        c.in_flight += 1;
        c.max_in_flight = c.max_in_flight.max(c.in_flight);
    });
    let _in_flight = InFlight(inner.clone());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut hold = inner.hold.subscribe();
    let _ = hold.wait_for(|hold| !hold).await;
    let body = format!("{} {}", inner.name, request.uri());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

// === SilentServer ===

/// A TCP "server" that accepts, sends one empty HTTP/2 SETTINGS frame (so the client's
/// handshake and preface wait succeed), then reads and discards everything forever: it never
/// answers a request or a ping, and never closes.
pub struct SilentServer {
    pub addr: SocketAddr,
    pub accepted: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = watch::channel(0);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted_tx.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    // Frame header: length 0, type SETTINGS (0x4), flags 0, stream 0.
                    let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
                    if stream.write_all(&settings).await.is_err() {
                        return;
                    }
                    let mut sink = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            // The client closed; keep our side open, never answer.
                            std::future::pending::<()>().await;
                        }
                    }
                    std::future::pending::<()>().await;
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === ClosingListener ===

/// A listener that accepts every TCP connection and closes it at once.
pub struct ClosingListener {
    pub addr: SocketAddr,
    pub accepted: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl ClosingListener {
    /// Drops each accepted connection at once (the kernel sends FIN, or RST if the client's
    /// bytes have already arrived: which one is a race).
    pub async fn start() -> Self {
        Self::spawn(false).await
    }

    /// Resets each accepted connection at once (zero linger: the kernel sends RST). The
    /// client may see the reset while it sets up the socket, while it writes its HTTP/2
    /// preface, or while it waits for the server's: which one is a race.
    pub async fn resetting() -> Self {
        Self::spawn(true).await
    }

    async fn spawn(reset: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = watch::channel(0);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted_tx.send_modify(|accepted| *accepted += 1);
                if reset {
                    let _ = stream.set_zero_linger();
                }
                drop(stream);
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for ClosingListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
