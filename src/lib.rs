//! A tower middleware that keeps a client's connection to a server alive.
//!
//! [`PersistentConnectionLayer`] wraps any maker (a [`Service`] from an address to a
//! connection, tower's `MakeService`) into a [`PersistentConnection`]: a service that is ready
//! only while connected. Behind it a driver task keeps one connection up:
//!
//! - it connects **eagerly**, as soon as the layer is applied, and again as soon as a
//!   connection is lost;
//! - it **discovers the address before every attempt** (`get_address`), so a lookup in a
//!   catalog or DNS moves the client to another replica when one dies;
//! - it waits a **randomized delay** between failed attempts (default 10 s ± 30 %), with the
//!   timer armed just before each attempt, so a connection that lived longer than the delay is
//!   replaced at once when it dies;
//! - it reports every step as an [`Event`] and to the log.
//!
//! The semantics are those of Jane Street's `Persistent_connection`, with a few deliberate
//! improvements (closing cancels an attempt in flight; waiters get [`Closed`] instead of
//! waiting forever).
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use persistent_connection::{BoxError, Event, PersistentConnectionLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // The maker: turns an address into a connection, itself a `Service`. In real use, this
//! // dials TCP and performs a handshake; here every connection echoes.
//! let maker = service_fn(|addr: String| async move {
//!     let connection = service_fn(move |request: String| {
//!         let addr = addr.clone();
//!         async move { Ok::<_, Infallible>(format!("{addr} echoes {request}")) }
//!     });
//!     Ok::<_, Infallible>(connection)
//! });
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(
//!         // Called before every attempt: look the server up here.
//!         PersistentConnectionLayer::new(|| async { Ok::<_, Infallible>("10.0.0.7:80".to_string()) })
//!             .server_name("echo")
//!             .retry_delay(|| Duration::from_secs(2))
//!             .on_event(|event: &Event<_, _>| println!("echo: {event:?}")),
//!     )
//!     .service(maker);
//!
//! // Waits until connected, then sends.
//! let reply = svc.ready().await?.call("hello".to_string()).await?;
//! assert_eq!(reply, "10.0.0.7:80 echoes hello");
//!
//! // Stops the driver and drops the connection.
//! svc.handle().close().await;
//! # Ok(()) }
//! ```
//!
//! # Events
//!
//! Per connection cycle (at start, and after each disconnect) the [`Event`]s come in this
//! order: `AttemptingToConnect` once; then per attempt `ObtainedAddress(addr)` and either
//! `FailedToConnect(err)` (then the delay, then the next attempt of the same cycle) or
//! `Connected(conn)`; later `Disconnected`, and a new cycle begins. Within a cycle, an address
//! or an error (compared by its text) equal to the previous one is not reported again. The
//! hook runs on the driver task, in order; `Disconnected` always follows the `Connected` hook's
//! return. Every event is also logged with `tracing`, with the field
//! `persistent_connection_to` set to the [server name](PersistentConnectionLayer::server_name):
//! `FailedToConnect` at `WARN`, `Connected` and `Disconnected` at `INFO`, the others at
//! `DEBUG`.
//!
//! # When the server says goodbye
//!
//! A server's goodbye (HTTP/2 `GOAWAY`, HTTP/1 `Connection: close` or an idle close: a
//! [`CloseReason::Graceful`](crate::close::CloseReason::Graceful)) of a connection that served is no failure: the replacement
//! starts at once, whatever the connection's age, and the retry policy counts nothing. A
//! goodbye before any response from a connection younger than the
//! [flap guard](PersistentConnectionLayer::flap_guard)
//! ([`CloseReason::GracefulBeforeServing`](crate::close::CloseReason::GracefulBeforeServing): a server that accepts and closes) is a failure and
//! waits the retry delay, so a broken server is not hammered. New requests wait in
//! `poll_ready` for the replacement while the requests the old connection accepted finish on
//! it; the crate's HTTP connectors send again the requests the server provably never
//! processed (see the [`http`] module). With
//! [`max_connection_age`](PersistentConnectionLayer::max_connection_age) the client rotates
//! its connections itself, make before break.
//!
//! A replacement is reported with the same five events: `Disconnected` for the old
//! connection, then a new cycle (`AttemptingToConnect`, `ObtainedAddress`, `Connected`) for
//! the new one. After a goodbye the new cycle starts at once; a rotation reports all four at
//! the moment of the switch, once the new connection is up. [`Stats::graceful_closes`](crate::observe::Stats::graceful_closes) and
//! [`Stats::rotations`](crate::observe::Stats::rotations) count them, and the log line of the `Disconnected` says which it was.
//!
//! # Readiness: why `Pending`, never a stale error
//!
//! `poll_ready` is `Pending` while there is no connection, `Ready(Ok)` while connected and the
//! connection is ready, and `Err(`[`Closed`]`)` only after close. A failed connect attempt is
//! never handed to a request: the request did not cause it, and a later attempt may well
//! succeed before the request needs a connection. (`tower::reconnect` returns `Ready` after a
//! failed connect and gives the stored error to the next `call`, even after a newer attempt
//! succeeded; tonic inherits that.) Keeping `Pending` lets layers above do the right thing:
//! a balancer routes around a down endpoint and never evicts it, a `Buffer` queues requests
//! instead of being poisoned, `LoadShed` fails fast. If the connection's own `poll_ready`
//! fails, that connection is over: the driver is told, reports `Disconnected`, reconnects, and
//! `poll_ready` is `Pending` meanwhile.
//!
//! Each clone of the service keeps its own copy of the connection. `call` goes to the copy
//! whose `poll_ready` returned `Ready`, even if a newer connection has arrived since: a request
//! is never moved to a connection nobody checked.
//!
//! # Noticing a closed connection
//!
//! A connection's `poll_ready` error always ends it. Many connections do not report anything
//! while idle, though (hyper's HTTP/2 `SendRequest` does not), so the layer also takes an
//! optional [close signal](PersistentConnectionLayer::close_signal): a future per connection
//! that resolves when it has closed, with the [`CloseReason`](crate::close::CloseReason). With it, the driver reconnects
//! before the next request needs the connection.
//!
//! **Marking a connection dead on a response**: a proxy whose upstream is gone answers
//! `502` to every request over a healthy socket, and neither `poll_ready` nor the close signal
//! notice. The [`classify`] module wraps the maker's connections in a predicate on each
//! request's outcome: when it says "dead", the connection's `poll_ready` fails and its close
//! signal fires, so the layer reconnects, with its hot path unchanged.
//!
//! # Retry policies
//!
//! The delay before each attempt comes from a [`RetryPolicy`](crate::retry::RetryPolicy): the seed's `retry_delay`
//! closure, a [`Constant`](crate::retry::Constant) (the default, 10 s), an [`Exponential`](crate::retry::Exponential) ([`Exponential::grpc`](crate::retry::Exponential::grpc): 1 s,
//! ×1.6, capped at 120 s), a closure that sees the [`RetryContext`](crate::retry::RetryContext) ([`policy_fn`](crate::retry::policy_fn)), or your own
//! type. The layer's jitter (±30 % by default) applies to every delay, also at the cap, so
//! clients that failed together do not come back together. The count of failures in a row
//! resets only after a connection has lived the [flap guard](PersistentConnectionLayer::flap_guard)
//! (1 s), so a server that accepts and drops every connection still sees the delays grow;
//! [`Handle::reconnect_now`] skips the wait and resets it. A policy may give up
//! ([`RetryPolicy::give_up_after`](crate::retry::RetryPolicy::give_up_after)): the persistent connection then closes, and
//! [`Handle::connected_or_failed_to_connect`] returns the last error.
//!
//! ```
//! use std::time::Duration;
//! use persistent_connection::{PersistentConnectionLayer, retry::{Exponential, RetryPolicy}};
//!
//! let layer = PersistentConnectionLayer::fixed_address("10.0.0.7:50051")
//!     .retry_policy(Exponential::grpc().give_up_after(100))
//!     .flap_guard(Duration::from_secs(5));
//! # let _ = layer;
//! ```
//!
//! # Observing it
//!
//! - [`Handle::state`] says what the driver is doing ([`State`]: connecting, connected, waiting
//!   with the time of the next attempt, closed), and [`Handle::state_changes`] is a stream of
//!   it.
//! - [`Handle::stats`] reads the counters ([`Stats`](crate::observe::Stats)): attempts, failed attempts, connections,
//!   disconnections, the current connection's age, the last error and the delay chosen for the
//!   next attempt.
//! - An [`EventBus`](crate::observe::EventBus) given to [`on_event`](PersistentConnectionLayer::on_event) serves the
//!   events to any number of subscribers; one that subscribes late first receives the current
//!   state (never an old `Connected(conn)`, which would keep a dead connection alive).
//!
//! # Health-gated readiness
//!
//! With a [health check](PersistentConnectionLayer::health_check) (for gRPC, one
//! `grpc.health.v1.Health/Check` that must answer `SERVING`; see [`HealthCheck`](crate::health::HealthCheck)), a new
//! connection counts as connected only once it passes; a failed check is a failed attempt. With
//! a [check interval](PersistentConnectionLayer::health_check_interval) it also runs on the
//! live connection, and a connection that stops passing is replaced.
//!
//! # Closing
//!
//! [`Handle::close`] stops reconnecting, cancels an attempt in flight at once, drops the shared
//! copy of the connection, and returns a future that resolves when the driver task has ended.
//! Every service clone then returns [`Closed`] from `poll_ready` (and drops its copy);
//! requests already sent finish or fail on their own. The driver also ends by itself when
//! every service clone and handle has been dropped; and if its runtime shuts down, everyone
//! waiting gets [`Closed`] rather than waiting forever.
//!
//! # Composition
//!
//! The service is an ordinary tower `Service`, so the usual layers compose with it. Each
//! recipe below runs as written (a connection here is an in-memory `service_fn`; with a real
//! maker nothing changes).
//!
//! **Wait for a connection** is the default: a request waits in `poll_ready` while
//! disconnected, and is sent as soon as a connection is up.
//!
//! **Fail fast while down**: `LoadShed` above the layer answers `Overloaded` at once while
//! there is no connection. (It sheds whenever the service below is not ready: over an HTTP/1
//! connection, whose one request at a time makes it busy, it also sheds while a request is in
//! flight.)
//!
//! ```
//! # use std::convert::Infallible;
//! # use persistent_connection::{BoxError, PersistentConnectionLayer};
//! use tower::{ServiceBuilder, ServiceExt, load_shed::error::Overloaded, service_fn};
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! # let maker = service_fn(|_: &str| async {
//! #     Ok::<_, Infallible>(service_fn(|req: u32| async move { Ok::<_, Infallible>(req) }))
//! # });
//! // The server is down: discovery fails every time.
//! let persistent =
//!     PersistentConnectionLayer::new(|| async { Err::<&str, BoxError>("no replica".into()) });
//! let svc = ServiceBuilder::new().load_shed().layer(persistent).service(maker);
//! let err = svc.oneshot(1).await.unwrap_err();
//! assert!(err.is::<Overloaded>());
//! # }
//! ```
//!
//! **Bound the wait**: `Timeout` above a `Buffer` above the layer bounds the whole wait,
//! connection included (the buffer's response future covers the wait for readiness). Or bound
//! it at the call site with `tokio::time::timeout(d, svc.ready())`. `Timeout` directly above
//! the layer does *not* bound it: its clock starts in `call`, after `poll_ready`.
//!
//! ```
//! # use std::{convert::Infallible, time::Duration};
//! # use persistent_connection::{BoxError, PersistentConnectionLayer};
//! use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn, timeout::error::Elapsed};
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! # let maker = service_fn(|_: &str| async {
//! #     Ok::<_, Infallible>(service_fn(|req: u32| async move { Ok::<_, Infallible>(req) }))
//! # });
//! # let persistent =
//! #     PersistentConnectionLayer::new(|| async { Err::<&str, BoxError>("no replica".into()) });
//! let mut svc = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(2))
//!     .buffer(64)
//!     .layer(persistent.clone())
//!     .service(maker.clone());
//! let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
//! assert!(err.is::<Elapsed>());
//!
//! // At the call site, without a buffer:
//! let mut svc = persistent.layer(maker);
//! let waited = tokio::time::timeout(Duration::from_secs(2), svc.ready()).await;
//! assert!(waited.is_err(), "still not connected after 2 s");
//! # }
//! ```
//!
//! **Share one connection among tasks**: clone the service (every clone shares the one
//! connection and driver, and keeps its own copy of the connection), or put a `Buffer` above
//! it. A `Buffer` wraps the errors of the service below it, so look for [`Closed`] with
//! [`Closed::find_in`]. (A rustc limitation, not this crate's: `buffer.oneshot(req)` inside
//! `tokio::spawn` does not compile for a `Buffer` whose error is `BoxError`; write
//! `buffer.ready().await?.call(req)` instead.)
//!
//! ```
//! # use std::convert::Infallible;
//! # use persistent_connection::{Closed, PersistentConnectionLayer};
//! use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let maker = service_fn(|_: &str| async {
//! #     Ok::<_, Infallible>(service_fn(|req: u32| async move { Ok::<_, Infallible>(req) }))
//! # });
//! let persistent = PersistentConnectionLayer::fixed_address("10.0.0.7:80").layer(maker);
//! let handle = persistent.handle();
//! let buffer = ServiceBuilder::new().buffer(64).service(persistent);
//! let mut tasks = Vec::new();
//! for i in 0..4 {
//!     let mut buffer = buffer.clone();
//!     tasks.push(tokio::spawn(async move { buffer.ready().await?.call(i).await }));
//! }
//! for (i, task) in tasks.into_iter().enumerate() {
//!     assert_eq!(task.await.unwrap().unwrap(), i as u32);
//! }
//!
//! handle.close().await;
//! let err = buffer.oneshot(5).await.unwrap_err();
//! assert!(Closed::find_in(&*err).is_some());
//! # }
//! ```
//!
//! **Balance over replicas**: one layer per endpoint under `tower::balance::p2c::Balance`,
//! each measured by `PendingRequests` (or `PeakEwma`). A down endpoint is `Pending`, so the
//! balancer routes around it and never evicts it (tower evicts an endpoint whose `poll_ready`
//! fails), and uses it again as soon as it reconnects. An HTTP/2 connection is always ready
//! while connected, so load is the balancer's only signal. Never put a `Buffer` *between* the
//! balancer and its endpoints: every endpoint would look ready; above the balancer it is
//! fine. The persistent connection also implements `Load` when its connection does (see
//! [`ConnectionLoad`](crate::load::ConnectionLoad)).
//!
//! ```
//! # use std::{convert::Infallible, io};
//! # use persistent_connection::PersistentConnectionLayer;
//! use tower::{
//!     Layer, Service, ServiceExt,
//!     balance::p2c::Balance,
//!     discover::ServiceList,
//!     load::{CompleteOnResponse, PendingRequests},
//!     service_fn,
//! };
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The maker can reach replicas "a" and "c"; "b" is down.
//! let maker = service_fn(|addr: &'static str| async move {
//!     if addr == "b" {
//!         return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
//!     }
//!     Ok(service_fn(move |req: u32| async move { Ok::<_, Infallible>(format!("{addr}:{req}")) }))
//! });
//! let endpoints = ["a", "b", "c"].map(|addr| {
//!     let persistent = PersistentConnectionLayer::fixed_address(addr).layer(maker.clone());
//!     PendingRequests::new(persistent, CompleteOnResponse::default())
//! });
//! let mut balance = Balance::new(ServiceList::new(endpoints));
//! for i in 0..100 {
//!     let reply = balance.ready().await.unwrap().call(i).await.unwrap();
//!     assert!(!reply.starts_with("b:"), "never routed to the down replica");
//! }
//! assert_eq!(balance.len(), 3, "the down replica was not evicted");
//! # }
//! ```
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.85 (the first with edition 2024). It may be raised
//! in a minor release, never in a patch release.
//!
//! [`Service`]: tower_service::Service
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod bus;
pub mod classify;
pub mod close;
mod command;
pub mod discovery;
mod driver;
mod error;
mod event;
pub mod failfast;
mod handle;
pub mod health;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod http;
mod layer;
pub mod load;
#[cfg(all(test, loom))]
mod loom_tests;
mod metrics;
pub mod observe;
mod panic;
pub mod replicas;
pub mod retry;
mod service;
mod shared;
mod state;
mod stats;
mod sync;
#[cfg(test)]
mod tests;

pub use crate::{
    error::{Closed, ConnectError, ConnectErrorKind, InvalidSetting},
    event::Event,
    handle::Handle,
    layer::PersistentConnectionLayer,
    service::{PersistentConnection, ResponseFuture},
    state::State,
};

/// The boxed error type of [`PersistentConnection`]'s `Service` impl.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
