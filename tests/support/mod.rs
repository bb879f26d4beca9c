//! Test support, one module per kind of helper: the scripted maker and connections
//! (`maker`), the event recorder (`record`), time and bounded waits (`time`), and HTTP
//! requests (`http`). The servers and proxies
//! (`h2server.rs`, `fault_proxy.rs`, `nginx.rs`, `refusing.rs`, `logs.rs`, `echo.rs`) are
//! included by the tests that use them with `#[path]`.
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "hyper")]
mod http;
mod maker;
mod record;
mod time;

// Not every test uses every module.
#[cfg(feature = "hyper")]
#[allow(unused_imports)]
pub use self::http::*;
#[allow(unused_imports)]
pub use {maker::*, record::*, time::*};

/// Installs a `tracing` subscriber once (output only shown for failing tests).
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "persistent_connection=debug".into()),
        )
        .with_test_writer()
        .try_init();
}
