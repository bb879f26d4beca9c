//! Smoke test.
mod support;
use persistent_connection::*;
use support::*;
use tower::{Layer, Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn smoke() {
    trace_init();
    let maker = Maker::new(
        [Plan::Fail("refused"), Plan::Fail("refused")],
        Plan::Connect,
    );
    let events = Events::new();
    let mut svc = PersistentConnectionLayer::fixed_address("a")
        .jitter(0.0)
        .on_event(events.hook())
        .close_signal(|c: &Conn| c.closed())
        .layer(maker.clone());
    let r = svc.ready().await.unwrap().call("x".into()).await.unwrap();
    assert_eq!(r, "0:x");
    assert_eq!(maker.attempt_times(), vec![secs(0), secs(10), secs(20)]);
    maker.conn(0).kill();
    let r = svc.ready().await.unwrap().call("y".into()).await.unwrap();
    assert_eq!(r, "1:y");
    println!("{:?}", events.timed());
    let h = svc.handle();
    h.close().await;
    assert!(svc.ready().await.unwrap_err().is::<Closed>());
    assert_eq!(maker.live.load(std::sync::atomic::Ordering::SeqCst), 0);
}
