//! A fault-injecting TCP proxy on 127.0.0.1, in front of one upstream address, for tests on
//! real sockets: [`FaultProxy`]. Its [`Mode`] can be switched at any time, and a switch
//! applies to the connections already open where that makes sense:
//!
//! | mode | new connections | open connections |
//! |---|---|---|
//! | `Forward` | relayed to the upstream | bytes pass both ways |
//! | `Refuse` | refused (`ECONNREFUSED`): the listening socket is closed | still relayed |
//! | `AcceptClose` | accepted, then closed at once (FIN) | closed (FIN to both sides) |
//! | `Reset` | accepted, then reset at once (RST) | reset (RST to both sides) |
//! | `Blackhole` | accepted, upstream dialed, every byte dropped | every byte (and a close) dropped, both ways: a silent, half-open peer; a connection that lost a byte stays silent after the mode changes (its stream cannot resume) |
//! | `Delay(d)` | relayed | each chunk read is held `d` before it is written (latency; throughput is unchanged) |
//! | `Slice(n)` | relayed | each chunk is written in pieces of at most `n` bytes |
//!
//! `Refuse` really stops listening; leaving it binds the same port again (std sets
//! `SO_REUSEADDR` on Unix, so the port's `TIME_WAIT` connections do not block it). Should the
//! port have been taken meanwhile, [`FaultProxy::set_mode`] panics saying so, rather than the
//! test failing in some other way.
#![allow(dead_code, unreachable_pub)]

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

/// What the proxy does to the traffic; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Refuse,
    AcceptClose,
    Reset,
    Blackhole,
    Delay(Duration),
    Slice(usize),
}

/// What the proxy has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// TCP connections accepted so far.
    pub accepted: usize,
    /// Accepted connections not yet closed by the proxy.
    pub open: usize,
    /// Connections the client has closed (seen also while blackholed, when the proxy does
    /// not pass the close on).
    pub closed_by_client: usize,
}

/// A loopback TCP proxy whose faults can be switched at any time; see the module docs.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    counts: Arc<watch::Sender<Counts>>,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free port of 127.0.0.1, in mode `Forward`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            upstream,
            mode: watch::Sender::new(Mode::Forward),
            counts: Arc::new(watch::Sender::new(Counts::default())),
            accept: Mutex::new(None),
            connections: Arc::default(),
        };
        proxy.listen(listener);
        proxy
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of the counts.
    pub fn counts(&self) -> Counts {
        *self.counts.borrow()
    }

    /// Switches to `mode`. Returns once it is in force: after a switch to `Refuse` the port
    /// refuses connections, after one away from it the port accepts again, and after a switch
    /// to `AcceptClose` or `Reset` every connection open before has been closed or reset.
    pub async fn set_mode(&self, mode: Mode) {
        let before = self.mode.send_replace(mode);
        if mode == Mode::Refuse && before != Mode::Refuse {
            let accept = self.accept.lock().unwrap().take();
            if let Some(accept) = accept {
                accept.abort();
                let _ = accept.await; // the listener is closed once the task is gone
            }
        } else if before == Mode::Refuse && mode != Mode::Refuse {
            let listener = std::net::TcpListener::bind(self.addr).unwrap_or_else(|error| {
                panic!("the proxy cannot listen on {} again: {error}", self.addr)
            });
            self.listen(listener);
        }
        if matches!(mode, Mode::AcceptClose | Mode::Reset) {
            self.wait_for(Duration::from_secs(3), |c| c.open == 0).await;
        }
    }

    /// Waits (at most `bound`, else panics) until `predicate` holds of the counts.
    pub async fn wait_for(&self, bound: Duration, predicate: impl FnMut(&Counts) -> bool) {
        let mut counts = self.counts.subscribe();
        if !matches!(
            tokio::time::timeout(bound, counts.wait_for(predicate)).await,
            Ok(Ok(_))
        ) {
            panic!(
                "proxy counts not as expected within {bound:?}: {:?}",
                self.counts()
            );
        }
    }

    fn listen(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let (upstream, mode) = (self.upstream, self.mode.clone());
        let (counts, connections) = (self.counts.clone(), self.connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counts.send_modify(|c| c.accepted += 1);
                // Counted before the task runs, so `open` never misses a connection.
                let open = Open::new(counts.clone());
                let mut connections = connections.lock().unwrap();
                while connections.try_join_next().is_some() {}
                connections.spawn(relay(client, upstream, mode.subscribe(), open));
            }
        });
        *self.accept.lock().unwrap() = Some(accept);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        self.connections.lock().unwrap().abort_all();
    }
}

/// One open connection in the counts, until dropped.
struct Open(Arc<watch::Sender<Counts>>);

impl Open {
    fn new(counts: Arc<watch::Sender<Counts>>) -> Self {
        counts.send_modify(|c| c.open += 1);
        Self(counts)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|c| c.open -= 1);
    }
}

/// Relays one accepted connection according to the mode, until either side closes or the
/// mode closes or resets it.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    open: Open,
) {
    match *mode.borrow_and_update() {
        Mode::Reset => {
            let _ = client.set_zero_linger();
            return;
        }
        Mode::AcceptClose | Mode::Refuse => return,
        _ => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client, server) = (Arc::new(client), Arc::new(server));
    let mut pumps = JoinSet::new();
    let counts = Some(open.0.clone());
    // Once a byte is lost to the blackhole, the connection stays silent: its streams cannot
    // be resumed (real TCP would have resent what a partition dropped).
    let lost = Arc::new(AtomicBool::new(false));
    pumps.spawn(pump(
        client.clone(),
        server.clone(),
        mode.clone(),
        counts,
        lost.clone(),
    ));
    pumps.spawn(pump(
        server.clone(),
        client.clone(),
        mode.clone(),
        None,
        lost,
    ));
    let reset = loop {
        tokio::select! {
            _ = pumps.join_next() => break false,
            changed = mode.changed() => match changed.map(|()| *mode.borrow_and_update()) {
                Ok(Mode::Reset) => break true,
                Ok(Mode::AcceptClose) | Err(_) => break false,
                Ok(_) => {}
            },
        }
    };
    // The pumps hold the sockets: end them, so the sockets close when this returns.
    pumps.abort_all();
    while pumps.join_next().await.is_some() {}
    if reset {
        let _ = (client.set_zero_linger(), server.set_zero_linger());
    }
    drop((client, server));
    drop(open); // counted closed once the sockets are
}

/// Copies `from` to `to` as the mode says; returns when `from` has ended and what it sent
/// is written (except while blackholed: a silent peer does not pass on a close either), or
/// when `to` fails. Reading and writing are separate, so delayed chunks do not hold up the
/// ones behind them: `Delay` adds latency, it does not limit throughput. `from_client`
/// counts the client's close.
async fn pump(
    from: Arc<TcpStream>,
    to: Arc<TcpStream>,
    mode: watch::Receiver<Mode>,
    from_client: Option<Arc<watch::Sender<Counts>>>,
    lost: Arc<AtomicBool>,
) {
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>, usize)>();
    let writer = async move {
        while let Some((due, bytes, size)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if slices(&to, &bytes, size).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = match read(&from, &mut buf).await {
                Ok(n) if n > 0 => n,
                _ => {
                    if let Some(counts) = &from_client {
                        counts.send_modify(|c| c.closed_by_client += 1);
                    }
                    if *mode.borrow() == Mode::Blackhole || lost.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    break;
                }
            };
            let now = Instant::now();
            if lost.load(Ordering::SeqCst) {
                continue;
            }
            let (due, size) = match *mode.borrow() {
                Mode::Blackhole => {
                    lost.store(true, Ordering::SeqCst);
                    continue;
                }
                Mode::Delay(delay) => (now + delay, usize::MAX),
                Mode::Slice(size) => (now, size.max(1)),
                _ => (now, usize::MAX),
            };
            let _ = queue.send((due, buf[..n].to_vec(), size));
        }
        drop(queue); // the writer ends once it has written what is queued
    };
    tokio::pin!(writer);
    tokio::select! {
        () = reader => writer.await,
        () = &mut writer => {}
    }
}

async fn read(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read(buf) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            result => return result,
        }
    }
}

async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Writes `bytes` in pieces of at most `size`, letting the runtime run between pieces so
/// that each goes out on its own (the sockets have `TCP_NODELAY`).
async fn slices(to: &TcpStream, bytes: &[u8], size: usize) -> io::Result<()> {
    for piece in bytes.chunks(size) {
        write_all(to, piece).await?;
        if piece.len() < bytes.len() {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}
