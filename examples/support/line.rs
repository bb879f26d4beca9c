//! A tiny line protocol over TCP on loopback, for the examples and the tests: a replica
//! [`Server`] that answers `ping N` with `<name>: pong N`, and the client side, a cloneable
//! [`Connection`] made by [`connect`] with a close signal.
//!
//! Included with `#[path]` by the examples and the tests that need real sockets; not every
//! user uses every item.
#![allow(dead_code, unreachable_pub)]

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use persistent_connection::{BoxError, close::CloseReason};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
    task::{JoinHandle, JoinSet},
};
use tower::Service;

// === The client side ===

/// The maker: dials `address` (with `TCP_NODELAY`) and returns the connection.
pub async fn connect(address: SocketAddr) -> io::Result<Connection> {
    let socket = TcpStream::connect(address).await?;
    socket.set_nodelay(true)?;
    Ok(Connection::open(socket, address))
}

/// A request line, and where its reply goes.
type Request = (String, oneshot::Sender<String>);

/// A connection to one server: a cloneable handle to the task that owns the socket. Requests
/// are answered one at a time, in order. Its `poll_ready` is always ready while the socket is
/// open (like an HTTP/2 connection) and fails once it has closed.
#[derive(Clone)]
pub struct Connection {
    peer: SocketAddr,
    requests: mpsc::UnboundedSender<Request>,
    /// Set when the socket task ends: `Ok` if the peer closed the socket, `Err` on an error.
    ended: watch::Receiver<Option<Result<(), Arc<io::Error>>>>,
}

impl Connection {
    fn open(socket: TcpStream, peer: SocketAddr) -> Self {
        let (requests, inbox) = mpsc::unbounded_channel();
        let (end, ended) = watch::channel(None);
        tokio::spawn(async move {
            let result = run_socket(socket, inbox).await;
            end.send_replace(Some(result.map_err(Arc::new)));
        });
        Self {
            peer,
            requests,
            ended,
        }
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The close signal: resolves once the socket task has ended (for
    /// `PersistentConnectionLayer::close_signal`).
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + use<> {
        let mut ended = self.ended.clone();
        async move {
            match ended.wait_for(Option::is_some).await.map(|end| end.clone()) {
                Ok(Some(Err(error))) => CloseReason::Error(Box::new(error)),
                _ => CloseReason::Graceful,
            }
        }
    }
}

impl Service<String> for Connection {
    type Response = String;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

    /// Fails once the socket task has ended: no request goes to a dead connection.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.requests.is_closed() {
            return Poll::Ready(Err("connection closed".into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, line: String) -> Self::Future {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send((line, reply));
        Box::pin(async move {
            sent.map_err(|_| BoxError::from("connection closed"))?;
            answer
                .await
                .map_err(|_| "connection closed before the reply".into())
        })
    }
}

/// Owns the socket: sends the requests and reads their replies one at a time, in order, and
/// between requests watches for the peer closing. Ends when the socket closes or fails, or
/// when every copy of the connection is gone; the requests still queued then fail.
async fn run_socket(
    socket: TcpStream,
    mut requests: mpsc::UnboundedReceiver<Request>,
) -> io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    let mut lines = BufReader::new(reader).lines();
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some((line, reply)) = request else { return Ok(()) };
                writer.write_all(format!("{line}\n").as_bytes()).await?;
                let Some(answer) = lines.next_line().await? else { return Ok(()) };
                let _ = reply.send(answer);
            }
            line = lines.next_line() => match line? {
                None => return Ok(()),
                Some(line) => return Err(io::Error::other(format!("unexpected line {line:?}"))),
            },
        }
    }
}

// === The server side ===

/// A server on a loopback port that answers each `ping N` line with `<name>: pong N`, after
/// an optional delay. It can be killed (stop accepting, close every connection) and
/// restarted on the same port.
pub struct Server {
    name: &'static str,
    address: SocketAddr,
    state: Arc<ServerState>,
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ServerState {
    /// Requests answered, over every run of the server.
    served: AtomicU64,
    /// Connections accepted, over every run of the server.
    accepted: AtomicU64,
    /// How long each reply waits, in milliseconds.
    delay_ms: AtomicU64,
}

impl Server {
    /// Starts a server on a fresh port of 127.0.0.1.
    pub async fn start(name: &'static str) -> io::Result<Self> {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `address`.
    pub async fn start_on(name: &'static str, address: SocketAddr) -> io::Result<Self> {
        let mut server = Self {
            name,
            address,
            state: Arc::default(),
            task: None,
        };
        server.listen().await?;
        Ok(server)
    }

    async fn listen(&mut self) -> io::Result<()> {
        let listener = TcpListener::bind(self.address).await?;
        self.address = listener.local_addr()?;
        self.task = Some(tokio::spawn(serve(self.name, listener, self.state.clone())));
        Ok(())
    }

    /// The server's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The server's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How many requests it has answered.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Delays every reply from now on by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Whether it is running (not killed).
    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Stops accepting and closes every open connection: requests in flight get no reply.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts again on the same port after [`kill`](Self::kill).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        // Let the aborted task drop its listener before the port is bound again.
        tokio::task::yield_now().await;
        self.listen().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Accepts connections. They are tasks of this server task: aborting it drops the `JoinSet`,
/// which aborts them and so closes their sockets.
async fn serve(name: &'static str, listener: TcpListener, state: Arc<ServerState>) {
    let mut connections = JoinSet::new();
    loop {
        if let Ok((socket, _)) = listener.accept().await {
            state.accepted.fetch_add(1, Ordering::SeqCst);
            connections.spawn(answer(name, socket, state.clone()));
        }
        while connections.try_join_next().is_some() {}
    }
}

/// Answers each `ping N` line with `<name>: pong N`.
async fn answer(name: &'static str, socket: TcpStream, state: Arc<ServerState>) -> io::Result<()> {
    socket.set_nodelay(true)?;
    let (reader, mut writer) = socket.into_split();
    let mut lines = BufReader::new(reader).lines();
    while let Some(line) = lines.next_line().await? {
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let n = line.strip_prefix("ping ").unwrap_or(&line);
        writer
            .write_all(format!("{name}: pong {n}\n").as_bytes())
            .await?;
        state.served.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}
