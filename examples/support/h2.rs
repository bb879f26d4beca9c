//! A small hyper HTTP/2 server on loopback, for the examples: [`Server`] answers every request
//! with its name, after an optional delay. It can be killed (it stops accepting and aborts its
//! connections, so their sockets close without any HTTP/2 goodbye, as when a process dies) and
//! started again on the same port.
//!
//! Included with `#[path]` by the examples that need it; not every user uses every item.
#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

/// A hyper HTTP/2 server on a loopback port that answers every request with its name (the
/// body is the name, nothing else).
pub struct Server {
    name: &'static str,
    address: SocketAddr,
    state: Arc<ServerState>,
    /// The accept loop, while running.
    accept: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ServerState {
    /// The connections' tasks: aborted, all of them, by a kill.
    connections: Mutex<JoinSet<()>>,
    /// Requests handled (answered, unless killed meanwhile), over every run of the server.
    served: AtomicU64,
    /// Connections accepted, over every run of the server.
    accepted: AtomicU64,
    /// How long each answer waits, in milliseconds.
    delay_ms: AtomicU64,
}

impl Server {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start(name: &'static str) -> io::Result<Self> {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `address`.
    pub async fn start_on(name: &'static str, address: SocketAddr) -> io::Result<Self> {
        let mut server = Self {
            name,
            address,
            state: Arc::default(),
            accept: None,
        };
        server.listen().await?;
        Ok(server)
    }

    async fn listen(&mut self) -> io::Result<()> {
        let listener = TcpListener::bind(self.address).await?;
        self.address = listener.local_addr()?;
        self.accept = Some(tokio::spawn(accept(
            self.name,
            listener,
            self.state.clone(),
        )));
        Ok(())
    }

    /// The server's name: the body of every answer.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The server's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How many requests it has handled (answered, unless killed meanwhile).
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Delays every answer from now on by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Whether it is running (not killed).
    pub fn is_running(&self) -> bool {
        self.accept.is_some()
    }

    /// Stops accepting and aborts every connection: their sockets close at once, without a
    /// `GOAWAY`, and the requests in flight get no answer. Returns once the listener and the
    /// connections are gone, so the port can be bound again.
    pub async fn kill(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let mut connections = std::mem::take(&mut *self.state.connections.lock().unwrap());
        connections.shutdown().await;
    }

    /// Starts again on the same port after [`kill`](Self::kill).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill().await;
        self.listen().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        // Dropping the set aborts the connections' tasks.
        drop(std::mem::take(&mut *self.state.connections.lock().unwrap()));
    }
}

/// Accepts connections, each served by a task of the server's set.
async fn accept(name: &'static str, listener: TcpListener, state: Arc<ServerState>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let mut connections = state.connections.lock().unwrap();
        while connections.try_join_next().is_some() {}
        connections.spawn(serve(name, socket, state.clone()));
    }
}

/// Serves one connection until it ends.
async fn serve(name: &'static str, socket: TcpStream, state: Arc<ServerState>) {
    let _ = socket.set_nodelay(true);
    let answer = service_fn(move |_: Request<Incoming>| {
        let state = state.clone();
        async move {
            let delay = state.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            state.served.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                name.as_bytes(),
            ))))
        }
    });
    let _ = http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(socket), answer)
        .await;
}
