//! Deterministic network simulations (turmoil): the persistent connection survives a network
//! partition, a blackholed link and a server crash and restart over simulated TCP, and a
//! seed replays the same run.
//!
//! Every host of a turmoil simulation runs on its own current-thread Tokio runtime with paused
//! time, so the crate's timers (retry delay, connect timeout) run on simulated time, and a
//! simulated run of seven seconds takes about a tenth of a second in a debug build.
//!
//! The client side is a small line protocol written here over `turmoil::net::TcpStream` (the
//! crate's own HTTP connectors dial with tokio's `TcpStream`, which turmoil does not
//! simulate): a server host answers `ping N` with `server: pong N`, and a cloneable
//! [`Connection`] pipelines requests over one socket, fails every outstanding request when
//! no reply comes within [`REPLY_TIMEOUT`] (a heartbeat keeps an idle connection checked),
//! and offers the close signal the layer uses to notice a dead connection without a request.
//!
//! Turmoil 0.7.2 behaviours these tests depend on:
//! - A SYN sent across a `partition` is dropped *with* the one-shot channel that carries the
//!   SYN-ACK, so the connect fails at once with `ConnectionRefused`; it does not hang. A link
//!   under `hold` queues the SYN instead: the connect never completes by itself (no SYN
//!   retransmission or timeout is modelled), so only the layer's connect timeout ends it.
//!   That is how these tests blackhole a link.
//! - Segments of an established stream are dropped across a partition (or held by `hold`):
//!   a half-open connection that only a reply deadline or heartbeat can detect.
//! - `Sim::crash` drops the host's runtime: its sockets send FIN, or RST when they hold
//!   unread data (RFC 9293 §3.10.4), so the client learns of the crash within one link
//!   latency. Messages to a host whose software is not running are not delivered until it
//!   is bounced, so a connect to a crashed host hangs like a blackhole (no RST), and at the
//!   bounce its queued SYN reaches a host whose new software has not bound its port yet:
//!   refused.
//! - `TcpStream::set_nodelay` exists but does nothing (no Nagle delay is simulated).

use std::{
    collections::VecDeque,
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use persistent_connection::{
    BoxError, Event, PersistentConnection, PersistentConnectionLayer, close::CloseReason,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
    time::{Instant, sleep, sleep_until, timeout},
};
use tower::{Layer, Service, ServiceExt, service_fn};
use turmoil::net::{TcpListener, TcpStream};

// === Timings (simulated time) ===

/// The port the server listens on.
const PORT: u16 = 9000;
/// The layer's retry delay (randomized by the default ±30 % jitter, seeded).
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// The layer's connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection whose oldest request (or heartbeat) has had no reply for this long is dead.
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// An idle connection sends a heartbeat after this long without traffic.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
/// How long the server takes to answer each line, so that requests are always in flight.
const SERVE_DELAY: Duration = Duration::from_millis(100);
/// The client starts a request this often.
const REQUEST_EVERY: Duration = Duration::from_millis(50);
/// Each request, waiting for a connection included, is bounded by this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The client sends requests for this long, then waits for the last ones and closes.
const SEND_FOR: Duration = Duration::from_millis(6500);
/// turmoil's default link latency is at most 100 ms each way.
const MAX_LATENCY: Duration = Duration::from_millis(100);
/// Two link latencies and the server's delay, plus delivery at step boundaries.
const MAX_ROUND_TRIP: Duration = Duration::from_millis(320);
/// The simulation's step: messages are delivered at step boundaries (timers stay exact).
/// Larger than turmoil's 1 ms default, so that a simulated run stays fast in a debug build.
const TICK: Duration = Duration::from_millis(5);
/// Slack for message delivery at step boundaries.
const TICK_SLACK: Duration = Duration::from_millis(10);
/// The seeds every scenario runs with.
const SEEDS: [u64; 5] = [1, 7, 42, 1234, 0xdead_beef];

/// The shortest randomized retry delay (-30 %).
const MIN_DELAY: Duration = Duration::from_millis(140);
/// The longest randomized retry delay (+30 %).
const MAX_DELAY: Duration = Duration::from_millis(260);

// === The server host ===

/// Answers each `ping N` line with `server: pong N`, [`SERVE_DELAY`] after it arrived, in
/// order. Restarted from scratch by `Sim::bounce`.
async fn server() -> turmoil::Result {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        tokio::spawn(answer(socket));
    }
}

async fn answer(socket: TcpStream) -> io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    // The reader stamps each line with its due time and the writer sends the replies when
    // due: requests are pipelined, and the answers keep their order.
    let (due, mut replies) = mpsc::unbounded_channel::<(Instant, String)>();
    let writing = tokio::spawn(async move {
        while let Some((at, reply)) = replies.recv().await {
            sleep_until(at).await;
            writer.write_all(reply.as_bytes()).await?;
        }
        io::Result::Ok(())
    });
    let mut lines = BufReader::new(reader).lines();
    while let Some(line) = lines.next_line().await? {
        let n = line.strip_prefix("ping ").unwrap_or(&line);
        let _ = due.send((Instant::now() + SERVE_DELAY, format!("server: pong {n}\n")));
    }
    drop(due);
    writing.await.map_err(io::Error::other)?
}

// === The client's connection ===

/// A request line, and where its reply goes.
type Request = (String, oneshot::Sender<String>);

/// A connection to the server: a cloneable handle to the task that owns the socket. Its
/// `poll_ready` fails once the socket task has ended.
#[derive(Clone, Debug)]
struct Connection {
    requests: mpsc::UnboundedSender<Request>,
    /// Set when the socket task ends: `Ok` for a clean close with nothing outstanding.
    ended: watch::Receiver<Option<Result<(), Arc<io::Error>>>>,
}

impl Connection {
    /// The maker's work: dials `address` with turmoil's `TcpStream`. When the socket task
    /// ends, it records why in `ends`.
    async fn connect(address: SocketAddr, ends: Shared<(Duration, String)>) -> io::Result<Self> {
        let socket = TcpStream::connect(address).await?;
        // A no-op in turmoil, kept for parity with a real client.
        socket.set_nodelay(true)?;
        let (requests, inbox) = mpsc::unbounded_channel();
        let (end, ended) = watch::channel(None);
        tokio::spawn(async move {
            let result = run_socket(socket, inbox).await;
            let why = match &result {
                Ok(()) => "closed".to_owned(),
                Err(error) => error.to_string(),
            };
            ends.lock().unwrap().push((now(), why));
            end.send_replace(Some(result.map_err(Arc::new)));
        });
        Ok(Self { requests, ended })
    }

    /// The close signal: resolves once the socket task has ended.
    fn closed(&self) -> impl Future<Output = CloseReason> + Send + use<> {
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
                .map_err(|_| "connection lost before the reply".into())
        })
    }
}

/// Owns the socket: writes requests as they come, matches replies to them in order, and
/// declares the connection dead when the oldest outstanding line has had no reply for
/// [`REPLY_TIMEOUT`]. After [`HEARTBEAT_EVERY`] without traffic it sends a heartbeat, so a
/// dead idle connection is noticed too. Ends (failing every outstanding request) when the
/// socket closes or fails, or when every copy of the connection is gone.
async fn run_socket(
    socket: TcpStream,
    mut requests: mpsc::UnboundedReceiver<Request>,
) -> io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    let mut lines = BufReader::new(reader).lines();
    let mut outstanding: VecDeque<(Instant, Option<oneshot::Sender<String>>)> = VecDeque::new();
    let mut quiet_since = Instant::now();
    loop {
        let wake_at = match outstanding.front() {
            Some((sent, _)) => *sent + REPLY_TIMEOUT,
            None => quiet_since + HEARTBEAT_EVERY,
        };
        // `biased`: no random branch choice, so a seeded simulation replays exactly.
        let (line, reply) = tokio::select! {
            biased;
            line = lines.next_line() => {
                let Some(line) = line? else {
                    return match outstanding.len() {
                        0 => Ok(()),
                        n => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("peer closed with {n} replies outstanding"),
                        )),
                    };
                };
                let Some((_, reply)) = outstanding.pop_front() else {
                    return Err(io::Error::other(format!("unexpected line {line:?}")));
                };
                if let Some(reply) = reply {
                    let _ = reply.send(line);
                }
                quiet_since = Instant::now();
                continue;
            }
            request = requests.recv() => match request {
                None => return Ok(()),
                Some((line, reply)) => (line, Some(reply)),
            },
            () = sleep_until(wake_at) => {
                if !outstanding.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no reply within {REPLY_TIMEOUT:?}"),
                    ));
                }
                ("ping heartbeat".to_owned(), None)
            }
        };
        // turmoil's flow control never returns the credit of a segment dropped by a
        // partition: bound the write too, so a long outage cannot wedge this task.
        timeout(
            REPLY_TIMEOUT,
            writer.write_all(format!("{line}\n").as_bytes()),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write blocked"))??;
        outstanding.push_back((Instant::now(), reply));
    }
}

// === The simulation ===

/// A fault the simulation injects at a given simulated time.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Drop every message between client and server.
    Partition,
    Repair,
    /// Queue every message between client and server (a blackhole that can be undone).
    Hold,
    Release,
    /// Stop the server host's software: its sockets close, and messages to it wait for the
    /// bounce.
    Crash,
    /// Restart the server host's software.
    Bounce,
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// The right reply.
    Ok,
    /// A reply for another request: must never happen.
    WrongReply(String),
    /// Sent, then failed with this error.
    Failed(String),
    /// `poll_ready` failed: must never happen before close.
    ReadyFailed(String),
    /// No connection came within the request's timeout (the default wait-for-ready).
    NotConnected,
    /// Sent, then the request's timeout fired after waiting this long for the reply.
    NoReply(Duration),
}

#[derive(Clone, Debug, PartialEq)]
struct RequestRecord {
    n: u64,
    started: Duration,
    ended: Duration,
    outcome: Outcome,
}

/// Everything a run recorded, with simulated times.
#[derive(Clone, Debug, Default, PartialEq)]
struct Run {
    /// The layer's events.
    events: Vec<(Duration, String)>,
    /// When each connection's socket task ended, and why.
    socket_ends: Vec<(Duration, String)>,
    /// The start of every connect attempt that reached the maker.
    dials: Vec<Duration>,
    requests: Vec<RequestRecord>,
}

type Shared<T> = Arc<Mutex<Vec<T>>>;

fn now() -> Duration {
    turmoil::sim_elapsed().expect("called on a simulated host")
}

/// Runs the client against the server for [`SEND_FOR`], injecting `faults` at their times,
/// with `seed` for both turmoil's and the layer's random sources.
fn simulate(seed: u64, faults: &[(Duration, Fault)]) -> Run {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(TICK)
        .simulation_duration(SEND_FOR + REQUEST_TIMEOUT + Duration::from_secs(5))
        .build();
    sim.host("server", server);

    let events: Shared<(Duration, String)> = Shared::default();
    let dials: Shared<Duration> = Shared::default();
    let socket_ends: Shared<(Duration, String)> = Shared::default();
    let requests: Shared<RequestRecord> = Shared::default();
    let recorder = Recorder {
        events: events.clone(),
        dials: dials.clone(),
        socket_ends: socket_ends.clone(),
        requests: requests.clone(),
    };
    sim.client("client", client(seed, recorder));

    let mut faults: VecDeque<_> = faults.iter().copied().collect();
    loop {
        while let Some(&(at, fault)) = faults.front() {
            if sim.elapsed() < at {
                break;
            }
            faults.pop_front();
            match fault {
                Fault::Partition => sim.partition("client", "server"),
                Fault::Repair => sim.repair("client", "server"),
                Fault::Hold => sim.hold("client", "server"),
                Fault::Release => sim.release("client", "server"),
                Fault::Crash => sim.crash("server"),
                Fault::Bounce => sim.bounce("server"),
            }
        }
        if sim.step().expect("the simulation fails") {
            break;
        }
    }
    assert!(faults.is_empty(), "the client ended before every fault");
    fn take<T>(v: &Mutex<Vec<T>>) -> Vec<T> {
        std::mem::take(&mut *v.lock().unwrap())
    }
    Run {
        events: take(&events),
        socket_ends: take(&socket_ends),
        dials: take(&dials),
        requests: take(&requests),
    }
}

/// Where the client records what happens.
struct Recorder {
    events: Shared<(Duration, String)>,
    dials: Shared<Duration>,
    socket_ends: Shared<(Duration, String)>,
    requests: Shared<RequestRecord>,
}

async fn client(seed: u64, recorder: Recorder) -> turmoil::Result {
    let Recorder {
        events,
        dials,
        socket_ends,
        requests,
    } = recorder;
    let maker = service_fn(move |address: SocketAddr| {
        dials.lock().unwrap().push(now());
        Connection::connect(address, socket_ends.clone())
    });
    let svc = PersistentConnectionLayer::new(|| async {
        // Re-resolved before every attempt.
        Ok::<_, BoxError>(SocketAddr::from((turmoil::lookup("server"), PORT)))
    })
    .server_name("server")
    .retry_delay(|| RETRY_DELAY)
    .connect_timeout(CONNECT_TIMEOUT)
    .rng_seed(seed)
    .close_signal(Connection::closed)
    .on_event(move |event: &Event<SocketAddr, Connection>| {
        let text = match event {
            Event::ObtainedAddress(address) => format!("Address({address})"),
            Event::FailedToConnect(error) => format!("Failed({:?}: {error})", error.kind()),
            other => other.name().to_owned(),
        };
        events.lock().unwrap().push((now(), text));
    })
    .layer(maker);

    let mut running = JoinSet::new();
    let start = Instant::now();
    for n in 0u32.. {
        let at = start + REQUEST_EVERY * n;
        if at > start + SEND_FOR {
            break;
        }
        sleep_until(at).await;
        running.spawn(request(svc.clone(), u64::from(n)));
    }
    while let Some(record) = running.join_next().await {
        requests.lock().unwrap().push(record?);
    }
    requests.lock().unwrap().sort_by_key(|r| r.n);
    svc.handle().close().await;
    Ok(())
}

/// Sends `ping n`, bounded by [`REQUEST_TIMEOUT`] (waiting for a connection included).
async fn request(mut svc: PersistentConnection<Connection>, n: u64) -> RequestRecord {
    let started = now();
    let sent = Mutex::new(None);
    let result = timeout(REQUEST_TIMEOUT, async {
        if let Err(error) = svc.ready().await {
            return Err(Outcome::ReadyFailed(error.to_string()));
        }
        *sent.lock().unwrap() = Some(now());
        svc.call(format!("ping {n}"))
            .await
            .map_err(|error| Outcome::Failed(error.to_string()))
    })
    .await;
    let outcome = match result {
        Ok(Ok(reply)) if reply == format!("server: pong {n}") => Outcome::Ok,
        Ok(Ok(reply)) => Outcome::WrongReply(reply),
        Ok(Err(outcome)) => outcome,
        Err(_) => match *sent.lock().unwrap() {
            Some(sent) => Outcome::NoReply(now() - sent),
            None => Outcome::NotConnected,
        },
    };
    RequestRecord {
        n,
        started,
        ended: now(),
        outcome,
    }
}

// === Queries on a run ===

impl Run {
    /// The times of the events whose text starts with `prefix`.
    fn times(&self, prefix: &str) -> Vec<Duration> {
        self.events
            .iter()
            .filter(|(_, text)| text.starts_with(prefix))
            .map(|(at, _)| *at)
            .collect()
    }

    /// The texts of the events in `[from, to)`.
    fn texts_between(&self, from: Duration, to: Duration) -> Vec<&str> {
        self.events
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|(_, text)| text.as_str())
            .collect()
    }

    /// The only event whose text starts with `prefix` in `[from, to)`.
    fn only(&self, prefix: &str, from: Duration, to: Duration) -> Duration {
        let times: Vec<_> = self
            .times(prefix)
            .into_iter()
            .filter(|at| (from..to).contains(at))
            .collect();
        assert_eq!(
            times.len(),
            1,
            "expected one {prefix} in {from:?}..{to:?}: {:#?}",
            self.events
        );
        times[0]
    }

    /// The only socket end in `[from, to)`: when, and why.
    fn socket_end(&self, from: Duration, to: Duration) -> (Duration, &str) {
        let ends: Vec<_> = self
            .socket_ends
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .collect();
        assert_eq!(
            ends.len(),
            1,
            "one socket end in {from:?}..{to:?}: {ends:?}"
        );
        (ends[0].0, &ends[0].1)
    }

    /// The dial times in `[from, to)`.
    fn dials_between(&self, from: Duration, to: Duration) -> Vec<Duration> {
        self.dials
            .iter()
            .copied()
            .filter(|at| (from..to).contains(at))
            .collect()
    }

    fn count(&self, outcome: impl Fn(&Outcome) -> bool) -> usize {
        self.requests.iter().filter(|r| outcome(&r.outcome)).count()
    }

    /// Nothing that must never happen: no request got another request's reply, `poll_ready`
    /// never failed (the layer is closed only at the end), every request ended within its
    /// timeout, and none sat on a connection without a reply: a request that ran out of
    /// time after being sent was sent less than one round trip before its timeout.
    fn assert_no_hang_or_mixup(&self) {
        for r in &self.requests {
            assert!(
                !matches!(r.outcome, Outcome::WrongReply(_) | Outcome::ReadyFailed(_)),
                "request {r:?}"
            );
            if let Outcome::NoReply(waited) = r.outcome {
                assert!(waited < MAX_ROUND_TRIP, "request {r:?}");
            }
            assert!(r.ended - r.started <= REQUEST_TIMEOUT + TICK_SLACK, "{r:?}");
        }
        assert_eq!(
            self.requests.len(),
            usize::try_from(SEND_FOR.as_millis() / REQUEST_EVERY.as_millis()).unwrap() + 1,
            "every request has a record"
        );
    }

    /// Every request started in `[from, to)` succeeded.
    fn assert_all_ok_between(&self, from: Duration, to: Duration) {
        let started: Vec<_> = self
            .requests
            .iter()
            .filter(|r| (from..to).contains(&r.started))
            .collect();
        assert!(
            !started.is_empty(),
            "no request started in {from:?}..{to:?}"
        );
        for r in started {
            assert_eq!(r.outcome, Outcome::Ok, "request {r:?}");
        }
    }

    /// Successive dials in `[from, to)` are spaced by `min..=max`.
    fn assert_dial_gaps(&self, from: Duration, to: Duration, min: Duration, max: Duration) {
        let dials = self.dials_between(from, to);
        for pair in dials.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                (min..=max).contains(&gap),
                "dial gap {gap:?} outside {min:?}..={max:?}: dials {dials:?}"
            );
        }
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

// === Scenario: partition, then repair ===

const PARTITION_AT: Duration = Duration::from_secs(2);
const REPAIR_AT: Duration = Duration::from_secs(5);

fn partition_run(seed: u64) -> Run {
    simulate(
        seed,
        &[(PARTITION_AT, Fault::Partition), (REPAIR_AT, Fault::Repair)],
    )
}

/// A partition of 3 s is survived: requests on the cut connection fail at the reply
/// deadline (none hangs), the connection is declared dead and `Disconnected` follows, the
/// reconnect starts at once and then retries every randomized retry delay against refused
/// connects (reported once per cycle), and once the link is repaired the client reconnects
/// within one retry delay and every request succeeds again.
#[test]
fn partition_is_survived_and_requests_succeed_again_after_repair() {
    for seed in SEEDS {
        let run = partition_run(seed);
        run.assert_no_hang_or_mixup();

        // Before: one connection, every request answered.
        let connected = run.times("Connected");
        assert!(
            connected[0] <= MAX_LATENCY + TICK_SLACK,
            "seed {seed}: {:#?}",
            run.events
        );
        run.assert_all_ok_between(Duration::ZERO, PARTITION_AT - MAX_ROUND_TRIP);

        // The cut connection is declared dead by the reply deadline of the requests in
        // flight, and `Disconnected` follows at once (through the close signal or the next
        // request's `poll_ready`, whichever the driver sees first).
        let (died, why) = run.socket_end(PARTITION_AT, REPAIR_AT);
        assert_eq!(why, "no reply within 500ms", "seed {seed}");
        assert!(
            died <= PARTITION_AT + REPLY_TIMEOUT + TICK_SLACK,
            "seed {seed}"
        );
        let disconnected = run.only("Disconnected", PARTITION_AT, REPAIR_AT);
        assert_eq!(disconnected, died, "seed {seed}: {:#?}", run.events);
        // Only requests in flight on the cut connection failed, with the connection's error.
        for r in &run.requests {
            if let Outcome::Failed(error) = &r.outcome {
                assert!(
                    r.started >= PARTITION_AT - MAX_ROUND_TRIP && r.ended == disconnected,
                    "seed {seed}: {r:?}"
                );
                assert_eq!(error, "connection lost before the reply");
            }
        }
        assert!(run.count(|o| matches!(o, Outcome::Failed(_))) >= 1);

        // The connection lived longer than the retry delay: the first reconnect is at once.
        // Across the partition every attempt is refused at once (turmoil drops the SYN with
        // its SYN-ACK channel), so attempts are spaced by the randomized retry delay, and the
        // identical failures are reported once in the cycle.
        let dials = run.dials_between(disconnected, REPAIR_AT);
        assert_eq!(dials[0], disconnected, "seed {seed}: immediate reconnect");
        assert!(
            dials.len() >= 10,
            "seed {seed}: 2.5 s of retries every 140..260 ms: {dials:?}"
        );
        run.assert_dial_gaps(disconnected, REPAIR_AT, MIN_DELAY, MAX_DELAY + TICK_SLACK);
        let server = SocketAddr::from((Ipv4Addr::new(192, 168, 0, 1), PORT));
        assert_eq!(
            run.texts_between(disconnected, REPAIR_AT),
            [
                "Disconnected".to_owned(),
                "AttemptingToConnect".to_owned(),
                format!("Address({server})"),
                format!("Failed(Connect: connect failed: {server})"),
            ],
            "seed {seed}"
        );

        // After the repair: reconnected at the next attempt, and requests succeed again.
        let reconnected = run.only("Connected", REPAIR_AT, SEND_FOR);
        assert!(
            reconnected <= REPAIR_AT + MAX_DELAY + MAX_LATENCY + TICK_SLACK,
            "seed {seed}: {:#?}",
            run.events
        );
        // Requests that waited for the connection past their timeout were started during
        // the outage; those started late enough waited and were then served.
        for r in &run.requests {
            if r.outcome == Outcome::NotConnected {
                assert!(
                    r.started >= disconnected - REPLY_TIMEOUT
                        && r.started + REQUEST_TIMEOUT < reconnected + TICK_SLACK,
                    "seed {seed}: {r:?}"
                );
            }
        }
        assert!(run.count(|o| *o == Outcome::NotConnected) >= 1);
        run.assert_all_ok_between(
            reconnected + MAX_ROUND_TRIP - REQUEST_TIMEOUT,
            SEND_FOR + ms(1),
        );
        assert_eq!(connected.len(), 2, "seed {seed}: {:#?}", run.events);
    }
}

// === Scenario: blackholed link ===

const HOLD_AT: Duration = Duration::from_secs(2);
const RELEASE_AT: Duration = Duration::from_secs(5);

fn blackhole_run(seed: u64) -> Run {
    simulate(
        seed,
        &[(HOLD_AT, Fault::Hold), (RELEASE_AT, Fault::Release)],
    )
}

/// While the link is blackholed (turmoil `hold`: SYNs and segments vanish into a queue),
/// the half-open connection is declared dead by the reply deadline, and every connect
/// attempt hangs until the layer's connect timeout ends it: `FailedToConnect` of kind
/// `Timeout` (reported once for the cycle), attempts exactly one connect timeout apart (the
/// retry timer, armed before the attempt, has long expired). When the link comes back the
/// pending attempt completes and requests succeed again.
#[test]
fn blackholed_link_ends_each_attempt_at_the_connect_timeout() {
    for seed in SEEDS {
        let run = blackhole_run(seed);
        run.assert_no_hang_or_mixup();
        run.assert_all_ok_between(Duration::ZERO, HOLD_AT - MAX_ROUND_TRIP);

        let disconnected = run.only("Disconnected", HOLD_AT, RELEASE_AT);
        assert!(
            disconnected <= HOLD_AT + REPLY_TIMEOUT + TICK_SLACK,
            "seed {seed}: {:#?}",
            run.events
        );

        // Each attempt lasts the connect timeout; the next starts right after.
        let dials = run.dials_between(disconnected, RELEASE_AT);
        assert_eq!(dials[0], disconnected, "seed {seed}: immediate reconnect");
        assert!(dials.len() >= 3, "seed {seed}: {dials:?}");
        run.assert_dial_gaps(
            disconnected,
            RELEASE_AT,
            CONNECT_TIMEOUT,
            CONNECT_TIMEOUT + TICK_SLACK,
        );
        let failed = run.only("Failed(", disconnected, RELEASE_AT);
        assert!(
            (dials[0] + CONNECT_TIMEOUT..=dials[0] + CONNECT_TIMEOUT + TICK_SLACK)
                .contains(&failed),
            "seed {seed}: {:#?}",
            run.events
        );
        assert!(
            run.texts_between(failed, failed + ms(1))
                .contains(&"Failed(Timeout: connect attempt timed out after 1s while connecting)"),
            "seed {seed}: {:#?}",
            run.events
        );

        // The attempt in flight at the release gets its SYN through.
        let reconnected = run.only("Connected", RELEASE_AT, SEND_FOR);
        assert!(
            reconnected <= RELEASE_AT + MAX_ROUND_TRIP,
            "seed {seed}: {:#?}",
            run.events
        );
        assert!(run.count(|o| *o == Outcome::NotConnected) >= 1);
        run.assert_all_ok_between(
            reconnected + MAX_ROUND_TRIP - REQUEST_TIMEOUT,
            SEND_FOR + ms(1),
        );
    }
}

// === Scenario: idle connection cut ===

/// A connection cut while idle is noticed without any request: the connection's heartbeat
/// gets no reply, its close signal fires, and the driver reports `Disconnected` and starts
/// reconnecting on its own (no request ever polls the service).
#[test]
fn idle_connection_cut_by_a_partition_is_noticed_without_a_request() {
    const CUT_AT: Duration = Duration::from_secs(1);
    for seed in SEEDS {
        let mut sim = turmoil::Builder::new()
            .rng_seed(seed)
            .tick_duration(TICK)
            .simulation_duration(Duration::from_secs(10))
            .build();
        sim.host("server", server);
        let events: Shared<(Duration, String)> = Shared::default();
        let socket_ends: Shared<(Duration, String)> = Shared::default();
        let (recorded, ends) = (events.clone(), socket_ends.clone());
        sim.client("client", async move {
            let svc = PersistentConnectionLayer::new(|| async {
                Ok::<_, BoxError>(SocketAddr::from((turmoil::lookup("server"), PORT)))
            })
            .retry_delay(|| RETRY_DELAY)
            .connect_timeout(CONNECT_TIMEOUT)
            .rng_seed(seed)
            .close_signal(Connection::closed)
            .on_event(move |event: &Event<SocketAddr, Connection>| {
                recorded
                    .lock()
                    .unwrap()
                    .push((now(), event.name().to_owned()));
            })
            .layer(service_fn(move |address| {
                Connection::connect(address, ends.clone())
            }));
            sleep(CUT_AT).await;
            turmoil::partition("client", "server");
            sleep(Duration::from_secs(2)).await;
            svc.handle().close().await;
            Ok(())
        });
        sim.run().expect("the simulation fails");

        let run = Run {
            events: std::mem::take(&mut *events.lock().unwrap()),
            socket_ends: std::mem::take(&mut *socket_ends.lock().unwrap()),
            ..Run::default()
        };
        // The heartbeat goes out at most HEARTBEAT_EVERY after the last traffic, and is
        // declared lost REPLY_TIMEOUT later.
        let detected_by = CUT_AT + HEARTBEAT_EVERY + REPLY_TIMEOUT + TICK_SLACK;
        let (died, why) = run.socket_end(CUT_AT, detected_by);
        assert_eq!(why, "no reply within 500ms", "seed {seed}");
        let disconnected = run.only("Disconnected", CUT_AT, detected_by);
        assert_eq!(disconnected, died, "seed {seed}: {:#?}", run.events);
        assert_eq!(
            run.texts_between(disconnected, disconnected + ms(1))[..2],
            ["Disconnected", "AttemptingToConnect"],
            "seed {seed}"
        );
    }
}

// === Scenario: server crash, then restart ===

const CRASH_AT: Duration = Duration::from_secs(2);
const BOUNCE_AT: Duration = Duration::from_millis(3200);

fn crash_run(seed: u64) -> Run {
    simulate(
        seed,
        &[(CRASH_AT, Fault::Crash), (BOUNCE_AT, Fault::Bounce)],
    )
}

/// A crashed server closes its sockets: the requests in flight fail at once with a
/// connection error (not at a timeout, and none hangs) and `Disconnected` follows within one
/// link latency. The crashed host then swallows SYNs, so the reconnect attempts end at the
/// connect timeout. After the restart the client reconnects within one retry delay, and the
/// requests that waited meanwhile are served, since the outage is shorter than their
/// timeout.
#[test]
fn crashed_server_fails_in_flight_requests_and_is_reconnected_after_restart() {
    for seed in SEEDS {
        let run = crash_run(seed);
        run.assert_no_hang_or_mixup();
        run.assert_all_ok_between(Duration::ZERO, CRASH_AT - MAX_ROUND_TRIP);

        // The peer's FIN or RST arrives within one link latency, long before the reply
        // deadline would have fired.
        let (died, why) = run.socket_end(CRASH_AT, BOUNCE_AT);
        assert!(
            why == "Connection reset" || why.starts_with("peer closed with "),
            "seed {seed}: {why}"
        );
        assert!(died <= CRASH_AT + MAX_LATENCY + TICK_SLACK, "seed {seed}");
        let disconnected = run.only("Disconnected", CRASH_AT, BOUNCE_AT);
        assert_eq!(disconnected, died, "seed {seed}: {:#?}", run.events);

        // The server answers after 100 ms, so requests were in flight at the crash: they
        // failed when the connection closed, not at their timeout.
        let failed: Vec<_> = run
            .requests
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .collect();
        assert!(!failed.is_empty(), "seed {seed}");
        for r in failed {
            assert!(
                r.started <= disconnected && r.ended == disconnected,
                "seed {seed}: {r:?}"
            );
        }

        // While down: the first attempt at once; it hangs (turmoil holds messages for a
        // host whose software is not running) until the connect timeout ends it, and the
        // next one starts right away, its retry timer having expired.
        let dials = run.dials_between(disconnected, BOUNCE_AT);
        assert_eq!(dials[0], disconnected, "seed {seed}: immediate reconnect");
        assert_eq!(dials.len(), 2, "seed {seed}: {dials:?}");
        run.assert_dial_gaps(
            disconnected,
            BOUNCE_AT,
            CONNECT_TIMEOUT,
            CONNECT_TIMEOUT + TICK_SLACK,
        );
        assert_eq!(
            run.texts_between(disconnected, BOUNCE_AT)[3],
            "Failed(Timeout: connect attempt timed out after 1s while connecting)",
            "seed {seed}: {:#?}",
            run.events
        );

        // Restarted: reconnected within one retry delay; one connection before, one after.
        let reconnected = run.only("Connected", BOUNCE_AT, SEND_FOR);
        assert!(
            reconnected <= BOUNCE_AT + MAX_DELAY + MAX_LATENCY + TICK_SLACK,
            "seed {seed}: {:#?}",
            run.events
        );
        assert_eq!(
            run.times("Connected").len(),
            2,
            "seed {seed}: {:#?}",
            run.events
        );
        assert_eq!(run.count(|o| *o == Outcome::NotConnected), 0, "seed {seed}");
        run.assert_all_ok_between(disconnected + ms(1), SEND_FOR + ms(1));
    }
}

// === Determinism ===

/// A seed fixes the whole run: simulating each scenario twice with the same seed gives the
/// same events, connect attempts, socket ends and request outcomes at the same simulated
/// times (so the layer's jitter comes from its seed, not from the operating system), while
/// different seeds give different attempt times.
#[test]
fn same_seed_replays_the_same_run() {
    for scenario in [partition_run, blackhole_run, crash_run] {
        let first = scenario(SEEDS[2]);
        let second = scenario(SEEDS[2]);
        assert_eq!(first.events, second.events);
        assert_eq!(first.dials, second.dials);
        assert_eq!(first.socket_ends, second.socket_ends);
        assert!(
            first.requests == second.requests,
            "the request outcomes differ"
        );
    }
    let dials: Vec<_> = SEEDS
        .iter()
        .map(|&seed| partition_run(seed).dials)
        .collect();
    assert!(
        dials.iter().any(|d| *d != dials[0]),
        "every seed gave the same attempt times: {dials:?}"
    );
}
