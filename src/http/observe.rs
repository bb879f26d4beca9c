//! [`Observed`]: an I/O whose inbound bytes an observer sees as they go by, unchanged; writes
//! pass straight through. The HTTP/2 connector watches frame headers with it
//! ([`FrameWatch`](super::sniff::FrameWatch)), the HTTP/1 connector counts the bytes read.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sees the bytes read from an [`Observed`] I/O.
pub(crate) trait ReadObserver {
    /// Called with each chunk read, in order.
    fn observe(&mut self, bytes: &[u8]);

    /// Called at the start of each read: the reader has taken in what came before.
    fn before_read(&mut self) {}

    /// Called when a read ends the stream (it had room and got no byte) or fails, before the
    /// reader sees it.
    fn at_end(&mut self) {}

    /// Called at the start of each write, flush or shutdown: the reader, who also writes, has
    /// taken in the end of the stream, if it came.
    fn before_write(&mut self) {}
}

pin_project! {
    /// `io` with its inbound bytes shown to `observer`.
    pub(crate) struct Observed<T, O> {
        #[pin]
        io: T,
        observer: O,
    }
}

impl<T, O> Observed<T, O> {
    pub(crate) fn new(io: T, observer: O) -> Self {
        Self { io, observer }
    }
}

impl<T: AsyncRead, O: ReadObserver> AsyncRead for Observed<T, O> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        this.observer.before_read();
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let result = this.io.poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                this.observer.observe(read);
                if read.is_empty() && room {
                    this.observer.at_end();
                }
            }
            Poll::Ready(Err(_)) => this.observer.at_end(),
            Poll::Pending => {}
        }
        result
    }
}

impl<T: AsyncWrite, O: ReadObserver> AsyncWrite for Observed<T, O> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.observer.before_write();
        this.io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        this.observer.before_write();
        this.io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        this.observer.before_write();
        this.io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        this.observer.before_write();
        this.io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
