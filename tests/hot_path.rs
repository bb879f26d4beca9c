//! The hot path allocates nothing: `poll_ready`, `call` and the response future of a connected
//! `PersistentConnection`, counted by a global allocator.

use std::{
    convert::Infallible,
    future::Future,
    pin::{Pin, pin},
    task::{Context, Poll, Waker},
};

use persistent_connection::{BoxError, PersistentConnection, PersistentConnectionLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Runs `f` and returns how many times this thread allocated meanwhile. `allocation-counter`
/// installs a counting global allocator (wrapping `System`) that counts per thread, so other
/// tests running at the same time do not disturb the count.
fn allocations_in(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

// === connections ===

#[path = "support/echo.rs"]
mod echo;
use echo::Echo;

/// Like [`Echo`], but boxes every response future: one allocation per request.
#[derive(Clone, Debug)]
struct BoxingEcho;

impl Service<u64> for BoxingEcho {
    type Response = u64;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u64, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u64) -> Self::Future {
        Box::pin(std::future::ready(Ok(n + 1)))
    }
}

/// `connection` wrapped by the layer, and connected.
async fn connected<S>(connection: S) -> PersistentConnection<S>
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
{
    let maker = service_fn(move |_: &'static str| {
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(connection) }
    });
    let mut svc = PersistentConnectionLayer::fixed_address("server").layer(maker);
    svc.ready().await.unwrap();
    svc
}

// === the measured loop ===

const ITERATIONS: u64 = 10_000;

/// Runs `n` rounds of `poll_ready` (which must be `Ready(Ok)`), `call(i)` and the response
/// future to completion, by hand with a no-op waker, over `services` in turn; returns the sum of
/// the responses.
fn ready_call<S>(services: &mut [PersistentConnection<S>], n: u64) -> u64
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: Into<BoxError>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut sum = 0;
    for i in 0..n {
        let svc = &mut services[i as usize % services.len()];
        match svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            other => panic!("poll_ready on a connected service returned {other:?}"),
        }
        match pin!(svc.call(i)).poll(&mut cx) {
            Poll::Ready(Ok(response)) => sum += response,
            Poll::Ready(Err(error)) => panic!("request {i} failed: {error}"),
            Poll::Pending => panic!("the response of an always-ready connection was pending"),
        }
    }
    sum
}

/// What [`ready_call`] returns over `Echo` connections: `1 + 2 + ... + n`.
fn echo_sum(n: u64) -> u64 {
    n * (n + 1) / 2
}

// === tests ===

/// 10,000 rounds of `poll_ready` + `call` + response on a connected service allocate nothing
/// beyond what the connection itself allocates (here, nothing).
#[tokio::test(start_paused = true)]
async fn ready_and_call_while_connected_allocate_nothing() {
    let mut svc = [connected(Echo).await];
    let mut sum = 0;
    let allocations = allocations_in(|| sum = ready_call(&mut svc, ITERATIONS));
    assert_eq!(sum, echo_sum(ITERATIONS), "every request went through");
    assert_eq!(allocations, 0);
}

/// Clones of a connected service used in turn allocate nothing either: each clone uses its
/// own copy of the connection.
#[tokio::test(start_paused = true)]
async fn clones_used_in_turn_allocate_nothing() {
    let svc = connected(Echo).await;
    let mut clones: Vec<_> = (0..8).map(|_| svc.clone()).collect();
    let mut sum = 0;
    let allocations = allocations_in(|| sum = ready_call(&mut clones, ITERATIONS));
    assert_eq!(sum, echo_sum(ITERATIONS), "every request went through");
    assert_eq!(allocations, 0);
}

/// Control for the tests above: the same loop over a connection that boxes each response
/// future counts at least one allocation per request, so a zero count means something.
#[tokio::test(start_paused = true)]
async fn allocations_of_the_connection_are_counted() {
    let mut svc = [connected(BoxingEcho).await];
    let mut sum = 0;
    let allocations = allocations_in(|| sum = ready_call(&mut svc, ITERATIONS));
    assert_eq!(sum, echo_sum(ITERATIONS), "every request went through");
    assert!(
        allocations >= ITERATIONS,
        "{allocations} allocations counted for {ITERATIONS} boxed futures"
    );
}
