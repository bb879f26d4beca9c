//! What the gRPC tests share: the service whose health a tonic-health server reports, the
//! request that asks for it, and the server's health service. Included with `#[path]`.
#![allow(dead_code, unreachable_pub)]

use tonic_health::{
    ServingStatus,
    pb::{
        HealthCheckRequest,
        health_server::{Health, HealthServer},
    },
    server::HealthReporter,
};

/// The service whose health the servers report, and the clients' server name.
pub const SERVICE: &str = "billing";

/// A health check of [`SERVICE`].
pub fn request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: SERVICE.into(),
    }
}

/// A health service that reports `status` for [`SERVICE`], and the reporter that changes it.
pub async fn health(status: ServingStatus) -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(SERVICE, status).await;
    (reporter, health)
}
