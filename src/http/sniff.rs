//! A read-side observer of an HTTP/2 connection's frames: tells when the server's first
//! frame (its preface, a SETTINGS frame) has arrived, when it has sent its first response
//! (`HEADERS` on a stream), and when it has sent `GOAWAY`.
//!
//! hyper's HTTP/2 handshake returns before the server has said anything, and hyper does not
//! report a `GOAWAY`. Both matter here: a server that accepts TCP and closes at once must not
//! count as connected, and after a `GOAWAY` new requests belong on a new connection while the
//! streams in flight finish on the old one. Reading the 9-byte frame headers as the bytes go
//! by costs a few comparisons per frame and changes nothing in the stream.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
};

/// What the server has sent so far, and how the connection ended.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    /// The server's first frame has arrived.
    pub(crate) preface: bool,
    /// The server sent `GOAWAY`.
    pub(crate) goaway: bool,
    /// The server has answered at least one request: a `HEADERS` frame arrived on a stream.
    /// (HTTP/1 sets it when a response head has arrived.)
    pub(crate) served: bool,
    /// The connection task has ended: `Ok` for a clean end, else its error.
    pub(crate) ended: Option<Result<(), Arc<hyper::Error>>>,
}

const FRAME_HEADER: usize = 9;
const GOAWAY: u8 = 0x7;
const HEADERS: u8 = 0x1;

pin_project! {
    /// `io` with its inbound HTTP/2 frame headers observed.
    pub(crate) struct Sniff<T> {
        #[pin]
        io: T,
        status: Arc<watch::Sender<Status>>,
        header: [u8; FRAME_HEADER],
        filled: usize,
        // Payload bytes of the current frame still to skip.
        payload: usize,
    }
}

impl<T> Sniff<T> {
    pub(crate) fn new(io: T, status: Arc<watch::Sender<Status>>) -> Self {
        Self {
            io,
            status,
            header: [0; FRAME_HEADER],
            filled: 0,
            payload: 0,
        }
    }
}

/// Walks `bytes` through the frame parser state.
fn observe(
    mut bytes: &[u8],
    header: &mut [u8; FRAME_HEADER],
    filled: &mut usize,
    payload: &mut usize,
    status: &watch::Sender<Status>,
) {
    while !bytes.is_empty() {
        if *payload > 0 {
            let skip = (*payload).min(bytes.len());
            *payload -= skip;
            bytes = &bytes[skip..];
            continue;
        }
        let take = (FRAME_HEADER - *filled).min(bytes.len());
        header[*filled..*filled + take].copy_from_slice(&bytes[..take]);
        *filled += take;
        bytes = &bytes[take..];
        if *filled == FRAME_HEADER {
            *filled = 0;
            *payload =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let goaway = header[3] == GOAWAY;
            let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
            let served = header[3] == HEADERS && stream & 0x7fff_ffff != 0;
            status.send_if_modified(|status| {
                let changed =
                    !status.preface || (goaway && !status.goaway) || (served && !status.served);
                status.preface = true;
                status.goaway |= goaway;
                status.served |= served;
                changed
            });
        }
    }
}

impl<T: AsyncRead> AsyncRead for Sniff<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            observe(
                &buf.filled()[before..],
                this.header,
                this.filled,
                this.payload,
                this.status,
            );
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for Sniff<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        stream_frame(kind, 0, payload)
    }

    fn stream_frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn run(chunks: &[&[u8]]) -> Status {
        let status = watch::Sender::new(Status::default());
        let (mut header, mut filled, mut payload) = ([0; FRAME_HEADER], 0, 0);
        for chunk in chunks {
            observe(chunk, &mut header, &mut filled, &mut payload, &status);
        }
        status.borrow().clone()
    }

    /// The first complete frame header is the preface; a GOAWAY frame is seen even when its
    /// header is split across reads and follows frames with payloads.
    #[test]
    fn sees_the_preface_and_goaway_across_split_reads() {
        assert!(
            !run(&[&[0, 0, 6, 4]]).preface,
            "half a header is not a frame"
        );

        let settings = frame(0x4, &[0; 6]);
        let data = frame(0x0, &[7; 300]);
        let goaway = frame(GOAWAY, &[0; 8]);
        let status = run(&[&settings, &data]);
        assert!(status.preface && !status.goaway);

        let stream: Vec<u8> = [settings, data, goaway].concat();
        for split in [1, 5, 9, 10, 315, stream.len() - 3] {
            let (a, b) = stream.split_at(split);
            let status = run(&[a, b]);
            assert!(status.preface && status.goaway, "split at {split}");
        }
        // A GOAWAY byte inside a payload is not a GOAWAY frame.
        let status = run(&[&frame(0x0, &[GOAWAY; 20])]);
        assert!(!status.goaway);
    }

    /// A `HEADERS` frame on a stream marks the connection as having served, also when its
    /// header is split across reads; frames on stream 0, other frame types, and a `HEADERS`
    /// type byte inside a payload do not.
    #[test]
    fn sees_the_first_response_headers() {
        let settings = frame(0x4, &[0; 6]);
        let ping = frame(0x6, &[HEADERS; 8]);
        let status = run(&[&settings, &ping]);
        assert!(status.preface && !status.served);
        // A DATA frame whose payload is full of HEADERS type bytes.
        let status = run(&[&settings, &stream_frame(0x0, 1, &[HEADERS; 40])]);
        assert!(!status.served);
        // A HEADERS-typed frame on stream 0 (invalid, but not a response).
        let status = run(&[&settings, &stream_frame(HEADERS, 0, &[0; 4])]);
        assert!(!status.served);

        let stream: Vec<u8> = [
            settings,
            stream_frame(HEADERS, 1, &[0x88]),
            frame(GOAWAY, &[0; 8]),
        ]
        .concat();
        for split in [3, 9, 15, 18, 19, 20] {
            let (a, b) = stream.split_at(split);
            let status = run(&[a, b]);
            assert!(status.served && status.goaway, "split at {split}");
        }
        // The reserved high bit of the stream id is ignored.
        let status = run(&[&stream_frame(HEADERS, 0x8000_0000, &[])]);
        assert!(!status.served);
        // GOAWAY before any response: not served.
        let status = run(&[&frame(0x4, &[]), &frame(GOAWAY, &[0; 8])]);
        assert!(status.goaway && !status.served);
    }
}
