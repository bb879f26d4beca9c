//! An HTTP/2 client over a persistent connection, on loopback, in about 8 seconds.
//!
//! A local hyper HTTP/2 server answers `GET /hello/N`, slowly (200 ms). The client sends a
//! request every 100 ms over `PersistentConnectionLayer::http2(Http2Connector::new())`:
//! one connection, requests multiplexed on it.
//!
//! - At 2.5 s the server says `GOAWAY` on its connections (a graceful restart): the requests
//!   in flight finish on the old connection, the layer reconnects at once, and new requests
//!   go to the new connection.
//! - At 5 s the server dies (its sockets are closed): the requests in flight fail with a
//!   connection error, new requests wait for a connection; at 6 s it is back on the same
//!   port and the waiting requests go through.
//!
//! The events, each failed request, a line per second and a summary are printed.
//!
//! ```text
//! cargo run --example http2
//! ```

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use persistent_connection::{
    BoxError, Event, PersistentConnectionLayer,
    http::{Http2Connection, Http2Connector},
};
use tokio::{
    net::TcpListener,
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::{Instant, interval, timeout},
};
use tower::{Service, ServiceExt};

const REQUESTS: u32 = 80;
const REPLY_DELAY: Duration = Duration::from_millis(200);

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:5.2}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    LazyLock::force(&START);
    let mut server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let address = server.address;
    log!("server listening on {address}");

    let svc = PersistentConnectionLayer::fixed_address(address)
        .server_name("greeter") // requests go to http://greeter/...
        .retry_delay(|| Duration::from_millis(500))
        .on_event(|event: &Event<SocketAddr, Http2Connection<Empty<Bytes>>>| {
            log!("event: {event:?}")
        })
        .http2(Http2Connector::new());
    let handle = svc.handle();

    let counts = Arc::new(Mutex::new([0u32; 3])); // ok, failed, timed out
    let mut requests = JoinSet::new();
    let mut tick = interval(Duration::from_millis(100));
    for n in 1..=REQUESTS {
        tick.tick().await;
        match n {
            25 => {
                log!("** server: GOAWAY (graceful restart)");
                server.goaway();
            }
            50 => {
                log!("** server: killed");
                server.kill();
            }
            60 => {
                server = Server::start(address).await?;
                log!("** server: back on {address}");
            }
            _ => {}
        }
        if n % 10 == 0 {
            let [ok, failed, timed_out] = *counts.lock().unwrap();
            println!(
                "t={}s ok={ok} failed={failed} timed_out={timed_out}",
                n / 10
            );
        }
        let (mut svc, counts) = (svc.clone(), counts.clone());
        requests.spawn(async move {
            let request = Request::get(format!("/hello/{n}"))
                .body(Empty::new())
                .unwrap();
            let outcome = timeout(Duration::from_secs(3), async {
                let response = svc.ready().await?.call(request).await?;
                Ok::<_, BoxError>(response.into_body().collect().await?.to_bytes())
            })
            .await;
            let slot = match outcome {
                Ok(Ok(_)) => 0,
                Ok(Err(error)) => {
                    log!("request {n} failed: {error}");
                    1
                }
                Err(_) => {
                    log!("request {n} timed out");
                    2
                }
            };
            counts.lock().unwrap()[slot] += 1;
        });
    }
    requests.join_all().await;
    let [ok, failed, timed_out] = *counts.lock().unwrap();
    println!("\nsent={REQUESTS} ok={ok} failed={failed} timed_out={timed_out}");
    println!(
        "connections accepted by the server: {}",
        server.accepted_total()
    );
    handle.close().await;
    log!("closed");
    Ok(())
}

/// A hyper HTTP/2 server answering `hello <path>` after [`REPLY_DELAY`].
struct Server {
    address: SocketAddr,
    goaway: watch::Sender<bool>,
    accepted: Arc<Mutex<u32>>,
    task: JoinHandle<()>,
}

static ACCEPTED: LazyLock<Arc<Mutex<u32>>> = LazyLock::new(Arc::default);

impl Server {
    async fn start(address: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let goaway = watch::Sender::new(false);
        let accepted = ACCEPTED.clone();
        let task = tokio::spawn(serve(listener, goaway.subscribe(), accepted.clone()));
        Ok(Self {
            address,
            goaway,
            accepted,
            task,
        })
    }

    /// Sends GOAWAY on every open connection; new connections are still accepted.
    fn goaway(&self) {
        self.goaway.send_replace(true);
    }

    /// Stops accepting and drops every connection.
    fn kill(&self) {
        self.task.abort();
    }

    fn accepted_total(&self) -> u32 {
        *self.accepted.lock().unwrap()
    }
}

async fn serve(listener: TcpListener, goaway: watch::Receiver<bool>, accepted: Arc<Mutex<u32>>) {
    let mut connections = JoinSet::new();
    while let Ok((socket, _)) = listener.accept().await {
        *accepted.lock().unwrap() += 1;
        let mut goaway = goaway.clone();
        goaway.mark_unchanged();
        connections.spawn(async move {
            let hello = service_fn(|request: Request<Incoming>| async move {
                tokio::time::sleep(REPLY_DELAY).await;
                let text = format!("hello {}", request.uri().path());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            });
            let connection = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), hello);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = goaway.changed() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
        while connections.try_join_next().is_some() {}
    }
}
