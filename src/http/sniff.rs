//! A read-side observer of an HTTP/2 connection's frames: tells when the server's first
//! frame (its preface, a SETTINGS frame) has arrived, when it has sent its first response
//! (`HEADERS` on a stream), and when it has sent `GOAWAY` (with the frame's payload: last
//! stream, error code, the start of its debug data).
//!
//! hyper's HTTP/2 handshake returns before the server has said anything, and hyper does not
//! report a `GOAWAY`. Both matter here: a server that accepts TCP and closes at once must not
//! count as connected, and after a `GOAWAY` new requests belong on a new connection while the
//! streams in flight finish on the old one. Why the server said goodbye matters too: a gRPC
//! server that finds our keep-alive pings too frequent says so in the `GOAWAY` (error
//! `ENHANCE_YOUR_CALM`, debug data `too_many_pings`). Reading the 9-byte frame headers, and
//! the first bytes of a `GOAWAY`'s payload, as the bytes go by costs a few comparisons per
//! frame and changes nothing in the stream.

use std::{
    fmt,
    future::{Future, poll_fn},
    pin::pin,
    sync::Arc,
    task::Poll,
};

use tokio::sync::watch;

use super::{
    gate::GoAwayGate,
    observe::{Observed, ReadObserver},
};

/// What the server has sent so far, and how the connection ended.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    /// The server's preface has arrived: a first frame that is a `SETTINGS` frame (on stream
    /// 0, not an acknowledgement), with all of its payload.
    pub(crate) preface: bool,
    /// The server's first frame was something else: it does not speak HTTP/2 (an HTTP/1
    /// error page parses as a frame header too), or is hostile.
    pub(crate) not_a_preface: bool,
    /// HTTP/2: the connection reached the server's request limit and takes no new request
    /// (see `ahead`).
    pub(crate) retired: bool,
    /// The server sent `GOAWAY`.
    pub(crate) goaway: bool,
    /// The server has answered at least one request: a `HEADERS` frame arrived on a stream.
    /// (HTTP/1 sets it when a response head has arrived.)
    pub(crate) served: bool,
    /// The connection task has ended: `Ok` for a clean end, else its error.
    pub(crate) ended: Option<Result<(), Arc<hyper::Error>>>,
    /// The payload of the latest `GOAWAY`; `None` before one, or if it was too short to
    /// hold a last stream id and an error code (then `goaway` is still set).
    pub(crate) goaway_frame: Option<GoAway>,
}

impl Status {
    /// Whether the server has served on this connection: it sent a response's `HEADERS`, or
    /// its `GOAWAY` says it took a stream of ours (a last stream id other than 0, and other
    /// than the maximum, which a two-step shutdown's first `GOAWAY` carries whatever was
    /// sent). A server that takes a burst of requests and says goodbye in the same breath
    /// (nginx at `keepalive_requests`) may send its `GOAWAY` before the first response.
    ///
    /// `asked`: whether a request was sent on the connection. Before one, a `GOAWAY` naming a
    /// stream names none of ours (a hostile or broken server), and is no service.
    pub(crate) fn has_served(&self, asked: bool) -> bool {
        self.served
            || asked
                && self.goaway_frame.as_ref().is_some_and(|goaway| {
                    goaway.last_stream_id != 0 && goaway.last_stream_id != MAX_STREAM_ID
                })
    }
}

/// The status once `done` holds for it (or once the connection task is gone: then the last
/// status seen).
///
/// `done` is checked against the current status on every poll, not only when a change is
/// notified: a watch's value is visible to `borrow` a moment before its waiters are woken, and
/// a clone that saw the change (say, `poll_ready` refusing a request after `GOAWAY`) may ask
/// for the close signal's verdict in that moment. The layer asks for it at once, with one
/// poll: this future must be ready then.
pub(crate) async fn until(
    mut status: watch::Receiver<Status>,
    done: fn(&Status) -> bool,
) -> Status {
    let peek = status.clone();
    let mut changed = pin!(async move {
        let _ = status.wait_for(done).await;
    });
    poll_fn(|cx| {
        if done(&peek.borrow()) {
            return Poll::Ready(());
        }
        changed.as_mut().poll(cx)
    })
    .await;
    peek.borrow().clone()
}

/// The largest stream id (31 bits).
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// The payload of a `GOAWAY` frame (RFC 9113, 6.8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GoAway {
    /// The highest stream id the server may have processed.
    pub(crate) last_stream_id: u32,
    /// The error code: 0 is `NO_ERROR` (an orderly goodbye).
    pub(crate) error_code: u32,
    /// The start of the debug data (at most [`GOAWAY_DEBUG_DATA`] bytes).
    pub(crate) debug_data: Vec<u8>,
}

impl GoAway {
    /// The error code a server sends to a peer it finds abusive, e.g. pinging too often.
    pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// Whether this is a gRPC server's complaint about keep-alive pings (gRFC A8):
    /// `ENHANCE_YOUR_CALM` with the debug data `too_many_pings`.
    pub(crate) fn is_too_many_pings(&self) -> bool {
        self.error_code == Self::ENHANCE_YOUR_CALM && self.debug_data == b"too_many_pings"
    }
}

impl fmt::Display for GoAway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GOAWAY error code {:#x}, last stream {}, debug data {:?}",
            self.error_code,
            self.last_stream_id,
            String::from_utf8_lossy(&self.debug_data),
        )
    }
}

/// Called with each `GOAWAY` before it is published in [`Status`].
pub(crate) type OnGoAway = Arc<dyn Fn(&GoAway) + Send + Sync>;

const FRAME_HEADER: usize = 9;
const GOAWAY: u8 = 0x7;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
/// Last stream id and error code.
const GOAWAY_FIXED: usize = 8;
/// How much of a `GOAWAY`'s debug data is kept.
pub(crate) const GOAWAY_DEBUG_DATA: usize = 64;

/// `io` with its inbound HTTP/2 frame headers observed.
pub(crate) type Sniff<T> = Observed<T, FrameWatch>;

/// Publishes in a [`Status`] what the frames read from a connection say.
pub(crate) struct FrameWatch {
    status: Arc<watch::Sender<Status>>,
    frames: Frames,
    on_goaway: Option<OnGoAway>,
    gate: Option<Arc<GoAwayGate>>,
    /// Why the gate is closed, if it is.
    holding: Option<Hold>,
}

/// What the reader (h2) is being handed while the gate is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// A `GOAWAY`: the gate opens at the reader's next read after the whole frame (h2 reads
    /// again only once it has handled every whole frame it holds).
    GoAway,
    /// The end of the stream, or a read error: h2 takes it in at once (the connection's error
    /// is set before h2 does anything else), so the gate opens at its next read or write (h2
    /// shuts the connection down next) or when the connection is dropped.
    End,
}

impl FrameWatch {
    pub(crate) fn new(status: Arc<watch::Sender<Status>>) -> Self {
        Self {
            status,
            frames: Frames::default(),
            on_goaway: None,
            gate: None,
            holding: None,
        }
    }

    /// Closes `gate` while each `GOAWAY`, or the end of the stream, is handed to the reader
    /// (h2), until it has taken it in (see [`Hold`]). A request hyper's dispatcher takes while
    /// h2 reads the end would fail with h2's "connection closed" error, whether h2 opened its
    /// stream or not; with the gate, the dispatcher takes none then, and hyper hands the
    /// requests it has not taken back when it stops, to be sent again.
    pub(crate) fn gate(mut self, gate: Arc<GoAwayGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Calls `hook` with each `GOAWAY`, before it is published in the status (so whoever
    /// reacts to the status sees the hook's effects).
    pub(crate) fn on_goaway(mut self, hook: OnGoAway) -> Self {
        self.on_goaway = Some(hook);
        self
    }
}

impl FrameWatch {
    /// Closes the gate (if there is one) for `hold`.
    fn hold(&mut self, hold: Hold) {
        if let Some(gate) = &self.gate {
            if self.holding.is_none() {
                gate.deliver();
            }
            self.holding = Some(hold);
        }
    }

    /// Opens the gate.
    fn release(&mut self) {
        if self.holding.take().is_some() {
            if let Some(gate) = &self.gate {
                gate.delivered();
            }
        }
    }
}

impl ReadObserver for FrameWatch {
    fn observe(&mut self, bytes: &[u8]) {
        self.frames
            .observe(bytes, &self.status, self.on_goaway.as_ref());
        if std::mem::take(&mut self.frames.goaway_started) {
            self.hold(Hold::GoAway);
        }
    }

    fn before_read(&mut self) {
        match self.holding {
            // h2 reads again only once it has handled every whole frame it holds.
            Some(Hold::GoAway) if !self.frames.in_goaway => self.release(),
            Some(Hold::End) => self.release(),
            _ => {}
        }
    }

    fn at_end(&mut self) {
        self.hold(Hold::End);
    }

    fn before_write(&mut self) {
        if self.holding == Some(Hold::End) {
            self.release();
        }
    }
}

impl Drop for FrameWatch {
    fn drop(&mut self) {
        self.release();
    }
}

/// The frame parser's state, carried across reads.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; FRAME_HEADER],
    filled: usize,
    /// Payload bytes of the current frame still to go by.
    payload: usize,
    /// The kept bytes of the current `GOAWAY`'s payload, while it is being read.
    goaway: Option<Vec<u8>>,
    /// Whether a frame header has been read yet.
    first_seen: bool,
    /// The first frame is the server's `SETTINGS`, whose payload is still being read.
    in_preface: bool,
    /// A response's `HEADERS` has been seen (and published: once, not on every frame).
    served: bool,
    /// A `GOAWAY` frame's header was read (since the flag was last taken).
    goaway_started: bool,
    /// The current frame is a `GOAWAY` whose payload is still to go by.
    in_goaway: bool,
}

impl Frames {
    /// Walks `bytes` through the frame parser.
    fn observe(
        &mut self,
        mut bytes: &[u8],
        status: &watch::Sender<Status>,
        on_goaway: Option<&OnGoAway>,
    ) {
        while !bytes.is_empty() {
            if self.payload > 0 {
                let take = self.payload.min(bytes.len());
                if let Some(kept) = &mut self.goaway {
                    let keep = (GOAWAY_FIXED + GOAWAY_DEBUG_DATA - kept.len()).min(take);
                    kept.extend_from_slice(&bytes[..keep]);
                }
                self.payload -= take;
                bytes = &bytes[take..];
                if self.payload == 0 {
                    self.in_goaway = false;
                    if let Some(kept) = self.goaway.take() {
                        publish_goaway(status, parse_goaway(&kept), on_goaway);
                    }
                    if std::mem::take(&mut self.in_preface) {
                        status.send_modify(|status| status.preface = true);
                    }
                }
                continue;
            }
            let take = (FRAME_HEADER - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == FRAME_HEADER {
                self.filled = 0;
                let header = &self.header;
                self.payload = usize::from(header[0]) << 16
                    | usize::from(header[1]) << 8
                    | usize::from(header[2]);
                let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                let stream = stream & 0x7fff_ffff;
                if !std::mem::replace(&mut self.first_seen, true) {
                    if header[3] == SETTINGS && stream == 0 && header[4] & ACK == 0 {
                        match self.payload {
                            0 => status.send_modify(|status| status.preface = true),
                            _ => self.in_preface = true,
                        }
                    } else {
                        status.send_modify(|status| status.not_a_preface = true);
                    }
                }
                if header[3] == HEADERS && stream != 0 && !std::mem::replace(&mut self.served, true)
                {
                    status.send_if_modified(|status| !std::mem::replace(&mut status.served, true));
                }
                if header[3] == GOAWAY {
                    self.goaway_started = true;
                    self.in_goaway = self.payload > 0;
                    if self.payload < GOAWAY_FIXED {
                        // Malformed (hyper ends the connection for it): a goodbye without
                        // details. Its few bytes, if any, are skipped.
                        publish_goaway(status, None, on_goaway);
                    } else {
                        self.goaway = Some(Vec::with_capacity(
                            self.payload.min(GOAWAY_FIXED + GOAWAY_DEBUG_DATA),
                        ));
                    }
                }
            }
        }
    }
}

/// The `GOAWAY` in `kept` (the start of its payload), if it holds the fixed fields.
fn parse_goaway(kept: &[u8]) -> Option<GoAway> {
    let fixed: &[u8; GOAWAY_FIXED] = kept.get(..GOAWAY_FIXED)?.try_into().ok()?;
    let [s0, s1, s2, s3, e0, e1, e2, e3] = *fixed;
    Some(GoAway {
        // The top bit is reserved.
        last_stream_id: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
        error_code: u32::from_be_bytes([e0, e1, e2, e3]),
        debug_data: kept[GOAWAY_FIXED..].to_vec(),
    })
}

/// Calls the hook, then publishes the `GOAWAY` (the latest one's payload replaces an earlier
/// one's).
fn publish_goaway(
    status: &watch::Sender<Status>,
    frame: Option<GoAway>,
    on_goaway: Option<&OnGoAway>,
) {
    if let (Some(hook), Some(frame)) = (on_goaway, &frame) {
        hook(frame);
    }
    status.send_if_modified(|status| {
        let changed = !status.goaway || frame.is_some();
        status.goaway = true;
        if frame.is_some() {
            status.goaway_frame = frame;
        }
        changed
    });
}

#[cfg(test)]
mod tests {
    use std::{io, task::Context};

    use futures_util::FutureExt;

    use super::*;

    /// The moment between a status change and the wake-up of its waiters: `until` polled
    /// before the change is ready on its next poll, woken or not.
    #[test]
    fn until_sees_a_change_whose_wake_up_has_not_come() {
        let status = watch::Sender::new(Status::default());
        let mut closing = Box::pin(until(status.subscribe(), |status| status.goaway));
        assert!(closing.as_mut().now_or_never().is_none());
        // Changed, but no waiter told (as in the moment before `send_if_modified` notifies).
        status.send_if_modified(|status| {
            status.goaway = true;
            false
        });
        let seen = closing
            .now_or_never()
            .expect("ready on the first poll after the change");
        assert!(seen.goaway);
    }

    #[tokio::test]
    async fn until_wakes_on_a_change() {
        let status = watch::Sender::new(Status::default());
        let closing = tokio::spawn(until(status.subscribe(), |status| status.ended.is_some()));
        tokio::task::yield_now().await;
        status.send_modify(|status| status.ended = Some(Ok(())));
        assert!(closing.await.unwrap().ended.is_some());
    }

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
        run_with(chunks, None)
    }

    fn run_with(chunks: &[&[u8]], hook: Option<&OnGoAway>) -> Status {
        let status = watch::Sender::new(Status::default());
        let mut frames = Frames::default();
        for chunk in chunks {
            frames.observe(chunk, &status, hook);
        }
        status.borrow().clone()
    }

    fn goaway_payload(last_stream_id: u32, error_code: u32, debug_data: &[u8]) -> Vec<u8> {
        let mut payload = last_stream_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&error_code.to_be_bytes());
        payload.extend_from_slice(debug_data);
        payload
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

    /// The preface is the server's first frame when it is a `SETTINGS` frame on stream 0,
    /// not an acknowledgement, once all of its payload has arrived: a header followed by a
    /// trickled payload is no preface yet. Any other first frame is no preface at all (an
    /// HTTP/1 answer parses as a frame header too).
    #[test]
    fn the_preface_is_a_whole_settings_frame_and_nothing_else() {
        let settings = frame(SETTINGS, &[0; 12]);
        let partial = run(&[&settings[..FRAME_HEADER + 5]]);
        assert!(
            !partial.preface && !partial.not_a_preface,
            "payload still coming"
        );
        assert!(run(&[&settings[..FRAME_HEADER + 5], &settings[FRAME_HEADER + 5..]]).preface);
        assert!(
            run(&[&frame(SETTINGS, &[])]).preface,
            "an empty SETTINGS is whole at once"
        );

        let not = |bytes: &[u8]| {
            let status = run(&[bytes]);
            !status.preface && status.not_a_preface
        };
        assert!(not(&frame(HEADERS, &[0; 4])), "HEADERS first");
        assert!(
            not(&stream_frame(SETTINGS, 1, &[0; 6])),
            "SETTINGS on a stream"
        );
        let mut ack = frame(SETTINGS, &[]);
        ack[4] = ACK;
        assert!(not(&ack), "a SETTINGS acknowledgement first");
        assert!(not(b"HTTP/1.1 400 Bad Request\r\n\r\n"), "an HTTP/1 answer");
        // What follows a wrong first frame does not make it a preface.
        let status = run(&[&frame(HEADERS, &[0; 4]), &frame(SETTINGS, &[])]);
        assert!(!status.preface && status.not_a_preface);
    }

    /// A `GOAWAY` naming a stream is service only once a request was sent on the connection.
    #[test]
    fn a_goaway_naming_a_stream_before_any_request_is_no_service() {
        let status = run(&[
            &frame(SETTINGS, &[]),
            &frame(GOAWAY, &goaway_payload(1, 0, b"")),
        ]);
        assert!(!status.has_served(false));
        assert!(status.has_served(true));
    }

    /// The GOAWAY payload is parsed wherever the reads split it: last stream id (reserved bit
    /// masked), error code, debug data; the hook runs before the status shows the GOAWAY.
    #[test]
    fn parses_the_goaway_payload_across_split_reads() {
        let settings = frame(0x4, &[0; 6]);
        let goaway = frame(
            GOAWAY,
            &goaway_payload(0x8000_0003, GoAway::ENHANCE_YOUR_CALM, b"too_many_pings"),
        );
        let ping = frame(0x6, &[1; 8]);
        let stream: Vec<u8> = [settings.clone(), goaway, ping].concat();
        let expected = GoAway {
            last_stream_id: 3,
            error_code: 0xb,
            debug_data: b"too_many_pings".to_vec(),
        };
        for split in 1..stream.len() {
            let (a, b) = stream.split_at(split);
            let status = run(&[a, b]);
            assert!(status.goaway, "split at {split}");
            assert_eq!(
                status.goaway_frame.as_ref(),
                Some(&expected),
                "split at {split}"
            );
        }
        // One byte per read.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes).goaway_frame, Some(expected.clone()));
        assert!(expected.is_too_many_pings());

        // Before the payload is complete, the GOAWAY is not published, so the hook's effects
        // come first.
        let head = &stream[..settings.len() + FRAME_HEADER + 5];
        let status = run(&[head]);
        assert!(!status.goaway && status.goaway_frame.is_none());

        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let hook: OnGoAway = Arc::new(move |frame: &GoAway| {
            record.lock().unwrap().push(frame.clone());
        });
        let status = run_with(&[&stream], Some(&hook));
        assert_eq!(status.goaway_frame, Some(expected.clone()));
        assert_eq!(*seen.lock().unwrap(), vec![expected]);
    }

    /// Debug data beyond the first 64 bytes is dropped (and the frames after it still parse);
    /// the latest GOAWAY's payload replaces an earlier one's.
    #[test]
    fn keeps_the_first_64_bytes_of_debug_data_and_the_latest_goaway() {
        let long: Vec<u8> = (0..200u8).collect();
        let first = frame(GOAWAY, &goaway_payload(u32::MAX >> 1, 0, &long));
        let second = frame(GOAWAY, &goaway_payload(5, 0, b""));
        let status = run(&[&first]);
        let kept = status.goaway_frame.expect("a GOAWAY");
        assert_eq!(kept.debug_data, &long[..GOAWAY_DEBUG_DATA]);
        assert_eq!(kept.last_stream_id, u32::MAX >> 1);
        assert!(!kept.is_too_many_pings());

        let stream: Vec<u8> = [first, second].concat();
        for split in [3, 17, 80, 217, 220, stream.len() - 1] {
            let (a, b) = stream.split_at(split);
            let status = run(&[a, b]);
            assert_eq!(
                status.goaway_frame,
                Some(GoAway {
                    last_stream_id: 5,
                    error_code: 0,
                    debug_data: Vec::new(),
                }),
                "split at {split}"
            );
        }
    }

    /// A GOAWAY too short for its fixed fields is still a goodbye, without details, and does
    /// not call the hook; a connection cut inside a GOAWAY's payload publishes nothing; no
    /// input panics.
    #[test]
    fn a_short_or_truncated_goaway_never_panics() {
        let called = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = called.clone();
        let hook: OnGoAway = Arc::new(move |_: &GoAway| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        for len in 0..GOAWAY_FIXED {
            let short = frame(GOAWAY, &vec![0xff; len]);
            let after = frame(0x4, &[0; 6]);
            let stream: Vec<u8> = [short, after].concat();
            for split in 1..stream.len() {
                let (a, b) = stream.split_at(split);
                let status = run_with(&[a, b], Some(&hook));
                assert!(status.goaway, "length {len}, split at {split}");
                assert!(status.goaway_frame.is_none(), "length {len}");
            }
        }
        assert_eq!(called.load(std::sync::atomic::Ordering::Relaxed), 0);

        let truncated = frame(GOAWAY, &goaway_payload(1, 0xb, b"too_many_pings"));
        let status = run(&[&truncated[..FRAME_HEADER + 9]]);
        assert!(!status.goaway && status.goaway_frame.is_none());

        // Arbitrary bytes: never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200 {
            let mut noise = Vec::with_capacity(300);
            for _ in 0..300 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                noise.push(if seed % 5 == 0 {
                    GOAWAY
                } else {
                    (seed >> 32) as u8
                });
            }
            let chunks: Vec<&[u8]> = noise.chunks(1 + (seed % 37) as usize).collect();
            let _ = run_with(&chunks, Some(&hook));
        }
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
        assert!(!status.has_served(true));
    }

    /// A `GOAWAY` naming a stream the server took counts as having served, also before any
    /// response arrived (a burst taken and a goodbye in one breath); last stream 0, or the
    /// maximum of a two-step shutdown's first `GOAWAY`, does not.
    #[test]
    fn a_goaway_naming_a_taken_stream_counts_as_served() {
        let settings = frame(0x4, &[]);
        let served = |last: u32| {
            run(&[&settings, &frame(GOAWAY, &goaway_payload(last, 0, b""))]).has_served(true)
        };
        assert!(served(1));
        assert!(served(399));
        assert!(!served(0));
        assert!(!served(0x7fff_ffff));
        let answered = run(&[&settings, &stream_frame(HEADERS, 1, &[0x88])]);
        assert!(answered.has_served(true) && answered.goaway_frame.is_none());
    }

    /// Whether `gate` lets the dispatcher run now.
    fn open(gate: &GoAwayGate) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        gate.dispatch(&mut cx, |_| Poll::Ready(())).is_ready()
    }

    /// A `GOAWAY` closes the gate as its first bytes pass, and it stays closed until the
    /// reader asks for more after the whole frame (h2 has handled it by then); a connection
    /// dropped with the gate closed opens it.
    #[test]
    fn a_goaway_closes_the_gate_until_the_read_after_it() {
        let gate = Arc::new(GoAwayGate::default());
        let mut watch =
            FrameWatch::new(Arc::new(watch::Sender::new(Status::default()))).gate(gate.clone());
        let goaway = frame(GOAWAY, &[0, 0, 0, 1, 0, 0, 0, 0]);
        let settings = frame(SETTINGS, &[]);
        let data = stream_frame(0x0, 1, b"hello");
        let mut read = |bytes: &[u8]| {
            watch.before_read();
            watch.observe(bytes);
        };
        read(&settings);
        read(&data);
        assert!(open(&gate), "no GOAWAY yet");
        read(&goaway[..12]);
        assert!(!open(&gate), "a GOAWAY's first bytes were handed over");
        read(&goaway[12..]);
        assert!(!open(&gate), "the reader has not asked for more since");
        read(&data[..3]);
        assert!(open(&gate), "asked for more after the whole GOAWAY");
        read(&[&data[3..], &goaway[..]].concat());
        assert!(!open(&gate));
        drop(watch);
        assert!(open(&gate), "opened by the connection's drop");
    }

    /// The end of the stream closes the gate as the reader (h2) gets it, and the reader's
    /// next write (h2 shuts the connection down next), next read or drop opens it; so does a
    /// read error. A read without room is not the end.
    #[tokio::test]
    async fn the_end_of_the_stream_closes_the_gate_until_the_readers_next_step() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_test::io::Builder;

        let settings = frame(SETTINGS, &[]);
        // The connection's I/O: reads from tokio-test's mock, which end once its script is
        // done; writes to a sink.
        let watched = |reads: &mut Builder| {
            let gate = Arc::new(GoAwayGate::default());
            let watch =
                FrameWatch::new(Arc::new(watch::Sender::new(Status::default()))).gate(gate.clone());
            let io = tokio::io::join(reads.build(), tokio::io::sink());
            (Observed::new(io, watch), gate)
        };
        let mut buf = [0; 64];

        // The end, then h2's shutdown.
        let (mut io, gate) = watched(Builder::new().read(&settings));
        assert_eq!(io.read(&mut buf).await.unwrap(), settings.len());
        assert!(open(&gate), "frames only");
        assert_eq!(io.read(&mut []).await.unwrap(), 0);
        assert!(open(&gate), "a read without room is not the end");
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(!open(&gate), "the end was handed to the reader");
        io.shutdown().await.unwrap();
        assert!(
            open(&gate),
            "the reader shuts down: it has taken the end in"
        );

        // The end, then another read.
        let (mut io, gate) = watched(&mut Builder::new());
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(!open(&gate));
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(!open(&gate), "closed again by the second end");
        io.flush().await.unwrap();
        assert!(open(&gate));

        // A read error, then the connection dropped.
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let (mut io, gate) = watched(Builder::new().read_error(reset));
        io.read(&mut buf).await.unwrap_err();
        assert!(!open(&gate), "a read error was handed to the reader");
        drop(io);
        assert!(open(&gate), "opened by the connection's drop");

        // The end in the middle of a GOAWAY: released by the reader's next step all the same.
        let goaway = frame(GOAWAY, &[0, 0, 0, 1, 0, 0, 0, 0]);
        let (mut io, gate) = watched(Builder::new().read(&goaway[..12]));
        assert_eq!(io.read(&mut buf).await.unwrap(), 12);
        assert!(!open(&gate), "a GOAWAY's first bytes");
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(!open(&gate), "then the end");
        io.write_all(b"x").await.unwrap();
        assert!(open(&gate));
    }
}
