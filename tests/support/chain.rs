//! An error with its sources on one line, `a: b: c`, for messages of tests and benches.
#![allow(dead_code, unreachable_pub)]

use std::error::Error;

/// `error` and each of its sources, joined with `": "`.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Waits at most `bound` for `response` (sending included) and reads its whole body: `Ok` only
/// for `200 ok` (what the test nginx answers), else a one-line account of what came instead.
pub async fn answered_ok<F>(bound: std::time::Duration, response: F) -> Result<(), String>
where
    F: std::future::Future<
            Output = Result<http::Response<hyper::body::Incoming>, Box<dyn Error + Send + Sync>>,
        >,
{
    use http_body_util::BodyExt as _;
    let exchange = async {
        let response = response.await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn Error + Send + Sync>>((status, body))
    };
    match tokio::time::timeout(bound, exchange).await {
        Err(_) => Err(format!("no response within {bound:?}")),
        Ok(Err(error)) => Err(chain(&*error)),
        Ok(Ok((http::StatusCode::OK, body))) if body.as_ref() == b"ok" => Ok(()),
        Ok(Ok((status, body))) => Err(format!("{status} {:?}", String::from_utf8_lossy(&body))),
    }
}
