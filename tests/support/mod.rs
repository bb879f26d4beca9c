//! Test support, one module per kind of helper: the scripted maker and connections
//! (`maker`), event recorders (`record`), and time (`time`). The servers and proxies
//! (`h2server.rs`, `fault_proxy.rs`, `nginx.rs`, `refusing.rs`, `logs.rs`, `echo.rs`) are
//! included by the tests that use them with `#[path]`.
#![allow(dead_code, unreachable_pub)]

mod maker;
mod record;
mod time;

// Not every test uses every module.
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
