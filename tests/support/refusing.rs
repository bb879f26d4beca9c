//! Servers on 127.0.0.1 that refuse requests in the ways the replay tests need: [`RawH2`], a
//! raw `h2` server that says goodbye above a stream id, resets streams with `REFUSED_STREAM`,
//! or dies under an accepted stream; [`H1Closer`], an HTTP/1 server that answers the first
//! request of each connection and closes the connection when the second arrives; and
//! [`Streaming`], a hyper HTTP/2 server with a response body the test feeds, told to send
//! `GOAWAY`.
//!
//! Requests carry an `x-request-id` header; answers are `conn=<n> id=<id> body=<body>`, `n`
//! counting the server's connections from 1.
#![allow(dead_code, unreachable_pub)]

#[path = "h2serve.rs"]
mod h2serve;

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use h2::Reason;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// A bound on anything that should happen "at once" on localhost.
pub const GUARD: Duration = Duration::from_secs(10);

/// The request id header.
pub const ID: &str = "x-request-id";

/// A request header that asks [`H1Closer`] to answer with `Connection: close` and close.
pub const CLOSE: &str = "x-close";

/// What a server has seen: requests it processed (its application saw them), and the
/// connections it accepted.
#[derive(Default)]
struct Seen {
    /// (connection, request id) of every request processed.
    processed: Mutex<Vec<(usize, String)>>,
    /// Request ids the server refused.
    refused: Mutex<Vec<String>>,
    accepted: watch::Sender<usize>,
}

impl Seen {
    fn processed(&self, connection: usize, id: &str) {
        self.processed
            .lock()
            .unwrap()
            .push((connection, id.to_owned()));
    }
}

/// The accessors every server here shares.
#[derive(Clone, Default)]
pub struct Record(Arc<Seen>);

impl Record {
    /// (connection, request id) of each request the server processed, in order.
    pub fn processed(&self) -> Vec<(usize, String)> {
        self.0.processed.lock().unwrap().clone()
    }

    /// How many times the server processed request `id`.
    pub fn times_processed(&self, id: &str) -> usize {
        self.processed()
            .iter()
            .filter(|(_, seen)| seen == id)
            .count()
    }

    /// The request ids the server refused, in order.
    pub fn refused(&self) -> Vec<String> {
        self.0.refused.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        *self.0.accepted.borrow()
    }

    /// Waits (at most [`GUARD`], else panics) until `n` connections have been accepted.
    pub async fn wait_accepted(&self, n: usize) {
        let mut accepted = self.0.accepted.subscribe();
        tokio::time::timeout(GUARD, accepted.wait_for(|accepted| *accepted >= n))
            .await
            .unwrap_or_else(|_| panic!("the server did not accept {n} connections in time"))
            .unwrap();
    }

    /// Counts a new connection; returns its number.
    fn accept(&self) -> usize {
        let mut number = 0;
        self.0.accepted.send_modify(|accepted| {
            *accepted += 1;
            number = *accepted;
        });
        number
    }
}

fn request_id<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get(ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

// === RawH2 ===

/// How a [`RawH2`] treats requests.
#[derive(Clone, Debug)]
pub enum Mode {
    /// On the first connection the frames of streams above `last` never reach the server
    /// (as if they arrived after its `GOAWAY`); once it has taken the streams up to `last`
    /// and dropped the `HEADERS` of at least one stream above it, it shuts down gracefully:
    /// `GOAWAY` with last stream id `last`. Later connections answer everything.
    GoawayAbove(u32),
    /// Resets with `REFUSED_STREAM` (unread) the first attempt of each request whose id is
    /// even; answers everything else.
    RefuseEvenOnce,
    /// Reads the first body chunk of each request, then resets it with `REFUSED_STREAM`.
    RefuseAfterData,
    /// On the first connection: takes the first stream (the server may have processed it),
    /// then, if `goaway`, sends `GOAWAY` (graceful: the stream is below the last stream id)
    /// and waits for the client's next connection; then closes the TCP connection without
    /// answering. Later connections answer everything.
    AcceptThenDie { goaway: bool },
}

/// A raw `h2` server; see [`Mode`]. Answers are `conn=<n> id=<id> body=<body>`.
pub struct RawH2 {
    pub addr: SocketAddr,
    pub record: Record,
    task: JoinHandle<()>,
}

impl RawH2 {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Record::default();
        let seen = record.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let number = seen.accept();
                tokio::spawn(serve_h2(seen.clone(), mode.clone(), number, stream));
            }
        });
        Self { addr, record, task }
    }
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_h2(record: Record, mode: Mode, number: usize, stream: TcpStream) {
    let cutoff = match mode {
        Mode::GoawayAbove(last) if number == 1 => Some(last),
        _ => None,
    };
    let dropped = watch::Sender::new(0usize);
    // A second handle on the socket, for a lingering close after a graceful shutdown.
    let Ok((stream, lingering)) = stream
        .into_std()
        .and_then(|std| Ok((TcpStream::from_std(std.try_clone()?)?, std)))
    else {
        return;
    };
    let io = Filter::new(stream, cutoff, dropped.clone());
    let Ok(mut connection) = h2::server::handshake(io).await else {
        return;
    };
    let mut dropped = dropped.subscribe();
    let mut taken = 0u32;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            next = connection.accept() => {
                let Some(Ok((request, respond))) = next else {
                    if shutting_down {
                        drop(connection);
                        linger(lingering).await;
                    }
                    return;
                };
                taken += 1;
                match &mode {
                    Mode::AcceptThenDie { goaway } if number == 1 => {
                        record.0.processed(number, &request_id(&request));
                        if *goaway {
                            connection.graceful_shutdown();
                            // Keep driving the connection (the GOAWAY, the PING) until the
                            // client has come back on a new one.
                            let mut accepted = record.0.accepted.subscribe();
                            let next = async move {
                                let _ = accepted.wait_for(|accepted| *accepted >= 2).await;
                            };
                            tokio::pin!(next);
                            loop {
                                tokio::select! {
                                    _ = &mut next => break,
                                    more = connection.accept() => if more.is_none() { break },
                                }
                            }
                        }
                        // Close the TCP connection under the accepted stream, unanswered.
                        drop(respond);
                        drop(connection);
                        return;
                    }
                    _ => {
                        tokio::spawn(answer_h2(record.clone(), mode.clone(), number, request, respond));
                    }
                }
            }
            _ = async { let _ = dropped.wait_for(|dropped| *dropped >= 1).await; }, if cutoff.is_some_and(|last| taken >= last.div_ceil(2)) && !shutting_down => {
                shutting_down = true;
                connection.graceful_shutdown();
            }
        }
    }
}

/// A lingering close (as nginx's `lingering_close`): h2 has sent its last frames and its FIN;
/// read what the client still sends (bodies of streams above the `GOAWAY`, in flight when
/// it came) until it closes, at most a second. Closing a socket with unread bytes resets the
/// connection, and the client's kernel may then drop the final `GOAWAY` unread.
async fn linger(socket: std::net::TcpStream) {
    let Ok(mut socket) = TcpStream::from_std(socket) else {
        return;
    };
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn answer_h2(
    record: Record,
    mode: Mode,
    number: usize,
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let id = request_id(&request);
    let refuse = match mode {
        Mode::RefuseEvenOnce => {
            let even = id.parse::<u64>().is_ok_and(|id| id % 2 == 0);
            let mut refused = record.0.refused.lock().unwrap();
            let first = !refused.contains(&id);
            if even && first {
                refused.push(id.clone());
            }
            even && first
        }
        _ => false,
    };
    if refuse {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    }
    let mut body = request.into_body();
    let mut received = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
        if matches!(mode, Mode::RefuseAfterData) {
            record.0.refused.lock().unwrap().push(id.clone());
            respond.send_reset(Reason::REFUSED_STREAM);
            return;
        }
    }
    record.0.processed(number, &id);
    let text = format!(
        "conn={number} id={id} body={}",
        String::from_utf8_lossy(&received)
    );
    let Ok(mut send) = respond.send_response(Response::new(()), false) else {
        return;
    };
    let _ = send.send_data(Bytes::from(text), true);
}

/// The read side of an HTTP/2 server connection, with the frames of streams above `cutoff`
/// taken out (counted in `dropped` when they are `HEADERS`).
struct Filter {
    io: TcpStream,
    cutoff: Option<u32>,
    dropped: watch::Sender<usize>,
    /// Client preface bytes still to pass.
    preface: usize,
    /// Bytes read but not yet judged.
    pending: Vec<u8>,
    /// Bytes judged and to pass up.
    ready: Vec<u8>,
}

impl Filter {
    fn new(io: TcpStream, cutoff: Option<u32>, dropped: watch::Sender<usize>) -> Self {
        Self {
            io,
            cutoff,
            dropped,
            preface: 24,
            pending: Vec::new(),
            ready: Vec::new(),
        }
    }

    /// Moves every complete frame of `pending` to `ready`, or drops it.
    fn judge(&mut self) {
        let Some(cutoff) = self.cutoff else {
            self.ready.append(&mut self.pending);
            return;
        };
        loop {
            if self.preface > 0 {
                let take = self.preface.min(self.pending.len());
                self.ready.extend(self.pending.drain(..take));
                self.preface -= take;
                if self.preface > 0 {
                    return;
                }
            }
            if self.pending.len() < 9 {
                return;
            }
            let header = &self.pending[..9];
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            if self.pending.len() < 9 + len {
                return;
            }
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let kind = header[3];
            let frame: Vec<u8> = self.pending.drain(..9 + len).collect();
            if stream > cutoff {
                if kind == 0x1 {
                    self.dropped.send_modify(|dropped| *dropped += 1);
                }
            } else {
                self.ready.extend(frame);
            }
        }
    }
}

impl AsyncRead for Filter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.ready.is_empty() {
                let n = self.ready.len().min(buf.remaining());
                buf.put_slice(&self.ready[..n]);
                self.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    let filled = read.filled().to_vec();
                    self.pending.extend_from_slice(&filled);
                    self.judge();
                }
                other => return other,
            }
        }
    }
}

impl AsyncWrite for Filter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// === H1Closer ===

/// An HTTP/1 server that answers the first request of each connection
/// (`conn=<n> id=<id> body=<body>`, keep-alive; with `Connection: close` and a close if the
/// request has the [`CLOSE`] header) and, when a second request arrives on it, reads it whole
/// and closes the connection without writing a byte.
pub struct H1Closer {
    pub addr: SocketAddr,
    pub record: Record,
    /// (connection, request id) of every request that arrived, answered or not.
    arrived: Arc<Mutex<Vec<(usize, String)>>>,
    task: JoinHandle<()>,
}

impl H1Closer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Record::default();
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let (seen, log) = (record.clone(), arrived.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let number = seen.accept();
                tokio::spawn(serve_h1(seen.clone(), log.clone(), number, stream));
            }
        });
        Self {
            addr,
            record,
            arrived,
            task,
        }
    }

    /// (connection, request id) of every request that arrived, answered or not.
    pub fn arrived(&self) -> Vec<(usize, String)> {
        self.arrived.lock().unwrap().clone()
    }
}

impl Drop for H1Closer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_h1(
    record: Record,
    arrived: Arc<Mutex<Vec<(usize, String)>>>,
    number: usize,
    mut stream: TcpStream,
) {
    let mut buffer = Vec::new();
    for nth in 0.. {
        let Some((id, body, close)) = read_h1_request(&mut stream, &mut buffer).await else {
            return;
        };
        arrived.lock().unwrap().push((number, id.clone()));
        if nth > 0 {
            // The whole request has been read: closing sends FIN, not RST.
            return;
        }
        record.0.processed(number, &id);
        let text = format!("conn={number} id={id} body={body}");
        let connection = if close { "connection: close\r\n" } else { "" };
        let response = format!(
            "HTTP/1.1 200 OK\r\n{connection}content-length: {}\r\n\r\n{text}",
            text.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request (head and `content-length` body): its id, its body, and whether it asks
/// for a close.
async fn read_h1_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Option<(String, String, bool)> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let id = header(ID).unwrap_or_else(|| "-".into());
    let close = header(CLOSE).is_some();
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).to_string();
    buffer.drain(..head_end + length);
    Some((id, body, close))
}

// === Streaming ===

/// A hyper HTTP/2 server: `/stream` answers with a body the test feeds through
/// [`Streaming::feed`]; any other path with `conn=<n> id=<id> body=`. [`goaway`](Self::goaway)
/// shuts every open connection down gracefully.
pub struct Streaming {
    pub addr: SocketAddr,
    pub record: Record,
    feeds: mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>,
    goaway: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Streaming {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Record::default();
        let (feed_tx, feeds) = mpsc::unbounded_channel();
        let goaway = watch::Sender::new(0u64);
        let (seen, shutdown) = (record.clone(), goaway.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let number = seen.accept();
                let (seen, feed_tx) = (seen.clone(), feed_tx.clone());
                let goaway = shutdown.subscribe();
                tokio::spawn(async move {
                    let answer = move |request: Request<Incoming>| {
                        let (seen, feed_tx) = (seen.clone(), feed_tx.clone());
                        async move {
                            let id = request_id(&request);
                            seen.0.processed(number, &id);
                            let body = if request.uri().path() == "/stream" {
                                let (tx, rx) = mpsc::unbounded_channel();
                                let _ = feed_tx.send(tx);
                                Fed::Stream(rx)
                            } else {
                                let text = format!("conn={number} id={id} body=");
                                Fed::Full(Full::new(Bytes::from(text)))
                            };
                            Ok::<_, Infallible>(Response::new(body))
                        }
                    };
                    h2serve::until_goaway(stream, answer, goaway).await;
                });
            }
        });
        Self {
            addr,
            record,
            feeds,
            goaway,
            task,
        }
    }

    /// The feed of the next `/stream` response (waits for its request, at most [`GUARD`]).
    pub async fn feed(&mut self) -> mpsc::UnboundedSender<Bytes> {
        tokio::time::timeout(GUARD, self.feeds.recv())
            .await
            .expect("no /stream request in time")
            .expect("the server is gone")
    }

    /// Shuts every open connection down gracefully (`GOAWAY`, the streams in flight finish).
    pub fn goaway(&self) {
        self.goaway.send_modify(|n| *n += 1);
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response body: whole, or fed chunk by chunk.
enum Fed {
    Full(Full<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(full) => Pin::new(full).poll_frame(cx),
            Self::Stream(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|chunk| Ok(http_body::Frame::data(chunk)))),
        }
    }
}

// === GoawayFirst ===

/// A TCP "server" that sends an empty SETTINGS frame and a `GOAWAY` (last stream id 0,
/// `NO_ERROR`) before anything else, then reads until the client closes.
pub struct GoawayFirst {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GoawayFirst {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
                    let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    if stream
                        .write_all(&[&settings[..], &goaway[..]].concat())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut sink = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for GoawayFirst {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a response body whole, as text.
pub async fn text(response: Response<Incoming>) -> Result<String, persistent_connection::BoxError> {
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}

/// Whether `T` is anywhere in `error`'s source chain.
pub fn find<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        source = error.source();
    }
    None
}
