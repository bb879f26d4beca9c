//! Hostile peers on 127.0.0.1, for `tests/hostile_peers.rs`: [`HostileServer`], a raw TCP
//! listener on a thread (and runtime) of its own whose every connection is handed to a
//! scripted behaviour, and the few pieces of HTTP/2 and HTTP/1 such a script needs to be
//! hostile (frame builders, a reader of the client's preface and frames, a detector of the
//! end of an HTTP/1 request head), and a [`Writer`] that counts, trickles and closes.
//!
//! The server runs on its own thread so that the client's allocations, counted per thread
//! by `allocation-counter`, are the client's alone. It counts what it sees: connections
//! accepted, and connections the client has closed (a read of the client's side returned
//! end of file or an error), so a test can tell whether the client leaves sockets behind.
#![allow(dead_code, unreachable_pub)]

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    sync::{mpsc, oneshot},
    time::Instant,
};

/// What a [`HostileServer`] has seen.
#[derive(Debug, Default)]
pub struct Counts {
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// Connections whose client side has closed (end of file or an error on read).
    pub closed_by_client: AtomicUsize,
    /// Bytes the behaviours wrote to clients.
    pub bytes_sent: AtomicU64,
}

impl Counts {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn closed_by_client(&self) -> usize {
        self.closed_by_client.load(Ordering::SeqCst)
    }

    /// Connections accepted and not (yet) closed by the client.
    pub fn open(&self) -> usize {
        self.accepted() - self.closed_by_client()
    }

    /// Bytes sent to clients so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::SeqCst)
    }

    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// A connection handed to a behaviour, with what it needs to report.
pub struct Peer {
    pub stream: TcpStream,
    pub counts: Arc<Counts>,
    /// When the connection was accepted.
    pub accepted_at: Instant,
    /// The times at which clients closed connections (after `accepted_at` of each).
    closes: mpsc::UnboundedSender<Duration>,
}

impl Peer {
    /// Splits the connection: a task reads (and counts the close of) the client's side, with
    /// `read` given each chunk; the write half is returned.
    pub fn split_with(self, read: impl FnMut(&[u8]) + Send + 'static) -> Writer {
        let (reader, half) = self.stream.into_split();
        let (counts, accepted_at, closes) = (self.counts, self.accepted_at, self.closes);
        let writer = Writer {
            half,
            counts: counts.clone(),
        };
        tokio::spawn(async move {
            read_until_closed(reader, read).await;
            counts.closed_by_client.fetch_add(1, Ordering::SeqCst);
            let _ = closes.send(accepted_at.elapsed());
        });
        writer
    }

    /// [`split_with`](Self::split_with), discarding what the client sends.
    pub fn split(self) -> Writer {
        self.split_with(|_| {})
    }

    /// Splits the connection; the client's HTTP/2 frames (after its preface) are parsed and
    /// sent on the returned channel.
    pub fn split_h2(self) -> (Writer, mpsc::UnboundedReceiver<Frame>) {
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let mut parser = FrameParser::default();
        let writer = self.split_with(move |bytes| {
            for frame in parser.push(bytes) {
                let _ = frames_tx.send(frame);
            }
        });
        (writer, frames)
    }

    /// Splits the connection; each time the client has sent the end of an HTTP/1 request
    /// head (a blank line), a `()` is sent on the returned channel.
    pub fn split_h1(self) -> (Writer, mpsc::UnboundedReceiver<()>) {
        let (heads_tx, heads) = mpsc::unbounded_channel();
        let mut tail = Vec::new();
        let writer = self.split_with(move |bytes| {
            tail.extend_from_slice(bytes);
            while let Some(end) = tail.windows(4).position(|w| w == b"\r\n\r\n") {
                tail.drain(..end + 4);
                let _ = heads_tx.send(());
            }
            // Keep only what may start the next blank line.
            let keep = tail.len().min(3);
            tail.drain(..tail.len() - keep);
        });
        (writer, heads)
    }
}

/// The write half of a connection, counting what it sends.
pub struct Writer {
    half: OwnedWriteHalf,
    counts: Arc<Counts>,
}

impl Writer {
    /// Writes `bytes`; false once the client is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        let sent = self.half.write_all(bytes).await.is_ok();
        if sent {
            self.counts.sent(bytes.len());
        }
        sent
    }

    /// Writes `bytes` one byte every `every`; false once the client is gone.
    pub async fn trickle(&mut self, bytes: &[u8], every: Duration) -> bool {
        for byte in bytes {
            tokio::time::sleep(every).await;
            if !self.send(&[*byte]).await {
                return false;
            }
        }
        true
    }

    /// Sends our FIN (the client's side is still read).
    pub async fn close(mut self) {
        let _ = self.half.shutdown().await;
    }
}

/// Keeps the connection open without sending anything more, until the server stops.
pub async fn hold(writer: Writer) {
    let _writer = writer;
    std::future::pending::<()>().await;
}

/// `bytes`, `n` times over.
pub fn repeated(bytes: &[u8], n: usize) -> Vec<u8> {
    bytes.repeat(n)
}

/// Reads `reader` until end of file or an error, showing each chunk to `read`.
async fn read_until_closed(mut reader: impl AsyncRead + Unpin, mut read: impl FnMut(&[u8])) {
    let mut buffer = vec![0u8; 16 * 1024];
    // Bounded by the connection: it ends when the client closes (or the runtime stops).
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read(&buffer[..n]),
        }
    }
}

type Behaviour = Arc<dyn Fn(Peer) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A raw TCP server on 127.0.0.1 that hands each accepted connection to a behaviour, on a
/// thread of its own. Stops (dropping every connection) when dropped.
pub struct HostileServer {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    /// How long after its accept each connection was closed by the client.
    closes: std::sync::Mutex<mpsc::UnboundedReceiver<Duration>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl HostileServer {
    /// Starts a server whose connections are each served by `behaviour` (in a task of their
    /// own, on the server's runtime).
    pub fn start<F, Fut>(behaviour: F) -> Self
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let behaviour: Behaviour = Arc::new(move |peer| Box::pin(behaviour(peer)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let (closes_tx, closes) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let served = counts.clone();
        let thread = thread::Builder::new()
            .name("hostile-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else {
                                continue;
                            };
                            served.accepted.fetch_add(1, Ordering::SeqCst);
                            let peer = Peer {
                                stream,
                                counts: served.clone(),
                                accepted_at: Instant::now(),
                                closes: closes_tx.clone(),
                            };
                            tokio::spawn(behaviour(peer));
                        }
                    };
                    tokio::select! {
                        () = accept => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection task, and with it its socket.
            })
            .unwrap();
        Self {
            addr,
            counts,
            closes: std::sync::Mutex::new(closes),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// How long after its accept each connection closed by the client so far was closed.
    pub fn lifetimes(&self) -> Vec<Duration> {
        let mut closes = self.closes.lock().unwrap();
        let mut lifetimes = Vec::new();
        while let Ok(lived) = closes.try_recv() {
            lifetimes.push(lived);
        }
        lifetimes
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// === HTTP/2 ===

/// The client's connection preface (RFC 9113, 3.4).
pub const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// The SETTINGS parameters (RFC 9113, 6.5.2).
pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const ENABLE_PUSH: u16 = 0x2;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const MAX_FRAME_SIZE: u16 = 0x5;
pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// One frame: header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "a frame's length has 24 bits");
    let mut frame = Vec::with_capacity(9 + len);
    frame.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A SETTINGS frame with `settings`.
pub fn settings(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(settings.len() * 6);
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// The empty SETTINGS frame: a server's preface with every default.
pub fn server_preface() -> Vec<u8> {
    settings(&[])
}

/// A GOAWAY frame.
pub fn goaway(last_stream: u32, error_code: u32, debug: &[u8]) -> Vec<u8> {
    let mut payload = last_stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&error_code.to_be_bytes());
    payload.extend_from_slice(debug);
    frame(GOAWAY, 0, 0, &payload)
}

/// A response without a body to the request on `stream`: `:status: 200` (the static table's
/// entry 8), ending the stream.
pub fn answer(stream: u32) -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &[0x88])
}

/// A client frame, as the server read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub len: usize,
}

/// Parses the client's side: its preface, then frame headers (payloads skipped).
#[derive(Debug, Default)]
pub struct FrameParser {
    preface: usize,
    header: Vec<u8>,
    skip: usize,
}

impl FrameParser {
    /// The frames whose header completed in `bytes`.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            if self.preface < CLIENT_PREFACE.len() {
                let take = (CLIENT_PREFACE.len() - self.preface).min(bytes.len());
                self.preface += take;
                bytes = &bytes[take..];
            } else if self.skip > 0 {
                let take = self.skip.min(bytes.len());
                self.skip -= take;
                bytes = &bytes[take..];
            } else {
                let take = (9 - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() == 9 {
                    let h = std::mem::take(&mut self.header);
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    self.skip = len;
                    frames.push(Frame {
                        kind: h[3],
                        flags: h[4],
                        stream,
                        len,
                    });
                }
            }
        }
        frames
    }
}

/// Waits (at most `bound`) for the client's next `HEADERS` frame: a request; returns its
/// stream. `None` if the client closed, or nothing came within the bound.
pub async fn next_request(
    frames: &mut mpsc::UnboundedReceiver<Frame>,
    bound: Duration,
) -> Option<u32> {
    let deadline = Instant::now() + bound;
    loop {
        let frame = tokio::time::timeout_at(deadline, frames.recv())
            .await
            .ok()??;
        if frame.kind == HEADERS {
            return Some(frame.stream);
        }
    }
}

/// The streams of the requests (`HEADERS` frames) the client has sent since the last look,
/// without waiting.
pub fn requests_so_far(frames: &mut mpsc::UnboundedReceiver<Frame>) -> Vec<u32> {
    let mut streams = Vec::new();
    while let Ok(frame) = frames.try_recv() {
        if frame.kind == HEADERS {
            streams.push(frame.stream);
        }
    }
    streams
}
