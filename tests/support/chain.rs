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
