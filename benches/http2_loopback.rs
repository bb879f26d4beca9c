//! HTTP/2 over loopback: requests per second through the crate's HTTP/2 connector and layer,
//! each against the alternative a user would otherwise pick, measured side by side in the
//! same run.
//!
//! Groups (each a baseline and the crate's variant, on the same server):
//! - `hyper`: a hyper HTTP/2 server answering `ok`. Baseline: raw hyper
//!   `client::conn::http2::SendRequest` on one connection. Ours:
//!   `PersistentConnectionLayer::fixed_address(addr).http2(Http2Connector::new())`. Both send
//!   `GET http://127.0.0.1:port/` and collect the body.
//! - `hyper, keep-alive off`: the same, with the connector's keep-alive pings off
//!   (`Http2Connector::new().keep_alive_interval(None)`), as raw hyper's are by default: the
//!   same settings on both sides.
//! - `tonic`: a tonic-health server. Baseline: `HealthClient<tonic::transport::Channel>`
//!   (`Endpoint::connect`). Ours: `HealthClient` over the layer with `Http2Connector`.
//! - `balanced`: three tonic-health servers. Baseline: `HealthClient` over tonic's
//!   `Channel::balance_channel` fed the three endpoints. Ours: `HealthClient` over
//!   `Replicas::http2(catalog.watch(), layer, Http2Connector::new()).balanced(1024)` (1024 is
//!   the buffer of tonic's channel too).
//!
//! Modes: `seq` (one request in flight) and `c64` (64 tasks, each with a clone of the client,
//! sharing the requests).
//!
//! Layout "colo": the servers run on the client's own current-thread runtime, so one thread
//! does all the work and requests/s is the inverse of the CPU cost of a request, client and
//! server together. Each round measures every variant in every mode in turn (the baseline
//! first in even rounds, ours first in odd ones); a variant's figure is its median over the
//! rounds, and its ratio is the median over the rounds of its ratio to the baseline measured
//! in the same round. Every request must succeed: the run asserts 0 errors.
//!
//! `cargo bench --bench http2_loopback` for the figures (31 rounds, about 3 minutes on a
//! quiet 2-vCPU machine);
//! `cargo bench --bench http2_loopback -- --test` for one short round of every variant, which
//! only checks that each runs without errors;
//! `cargo bench --bench http2_loopback -- --only CLIENT MODE N` for `N` requests through one
//! client alone (`raw_h2`, `ours_h2`, `channel`, `ours_grpc`, `balance_channel`,
//! `ours_balanced`; mode `seq` or `c64`), for a profiler.

#[path = "support/figures.rs"]
mod figures;
use figures::{median, min_max};
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    Request, Response, Uri,
    body::{Body as HttpBody, Incoming},
    client::conn::http2 as client_h2,
    server::conn::http2 as server_h2,
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use persistent_connection::{
    BoxError, PersistentConnection, PersistentConnectionLayer, State,
    discovery::LocalCatalog,
    http::{Http2Connection, Http2Connector},
    replicas::{BalancedClient, ReplicaSet, Replicas},
};
use tokio::{net::TcpListener, task::LocalSet, time::timeout};
use tonic::{
    body::Body as TonicBody,
    transport::{Channel, Endpoint, channel::Change, server::TcpIncoming},
};
use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest, health_check_response::ServingStatus as Status,
        health_client::HealthClient,
    },
};
use tower::{Service, ServiceExt};

/// The service whose health the tonic servers report.
const SERVICE: &str = "billing";
/// Tasks in flight in mode `c64`.
const TASKS: usize = 64;
/// The bound on one measurement (a variant in a mode, in one round): reaching it fails the
/// run.
const GUARD: Duration = Duration::from_secs(60);
/// The bound on the set-up (servers, connections).
const SETUP: Duration = Duration::from_secs(10);

// === what a run does ===

/// The sizes of a run.
struct Plan {
    /// Interleaved rounds.
    rounds: usize,
    /// Requests per measurement of the `hyper` group, in modes `seq` and `c64`.
    hyper: [usize; 2],
    /// Requests per measurement of the `tonic` and `balanced` groups.
    grpc: [usize; 2],
    /// Requests per client before the rounds (not measured).
    warm_up: usize,
}

impl Plan {
    fn full() -> Self {
        Self {
            rounds: 31,
            hyper: [30_000, 80_000],
            grpc: [15_000, 32_000],
            warm_up: 2_000,
        }
    }

    /// One short round: checks that every variant runs, without errors.
    fn test() -> Self {
        Self {
            rounds: 1,
            hyper: [300, 640],
            grpc: [300, 640],
            warm_up: 64,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Seq,
    C64,
}

impl Mode {
    const ALL: [Self; 2] = [Self::Seq, Self::C64];

    fn name(self) -> &'static str {
        match self {
            Self::Seq => "seq",
            Self::C64 => "c64",
        }
    }
}

// === the clients ===

/// One client under measurement: sends a request and checks its answer.
trait Client: Clone + 'static {
    fn request(&mut self) -> impl Future<Output = Result<(), BoxError>>;
}

/// Raw hyper: one HTTP/2 connection's `SendRequest`.
#[derive(Clone)]
struct RawH2 {
    send: client_h2::SendRequest<Empty<Bytes>>,
    uri: Uri,
}

impl Client for RawH2 {
    async fn request(&mut self) -> Result<(), BoxError> {
        self.send.ready().await?;
        let request = Request::get(self.uri.clone()).body(Empty::new())?;
        let response = self.send.send_request(request).await?;
        ok_body(response).await
    }
}

/// The crate's persistent HTTP/2 connection.
#[derive(Clone)]
struct OursH2 {
    svc: PersistentConnection<Http2Connection<Empty<Bytes>>>,
    uri: Uri,
}

impl Client for OursH2 {
    async fn request(&mut self) -> Result<(), BoxError> {
        let request = Request::get(self.uri.clone()).body(Empty::new())?;
        let response = self.svc.ready().await?.call(request).await?;
        ok_body(response).await
    }
}

/// Checks that `response` is a 200 whose body is `ok`.
async fn ok_body(response: Response<Incoming>) -> Result<(), BoxError> {
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()).into());
    }
    let body = response.into_body().collect().await?.to_bytes();
    if body.as_ref() != b"ok" {
        return Err(format!("unexpected body {body:?}").into());
    }
    Ok(())
}

/// A tonic-health client over the transport `T`.
struct Health<T>(HealthClient<T>);

impl<T: Clone> Clone for Health<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Client for Health<T>
where
    T: tonic::client::GrpcService<TonicBody> + Clone + 'static,
    T::Error: Into<BoxError>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<BoxError> + Send,
{
    async fn request(&mut self) -> Result<(), BoxError> {
        let request = HealthCheckRequest {
            service: SERVICE.into(),
        };
        let status = self.0.check(request).await?.into_inner().status();
        if status != Status::Serving {
            return Err(format!("health status {status:?}").into());
        }
        Ok(())
    }
}

/// Sends `n` requests through `client` in `mode`; returns the time taken and the number of
/// failed requests. Runs on a [`LocalSet`] (tonic's generated clients over a generic
/// transport cannot always be `tokio::spawn`ed: rustc's higher-ranked `Send` limitation).
async fn drive<C: Client>(client: &C, mode: Mode, n: usize) -> (Duration, usize) {
    let run = async {
        let started = Instant::now();
        let failed = match mode {
            Mode::Seq => burst(client.clone(), n).await,
            Mode::C64 => {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|task| {
                        let share = n / TASKS + usize::from(task < n % TASKS);
                        tokio::task::spawn_local(burst(client.clone(), share))
                    })
                    .collect();
                let mut failed = 0;
                for task in tasks {
                    failed += task.await.expect("a request task panicked");
                }
                failed
            }
        };
        (started.elapsed(), failed)
    };
    timeout(GUARD, run)
        .await
        .unwrap_or_else(|_| panic!("a measurement took longer than {GUARD:?}"))
}

/// Sends `n` requests one after the other; returns how many failed (the first failure is
/// printed).
async fn burst<C: Client>(mut client: C, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        if let Err(error) = client.request().await {
            if failed == 0 {
                eprintln!("request failed: {error}");
            }
            failed += 1;
        }
    }
    failed
}

// === the servers ===

/// A hyper HTTP/2 server answering `ok` to every request, on this runtime.
async fn hyper_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            stream.set_nodelay(true).expect("TCP_NODELAY");
            let ok = service_fn(|_: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            tokio::spawn(
                server_h2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), ok),
            );
        }
    });
    address
}

/// A tonic-health server reporting [`SERVICE`] as serving, on this runtime.
async fn tonic_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .expect("the health server failed");
    });
    address
}

// === the variants ===

type Grpc = TonicBody;
type OursGrpc = Health<PersistentConnection<Http2Connection<Grpc>>>;
type OursBalanced = Health<BalancedClient<Request<Grpc>, Response<Incoming>>>;

/// Every client, connected.
struct Clients {
    raw_h2: RawH2,
    ours_h2: OursH2,
    /// `ours_h2` with the connector's keep-alive pings off, as raw hyper's are by default.
    ours_h2_nokeepalive: OursH2,
    channel: Health<Channel>,
    ours_grpc: OursGrpc,
    balance_channel: Health<Channel>,
    ours_balanced: OursBalanced,
    /// The servers of the `hyper` and `tonic` groups.
    hyper_address: SocketAddr,
    grpc_address: SocketAddr,
    /// The servers of the `balanced` group.
    replica_addresses: Vec<SocketAddr>,
    /// Keeps the replicas' connections (and their drivers) for the run.
    _replicas: ReplicaSet<String, Http2Connection<Grpc>>,
    /// The balanced channel's endpoints: it stops following them once this is gone.
    _changes: tokio::sync::mpsc::Sender<Change<usize, Endpoint>>,
}

async fn clients() -> Clients {
    // hyper
    let hyper_address = hyper_server().await;
    let address = hyper_address;
    let uri: Uri = format!("http://{address}/").parse().unwrap();
    let stream = tokio::net::TcpStream::connect(address).await.expect("dial");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (send, connection) = client_h2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let raw_h2 = RawH2 {
        send,
        uri: uri.clone(),
    };
    let mut svc = PersistentConnectionLayer::fixed_address(address).http2(Http2Connector::new());
    svc.ready().await.expect("connected");
    let ours_h2 = OursH2 {
        svc,
        uri: uri.clone(),
    };
    let mut svc = PersistentConnectionLayer::fixed_address(address)
        .http2(Http2Connector::new().keep_alive_interval(None));
    svc.ready().await.expect("connected");
    let ours_h2_nokeepalive = OursH2 { svc, uri };

    // tonic, one server
    let grpc_address = tonic_server().await;
    let address = grpc_address;
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("tonic connects");
    let mut svc = PersistentConnectionLayer::fixed_address(address)
        .server_name(SERVICE)
        .http2(Http2Connector::new());
    svc.ready().await.expect("connected");

    // tonic, three replicas
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(tonic_server().await);
    }
    let (balance_channel, changes) = Channel::balance_channel(16);
    for (n, address) in replicas.iter().enumerate() {
        let endpoint = Endpoint::from_shared(format!("http://{address}")).unwrap();
        changes
            .send(Change::Insert(n, endpoint))
            .await
            .expect("the balanced channel listens");
    }
    let (balanced, set) = connect_balanced(&replicas, Http2Connector::new()).await;

    Clients {
        raw_h2,
        ours_h2,
        ours_h2_nokeepalive,
        channel: Health(HealthClient::new(channel)),
        ours_grpc: Health(HealthClient::new(svc)),
        balance_channel: Health(HealthClient::new(balance_channel)),
        ours_balanced: balanced,
        hyper_address,
        grpc_address,
        replica_addresses: replicas,
        _replicas: set,
        _changes: changes,
    }
}

/// The balanced client over the servers at `addresses`, once each replica is connected, and
/// the set that keeps the replicas' connections.
async fn connect_balanced(
    addresses: &[SocketAddr],
    connector: Http2Connector<Grpc>,
) -> (OursBalanced, ReplicaSet<String, Http2Connection<Grpc>>) {
    let catalog = LocalCatalog::<String, SocketAddr>::new();
    for (n, address) in addresses.iter().enumerate() {
        catalog.insert(format!("replica-{n}"), *address);
    }
    let layer = PersistentConnectionLayer::new(catalog.clone()).server_name(SERVICE);
    let replicas = Replicas::http2(catalog.watch(), layer, connector);
    let set = replicas.set();
    let client = replicas.balanced(1024);
    while set.keys().len() < addresses.len()
        || set.states().iter().any(|(_, s)| *s != State::Connected)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (Health(HealthClient::new(client)), set)
}

// === measuring ===

/// The figures of one variant in one mode.
#[derive(Default)]
struct Cell {
    /// Requests/s, per round.
    rates: Vec<f64>,
    /// The ratio to the baseline of the same round, per round (ours only).
    ratios: Vec<f64>,
    failed: usize,
    requests: usize,
}

/// A group: its baseline and ours, in each mode.
struct Group {
    name: &'static str,
    baseline: &'static str,
    ours: &'static str,
    /// Target of ours / baseline.
    target: f64,
    /// [mode][0 = baseline, 1 = ours]
    cells: [[Cell; 2]; 2],
}

impl Group {
    fn new(name: &'static str, baseline: &'static str, ours: &'static str, target: f64) -> Self {
        Self {
            name,
            baseline,
            ours,
            target,
            cells: Default::default(),
        }
    }

    /// Measures the baseline and ours in `mode` with `n` requests each, in the order the
    /// round's parity says, and records both and their ratio.
    async fn measure<B: Client, O: Client>(
        &mut self,
        round: usize,
        mode: Mode,
        n: usize,
        baseline: &B,
        ours: &O,
    ) {
        let (b, o) = if round % 2 == 0 {
            let b = drive(baseline, mode, n).await;
            (b, drive(ours, mode, n).await)
        } else {
            let o = drive(ours, mode, n).await;
            (drive(baseline, mode, n).await, o)
        };
        let cells = &mut self.cells[mode as usize];
        let mut rates = [0.0; 2];
        for (i, (elapsed, failed)) in [b, o].into_iter().enumerate() {
            let rate = n as f64 / elapsed.as_secs_f64();
            rates[i] = rate;
            cells[i].rates.push(rate);
            cells[i].failed += failed;
            cells[i].requests += n;
        }
        cells[1].ratios.push(rates[1] / rates[0]);
    }
}

/// `12345.6` as `12 346`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn report(groups: &[Group], rounds: usize) {
    println!(
        "\n| group | variant | mode | median r/s | min–max r/s | x baseline (min–max) | rounds |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    for group in groups {
        for mode in Mode::ALL {
            for (i, name) in [group.baseline, group.ours].into_iter().enumerate() {
                let cell = &group.cells[mode as usize][i];
                let (min, max) = min_max(&cell.rates);
                let ratio = if i == 0 {
                    "1.000".to_owned()
                } else {
                    let (lo, hi) = min_max(&cell.ratios);
                    format!("**{:.3}** ({lo:.3}–{hi:.3})", median(&cell.ratios))
                };
                println!(
                    "| {} | {name} | {} | {} | {}–{} | {ratio} | {rounds} |",
                    group.name,
                    mode.name(),
                    thousands(median(&cell.rates)),
                    thousands(min),
                    thousands(max),
                );
            }
        }
    }
    println!();
    for group in groups {
        for mode in Mode::ALL {
            let ratio = median(&group.cells[mode as usize][1].ratios);
            let verdict = if ratio >= group.target {
                "met"
            } else {
                "MISSED"
            };
            println!(
                "{} {}: {} / {} = {ratio:.3} (target >= {:.2}): {verdict}",
                group.name,
                mode.name(),
                group.ours,
                group.baseline,
                group.target,
            );
        }
    }
}

/// `--only CLIENT MODE N`: sends `N` requests through one client after a warm-up, and prints
/// its requests/s (for a profiler: `valgrind --tool=callgrind`). Besides the clients of the
/// table, `ours_h2`, `ours_grpc` and `ours_balanced` take the suffixes `_nokeepalive` (keep-alive pings off),
/// `_noreplay` (no request kept for a resend: `max_replays(0)`) and `_bare` (both, and no
/// dialing ahead), which tell where the crate's cost lies.
async fn only(client: &str, mode: &str, n: usize) {
    let mode = match mode {
        "seq" => Mode::Seq,
        "c64" => Mode::C64,
        _ => panic!("the mode is seq or c64"),
    };
    let c = timeout(SETUP, clients())
        .await
        .expect("the servers and clients were not set up in time");
    let warm_up = (n / 10).max(TASKS);
    macro_rules! run {
        ($client:expr) => {{
            let client = $client;
            let (_, failed) = drive(&client, mode, warm_up).await;
            assert_eq!(failed, 0, "requests failed during the warm-up");
            drive(&client, mode, n).await
        }};
    }
    let (elapsed, failed) = match client {
        "raw_h2" => run!(c.raw_h2),
        "ours_h2" => run!(c.ours_h2),
        "channel" => run!(c.channel),
        "ours_grpc" => run!(c.ours_grpc),
        "balance_channel" => run!(c.balance_channel),
        "ours_balanced" => run!(c.ours_balanced),
        other => {
            let (base, setting) = other
                .rsplit_once('_')
                .unwrap_or_else(|| panic!("unknown client {other}"));
            match base {
                "ours_h2" => {
                    let mut svc = PersistentConnectionLayer::fixed_address(c.hyper_address)
                        .http2(tune(Http2Connector::new(), setting));
                    svc.ready().await.expect("connected");
                    run!(OursH2 {
                        svc,
                        uri: c.ours_h2.uri.clone()
                    })
                }
                "ours_grpc" => {
                    let mut svc = PersistentConnectionLayer::fixed_address(c.grpc_address)
                        .server_name(SERVICE)
                        .http2(tune(Http2Connector::new(), setting));
                    svc.ready().await.expect("connected");
                    run!(Health(HealthClient::new(svc)))
                }
                "ours_balanced" => {
                    let connector = tune(Http2Connector::new(), setting);
                    let (client, _set) = connect_balanced(&c.replica_addresses, connector).await;
                    run!(client)
                }
                _ => panic!("unknown client {other}"),
            }
        }
    };
    assert_eq!(failed, 0, "requests failed");
    let rate = thousands(n as f64 / elapsed.as_secs_f64());
    println!("{client} {}: {rate} r/s", mode.name());
}

/// `connector` with a diagnostic `setting` of `--only`.
fn tune<B>(connector: Http2Connector<B>, setting: &str) -> Http2Connector<B> {
    match setting {
        "nokeepalive" => connector.keep_alive_interval(None),
        "noreplay" => connector.max_replays(0),
        "bare" => connector
            .keep_alive_interval(None)
            .max_replays(0)
            .dial_ahead(false),
        _ => panic!("unknown setting {setting}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = LocalSet::new();
    if let Some(at) = args.iter().position(|arg| arg == "--only") {
        let [client, mode, n] = [1, 2, 3].map(|i| args.get(at + i).expect("--only CLIENT MODE N"));
        let n = n.parse().expect("N is a number");
        local.block_on(&runtime, only(client, mode, n));
        return;
    }
    let test = args.iter().any(|arg| arg == "--test");
    let plan = if test { Plan::test() } else { Plan::full() };
    let started = Instant::now();
    let groups = local.block_on(&runtime, async {
        let clients = timeout(SETUP, clients())
            .await
            .expect("the servers and clients were not set up in time");
        let mut groups = [
            Group::new("hyper", "raw SendRequest", "Http2Connector + layer", 0.97),
            Group::new(
                "hyper, keep-alive off",
                "raw SendRequest",
                "Http2Connector, keep-alive off, + layer",
                0.97,
            ),
            Group::new("tonic", "Channel", "layer", 1.0),
            Group::new("balanced", "balance_channel", "Replicas::balanced", 1.0),
        ];
        // Warm-up: every connection made, every pool grown.
        let c = &clients;
        for mode in Mode::ALL {
            let n = plan.warm_up;
            let warm = [
                drive(&c.raw_h2, mode, n).await,
                drive(&c.ours_h2, mode, n).await,
                drive(&c.ours_h2_nokeepalive, mode, n).await,
                drive(&c.channel, mode, n).await,
                drive(&c.ours_grpc, mode, n).await,
                drive(&c.balance_channel, mode, n).await,
                drive(&c.ours_balanced, mode, n).await,
            ];
            let failed: usize = warm.iter().map(|(_, failed)| failed).sum();
            assert_eq!(failed, 0, "requests failed during the warm-up");
        }
        for round in 0..plan.rounds {
            for mode in Mode::ALL {
                let m = mode as usize;
                let [hyper, hyper_nokeepalive, tonic, balanced] = &mut groups;
                hyper
                    .measure(round, mode, plan.hyper[m], &c.raw_h2, &c.ours_h2)
                    .await;
                hyper_nokeepalive
                    .measure(
                        round,
                        mode,
                        plan.hyper[m],
                        &c.raw_h2,
                        &c.ours_h2_nokeepalive,
                    )
                    .await;
                tonic
                    .measure(round, mode, plan.grpc[m], &c.channel, &c.ours_grpc)
                    .await;
                balanced
                    .measure(
                        round,
                        mode,
                        plan.grpc[m],
                        &c.balance_channel,
                        &c.ours_balanced,
                    )
                    .await;
            }
            if !test {
                eprintln!("round {}/{} done", round + 1, plan.rounds);
            }
        }
        groups
    });
    drop(local);
    drop(runtime);

    report(&groups, plan.rounds);
    println!("\ntotal time: {:.1} s", started.elapsed().as_secs_f64());
    let mut failed = 0;
    for group in &groups {
        for (m, mode) in Mode::ALL.into_iter().enumerate() {
            for (i, name) in [group.baseline, group.ours].into_iter().enumerate() {
                let cell = &group.cells[m][i];
                let expected = plan.rounds
                    * if group.name.starts_with("hyper") {
                        plan.hyper[m]
                    } else {
                        plan.grpc[m]
                    };
                assert_eq!(
                    cell.requests,
                    expected,
                    "{} {name} {} did not run every request",
                    group.name,
                    mode.name()
                );
                assert_eq!(cell.rates.len(), plan.rounds);
                if cell.failed > 0 {
                    eprintln!(
                        "{} {name} {}: {} failed requests",
                        group.name,
                        mode.name(),
                        cell.failed
                    );
                }
                failed += cell.failed;
            }
        }
    }
    assert_eq!(failed, 0, "every request must succeed");
    println!("errors: 0");
}
