//! `Echo`: a connection that is always ready and answers `n` with `n + 1` without allocating.
//! Shared (through `#[path]`) by the hot-path test, the unit tests and the benchmark.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use tower_service::Service;

/// A connection that is always ready and answers `n` with `n + 1`, without allocating.
#[derive(Clone, Debug)]
pub(crate) struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u64) -> Self::Future {
        std::future::ready(Ok(n + 1))
    }
}
