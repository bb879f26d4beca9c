//! HTTP requests through a service, for the loopback tests.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use persistent_connection::BoxError;
use tower::{Service, ServiceExt};

use super::{SOON, within};

/// The request body of every test request.
pub type Body = Empty<Bytes>;

/// Sends `GET uri` through `svc` (waiting for it to be ready); returns the status and body.
pub async fn get_with_status<S>(svc: &mut S, uri: &str) -> Result<(StatusCode, String), BoxError>
where
    S: Service<Request<Body>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    let request = Request::get(uri).body(Empty::new())?;
    let ready = svc.ready().await.map_err(Into::into)?;
    let response = ready.call(request).await.map_err(Into::into)?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

/// Sends `GET uri` through `svc` (waiting for it to be ready); returns the body.
pub async fn get<S>(svc: &mut S, uri: &str) -> Result<String, BoxError>
where
    S: Service<Request<Body>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    Ok(get_with_status(svc, uri).await?.1)
}

/// [`get`], bounded by [`SOON`], expected to succeed.
pub async fn get_ok<S>(svc: &mut S, uri: &str) -> String
where
    S: Service<Request<Body>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    within(SOON, "a request", get(svc, uri))
        .await
        .unwrap_or_else(|error| panic!("GET {uri} failed: {error}"))
}

/// Sends `GET uri` on a clone of `svc` in a task of its own.
pub fn spawn_get<S>(svc: &S, uri: &'static str) -> tokio::task::JoinHandle<Result<String, BoxError>>
where
    S: Service<Request<Body>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    let mut svc = svc.clone();
    tokio::spawn(async move { get(&mut svc, uri).await })
}
