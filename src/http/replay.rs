//! [`ReplayBody`]: a request body that can be sent again, after linkerd2-proxy's idea of the
//! same name.
//!
//! The frames are recorded (as [`Bytes`]) as hyper reads them, trailers too, up to a limit.
//! A replay reads the recorded frames first and then goes on from the source, so a body that
//! hyper had only partly read when the server refused the request is sent whole. A body that
//! outgrew the limit keeps streaming, but can no longer be replayed. An empty body needs no
//! recording at all.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Buf, Bytes};

use crate::BoxError;

/// A request body whose frames are kept (up to a limit) so that it can be sent again.
///
/// Every copy shares one recording and one source. Each [`replay`](Self::replay) starts a new
/// generation: a copy of an older generation (the one a failed send left with hyper) gets an
/// error if it is polled again, so two sends never interleave their reads of the source.
pub(crate) struct ReplayBody<B> {
    /// `None` for a body that was empty from the start: nothing to keep.
    shared: Option<Arc<Mutex<Recording<B>>>>,
    /// The frames of the recording this copy has read.
    cursor: usize,
    generation: u64,
    /// The copy handed to hyper for one send: set as soon as hyper looks at the body (see
    /// [`mark_taken`](Self::mark_taken)).
    taken: Option<Arc<AtomicBool>>,
}

/// A recorded frame.
#[derive(Clone)]
enum Recorded {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Recorded {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Self::Data(data) => Frame::data(data.clone()),
            Self::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

struct Recording<B> {
    /// The body not read yet; `None` once it has ended or failed.
    source: Option<Pin<Box<B>>>,
    /// The source failed: a replay cannot send the whole body.
    failed: bool,
    frames: Vec<Recorded>,
    /// Data bytes in `frames`.
    bytes: usize,
    /// The most data bytes kept.
    limit: usize,
    /// The body outgrew `limit`: `frames` was dropped, and no replay is possible.
    overflowed: bool,
    /// The generation allowed to read.
    generation: u64,
}

/// The body outgrew the bytes kept for a replay.
#[derive(Debug)]
pub(crate) struct TooLarge;

impl<B> ReplayBody<B>
where
    B: Body,
{
    /// Wraps `body`, keeping up to `limit` bytes of its data for replays.
    pub(crate) fn new(body: B, limit: usize) -> Self {
        let shared = (!body.is_end_stream()).then(|| {
            Arc::new(Mutex::new(Recording {
                source: Some(Box::pin(body)),
                failed: false,
                frames: Vec::new(),
                bytes: 0,
                limit,
                overflowed: false,
                generation: 0,
            }))
        });
        Self {
            shared,
            cursor: 0,
            generation: 0,
            taken: None,
        }
    }
}

impl<B> ReplayBody<B> {
    /// Another copy of this body, in the same generation, that reads from the start. It is
    /// meant to be kept, unread, for [`replay`](Self::replay).
    pub(crate) fn handle(&self) -> Self {
        let generation = self
            .shared
            .as_ref()
            .map_or(0, |shared| lock(shared).generation);
        Self {
            shared: self.shared.clone(),
            cursor: 0,
            generation,
            taken: None,
        }
    }

    /// A copy of the body that reads it again from the start (the recorded frames, then the
    /// rest of the source); every copy made before stops reading.
    ///
    /// # Errors
    ///
    /// [`TooLarge`] if the body outgrew the limit: its beginning is gone.
    pub(crate) fn replay(&self) -> Result<Self, TooLarge> {
        let Some(shared) = &self.shared else {
            return Ok(Self {
                shared: None,
                cursor: 0,
                generation: 0,
                taken: None,
            });
        };
        let mut recording = lock(shared);
        if recording.overflowed {
            return Err(TooLarge);
        }
        recording.generation += 1;
        Ok(Self {
            shared: Some(shared.clone()),
            cursor: 0,
            generation: recording.generation,
            taken: None,
        })
    }
}

impl<B> ReplayBody<B> {
    /// Marks this copy as the one about to be handed to hyper, and returns the mark: it says
    /// whether hyper has looked at the body yet (any of `poll_frame`, `is_end_stream` or
    /// `size_hint`). hyper's HTTP/2 dispatcher asks a request's body for its size and its end
    /// as soon as it takes the request from its queue, before it opens the stream (it must
    /// know whether the `HEADERS` end the stream); so an unset mark proves that the request
    /// was never taken, let alone written. The HTTP/2 connector marks every request it sends
    /// so, first sends and resends alike. (`resend::mark_untaken` proves the same with the
    /// request's extensions, at the cost of an extensions map: the HTTP/1 connector's mark.)
    pub(crate) fn mark_taken(&mut self) -> TakenMark {
        let taken = Arc::new(AtomicBool::new(false));
        self.taken = Some(taken.clone());
        TakenMark(taken)
    }

    /// hyper looks at this copy. Set once: a load first, so that the polls after the first
    /// do not write the flag's cache line again.
    fn note_taken(&self) {
        if let Some(taken) = &self.taken {
            if !taken.load(Ordering::Relaxed) {
                taken.store(true, Ordering::Release);
            }
        }
    }

    /// No replay will be asked for any more: the frames recorded so far are dropped as soon
    /// as the source is read again (then the copy reading has read them all), and no new ones
    /// are kept.
    pub(crate) fn stop_recording(&self) {
        if let Some(shared) = &self.shared {
            lock(shared).limit = 0;
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.note_taken();
        let Some(shared) = &this.shared else {
            return Poll::Ready(None);
        };
        let mut recording = lock(shared);
        let recording = &mut *recording;
        if recording.generation != this.generation {
            return Poll::Ready(Some(Err(
                "this copy of the request body was replaced by a replay".into(),
            )));
        }
        if !recording.overflowed {
            if let Some(frame) = recording.frames.get(this.cursor) {
                this.cursor += 1;
                return Poll::Ready(Some(Ok(frame.frame())));
            }
        }
        loop {
            let Some(source) = recording.source.as_mut() else {
                return Poll::Ready(
                    recording
                        .failed
                        .then(|| Err("the request body failed while it was sent before".into())),
                );
            };
            let frame = match source.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    recording.source = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    recording.source = None;
                    recording.failed = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let recorded = match frame.into_data() {
                Ok(mut data) => Recorded::Data(data.copy_to_bytes(data.remaining())),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => Recorded::Trailers(trailers),
                    // A kind of frame this version of http-body does not know: skip it.
                    Err(_) => continue,
                },
            };
            let frame = recorded.frame();
            if !recording.overflowed {
                let len = match &recorded {
                    Recorded::Data(data) => data.len(),
                    Recorded::Trailers(_) => 0,
                };
                match recording.bytes.checked_add(len) {
                    Some(bytes) if bytes <= recording.limit => {
                        recording.bytes = bytes;
                        recording.frames.push(recorded);
                        this.cursor = recording.frames.len();
                    }
                    _ => {
                        recording.overflowed = true;
                        recording.frames = Vec::new();
                        recording.bytes = 0;
                    }
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.note_taken();
        let Some(shared) = &self.shared else {
            return true;
        };
        let recording = lock(shared);
        if recording.generation != self.generation {
            return false;
        }
        if !recording.overflowed && self.cursor < recording.frames.len() {
            return false;
        }
        match &recording.source {
            Some(source) => source.is_end_stream(),
            None => !recording.failed,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.note_taken();
        let Some(shared) = &self.shared else {
            return SizeHint::with_exact(0);
        };
        let recording = lock(shared);
        let kept: u64 = if recording.overflowed {
            0
        } else {
            recording
                .frames
                .get(self.cursor..)
                .unwrap_or_default()
                .iter()
                .map(|frame| match frame {
                    Recorded::Data(data) => data.len() as u64,
                    Recorded::Trailers(_) => 0,
                })
                .sum()
        };
        let rest = recording
            .source
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |source| source.size_hint());
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(kept));
        }
        hint.set_lower(rest.lower().saturating_add(kept));
        hint
    }
}

/// Tells whether hyper has looked at the copy of a body marked with
/// [`ReplayBody::mark_taken`].
pub(crate) struct TakenMark(Arc<AtomicBool>);

impl TakenMark {
    /// hyper has not looked at the body: it has not taken the request from its queue.
    pub(crate) fn is_untaken(&self) -> bool {
        !self.0.load(Ordering::Acquire)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, future::poll_fn};

    use super::*;

    /// A body that yields scripted frames, `Pending` (waking itself) where the script says
    /// so.
    struct Script(VecDeque<Option<Frame<Bytes>>>);

    impl Script {
        fn new(frames: impl IntoIterator<Item = Option<Frame<Bytes>>>) -> Self {
            Self(frames.into_iter().collect())
        }
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.pop_front() {
                Some(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn data(text: &'static str) -> Option<Frame<Bytes>> {
        Some(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    fn trailers() -> Option<Frame<Bytes>> {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", "0".parse().unwrap());
        Some(Frame::trailers(map))
    }

    #[derive(Debug, PartialEq)]
    enum Read {
        Data(String),
        Trailers(Vec<(String, String)>),
    }

    async fn next(body: &mut ReplayBody<Script>) -> Option<Result<Read, String>> {
        let frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
        Some(match frame {
            Err(error) => Err(error.to_string()),
            Ok(frame) => Ok(match frame.into_data() {
                Ok(data) => Read::Data(String::from_utf8(data.to_vec()).unwrap()),
                Err(frame) => Read::Trailers(
                    frame
                        .into_trailers()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                        .collect(),
                ),
            }),
        })
    }

    async fn read_all(body: &mut ReplayBody<Script>) -> Vec<Read> {
        let mut frames = Vec::new();
        while let Some(frame) = next(body).await {
            frames.push(frame.unwrap());
        }
        frames
    }

    fn d(text: &str) -> Read {
        Read::Data(text.to_owned())
    }

    /// A replay after a partial read sends the recorded frames and then the rest of the
    /// source; the copy it replaced fails if polled again.
    #[tokio::test]
    async fn a_replay_after_a_partial_read_sends_the_whole_body() {
        let mut first = ReplayBody::new(
            Script::new([data("ab"), None, data("cd"), data("ef")]),
            1024,
        );
        let keep = first.handle();
        assert_eq!(first.size_hint().exact(), None);
        assert_eq!(next(&mut first).await, Some(Ok(d("ab"))));
        assert_eq!(next(&mut first).await, Some(Ok(d("cd"))));

        let mut second = keep.replay().unwrap();
        assert!(!second.is_end_stream());
        assert!(second.size_hint().lower() >= 4, "the kept bytes count");
        assert!(matches!(next(&mut first).await, Some(Err(_))), "superseded");
        assert_eq!(read_all(&mut second).await, [d("ab"), d("cd"), d("ef")]);
        assert!(second.is_end_stream());

        // Once the source has ended, a replay knows its exact size.
        let mut third = keep.replay().unwrap();
        assert_eq!(third.size_hint().exact(), Some(6));
        assert_eq!(read_all(&mut third).await, [d("ab"), d("cd"), d("ef")]);
    }

    /// Trailers are recorded and replayed after the data.
    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut first = ReplayBody::new(Script::new([data("x"), trailers()]), 1024);
        let keep = first.handle();
        let sent = read_all(&mut first).await;
        let expected = [
            d("x"),
            Read::Trailers(vec![("grpc-status".into(), "0".into())]),
        ];
        assert_eq!(sent, expected);
        let mut again = keep.replay().unwrap();
        assert_eq!(read_all(&mut again).await, expected);
    }

    /// A body that outgrows the limit keeps streaming whole, but cannot be replayed; one that
    /// fits exactly can.
    #[tokio::test]
    async fn a_body_over_the_limit_streams_but_cannot_be_replayed() {
        let mut first = ReplayBody::new(Script::new([data("1234"), data("5678")]), 7);
        let keep = first.handle();
        assert_eq!(next(&mut first).await, Some(Ok(d("1234"))));
        assert!(keep.replay().is_ok(), "4 bytes still fit");
        // That replay superseded `first`: read on with a fresh copy.
        let mut first = keep.replay().unwrap();
        assert_eq!(read_all(&mut first).await, [d("1234"), d("5678")]);
        assert!(matches!(keep.replay(), Err(TooLarge)));

        let mut exact = ReplayBody::new(Script::new([data("1234"), data("567")]), 7);
        let keep = exact.handle();
        read_all(&mut exact).await;
        let mut again = keep.replay().unwrap();
        assert_eq!(read_all(&mut again).await, [d("1234"), d("567")]);
    }

    /// An empty body needs no recording, and replays as empty; a zero limit still allows the
    /// replay of a body nobody has read yet.
    #[tokio::test]
    async fn empty_and_unread_bodies_replay() {
        let empty = ReplayBody::new(Script::new([]), 0);
        assert!(empty.shared.is_none());
        let mut again = empty.replay().unwrap();
        assert!(again.is_end_stream());
        assert_eq!(again.size_hint().exact(), Some(0));
        assert_eq!(next(&mut again).await, None);

        let unread = ReplayBody::new(Script::new([data("abc")]), 0);
        let mut again = unread.replay().unwrap();
        assert_eq!(read_all(&mut again).await, [d("abc")]);
        assert!(unread.replay().is_err(), "read once, over a zero limit");
    }

    /// Once recording stops, the body still streams whole (also the frames recorded before),
    /// and the recording is dropped at the next read of the source.
    #[tokio::test]
    async fn stopping_the_recording_keeps_the_body_whole() {
        let mut first = ReplayBody::new(Script::new([data("ab"), data("cd"), data("ef")]), 1024);
        let keep = first.handle();
        assert_eq!(next(&mut first).await, Some(Ok(d("ab"))));
        let mut second = keep.replay().unwrap();
        keep.stop_recording();
        assert_eq!(read_all(&mut second).await, [d("ab"), d("cd"), d("ef")]);
        let recording = lock(keep.shared.as_ref().unwrap());
        assert!(recording.overflowed && recording.frames.is_empty());
    }
}
