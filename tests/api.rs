//! The public API contract of DESIGN.md section 2, checked at compile time (and run once).

mod support;

use std::{convert::Infallible, fmt::Debug, time::Duration};

use persistent_connection::{
    BoxError, Closed, ConnectError, ConnectErrorKind, Event, Handle, PersistentConnection,
    PersistentConnectionLayer, State, close::CloseReason,
};
use support::{Conn, Maker, within_an_hour};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

fn clone_debug<T: Clone + Debug>() {}
fn send<T: Send>() {}
fn send_sync<T: Send + Sync>() {}
fn static_error<T: std::error::Error + Send + Sync + 'static>() {}

/// The public types have the traits users rely on: the service is `Clone + Debug + Send` (it
/// goes into spawned tasks and `Buffer`), the handle and the layer `Clone + Debug + Send +
/// Sync`, events and errors `Clone + Debug`, and none of it needs `S: Debug` or `S: Sync`.
#[test]
fn public_types_have_the_contracted_traits() {
    // A connection type that is neither Debug nor Sync.
    #[derive(Clone)]
    struct NotSyncNotDebug(#[allow(dead_code)] std::cell::Cell<u8>);

    clone_debug::<PersistentConnection<NotSyncNotDebug>>();
    send::<PersistentConnection<NotSyncNotDebug>>();
    clone_debug::<Handle<NotSyncNotDebug>>();
    send_sync::<Handle<NotSyncNotDebug>>();
    clone_debug::<Event<&'static str, NotSyncNotDebug>>();
    clone_debug::<PersistentConnectionLayer<&'static str>>();
    send_sync::<PersistentConnectionLayer<&'static str>>();
    clone_debug::<ConnectError>();
    clone_debug::<State>();
    clone_debug::<ConnectErrorKind>();
    static_error::<ConnectError>();
    static_error::<Closed>();
    send::<CloseReason>();
}

/// The shape of DESIGN.md's example compiles without annotations beyond `&Event<_, _>`, and
/// the service's error is the `BoxError` in which `Closed` can be found with `is`.
#[tokio::test(start_paused = true)]
async fn the_design_example_shape_compiles_and_runs() {
    let maker = service_fn(|addr: String| async move {
        Ok::<_, Infallible>(service_fn(move |req: u32| {
            let addr = addr.clone();
            async move { Ok::<_, Infallible>(format!("{addr}/{req}")) }
        }))
    });
    let mut svc = ServiceBuilder::new()
        .layer(
            PersistentConnectionLayer::new(move || async move {
                Ok::<_, std::io::Error>("billing-1".to_string())
            })
            .server_name("billing")
            .retry_delay(|| Duration::from_secs(10))
            .on_event(|event: &Event<_, _>| tracing::info!(?event)),
        )
        .service(maker);
    let reply = svc.ready().await.unwrap().call(7).await.unwrap();
    assert_eq!(reply, "billing-1/7");

    let handle = svc.handle();
    handle.close().await;
    let err: BoxError = svc.ready().await.unwrap_err();
    assert!(err.is::<Closed>());
}

/// `fixed_address` and `round_robin` are ready-made address sources: round robin moves to the
/// next address on every attempt and wraps around.
#[tokio::test(start_paused = true)]
async fn round_robin_cycles_through_the_addresses_one_per_attempt() {
    let maker = Maker::new([], support::Plan::Fail("refused"));
    let _svc = PersistentConnectionLayer::round_robin(["a", "b", "c"])
        .jitter(0.0)
        .retry_delay(|| Duration::from_secs(1))
        .layer(maker.clone());
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(maker.attempt_addrs(), ["a", "b", "c", "a", "b"]);

    let maker = Maker::always_connect();
    let svc = PersistentConnectionLayer::fixed_address("only").layer(maker.clone());
    let conn: Conn = within_an_hour("connected", svc.handle().connected())
        .await
        .unwrap();
    assert_eq!(conn.addr(), "only");
}

/// A zero connect timeout is refused where it is given.
#[test]
#[should_panic(expected = "zero timeout")]
fn zero_connect_timeout_panics_at_the_setter() {
    let _ = PersistentConnectionLayer::fixed_address("a").connect_timeout(Duration::ZERO);
}

/// The service works as the transport of a `Buffer` used from spawned tasks on a multi-thread
/// runtime (it is `Send`, and its futures are `Send`).
///
/// (`buffered.oneshot(..)` inside `tokio::spawn` does not compile for *any* `Buffer` whose
/// error is `BoxError`, a rustc higher-ranked-lifetime limitation; `ready().await?.call(..)`
/// does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_runs_under_buffer_on_a_multi_thread_runtime() {
    let svc = PersistentConnectionLayer::fixed_address("a").layer(Maker::always_connect());
    let buffered = tower::buffer::Buffer::new(svc, 16);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mut buffered = buffered.clone();
            tokio::spawn(async move { buffered.ready().await?.call(format!("r{i}")).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap(), format!("0:r{i}"));
    }
}
