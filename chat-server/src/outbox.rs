//! The per-connection outbound queue.
//!
//! A FIFO of encoded frames bounded in **bytes**, filled by any task (the
//! connection's reader with replies, the bus with events) and drained by
//! the connection's writer. A frame always fits an empty queue, however
//! large (a reply is never refused for its size alone); otherwise a frame
//! that would take the queued bytes over the bound is refused, and the
//! connection is cut as a slow consumer: a client that does not read can
//! hold at most the bound plus one frame of the server's memory. Its storage grows with use and is released when a
//! burst has drained, so an idle connection's queue holds no buffer: at a
//! million connections per server, a channel that preallocates its slots
//! (tokio's mpsc allocates 32 at creation, over 2 KiB with its padding)
//! would cost more than the rest of the idle connection.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// Storage kept after a burst drains; more is released.
const KEEP: usize = 16;

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for the writer.
    Queued,
    /// The queue holds its bound in bytes: the client is not reading.
    Full,
    /// The writer is gone.
    Closed,
}

/// A bounded outbound queue for one connection. See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    /// Bytes of the frames in `frames`.
    bytes: usize,
    closed: bool,
}

impl Outbox {
    /// An empty queue of at most `max_bytes` of frames (but always room for
    /// one frame).
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting.
    pub(crate) fn push(&self, frame: Utf8Bytes) -> Pushed {
        let mut st = self.lock();
        if st.closed {
            return Pushed::Closed;
        }
        let size = frame.len();
        if !st.frames.is_empty() && st.bytes.saturating_add(size) > self.max_bytes {
            return Pushed::Full;
        }
        st.bytes = st.bytes.saturating_add(size);
        st.frames.push_back(frame);
        drop(st);
        // Stores a permit if the writer is not waiting yet: no lost wake-up.
        self.ready.notify_one();
        Pushed::Queued
    }

    /// The oldest queued frame, if any, without waiting.
    pub(crate) fn try_pop(&self) -> Option<Utf8Bytes> {
        let mut st = self.lock();
        let frame = st.frames.pop_front();
        if let Some(f) = &frame {
            st.bytes = st.bytes.saturating_sub(f.len());
        }
        if st.frames.is_empty() && st.frames.capacity() > KEEP {
            st.frames = VecDeque::new();
        }
        frame
    }

    /// The oldest queued frame, waiting for one.
    pub(crate) async fn pop(&self) -> Utf8Bytes {
        loop {
            if let Some(frame) = self.try_pop() {
                return frame;
            }
            self.ready.notified().await;
        }
    }

    /// Refuses every later push (the writer is gone) and drops what is
    /// queued.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.frames = VecDeque::new();
        st.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn frames_come_out_in_order_up_to_the_byte_bound() {
        let q = Outbox::new(6);
        for t in ["aa", "bb", "cc"] {
            assert_eq!(q.push(Utf8Bytes::from_static(t)), Pushed::Queued);
        }
        assert_eq!(q.push(Utf8Bytes::from_static("d")), Pushed::Full);
        assert_eq!(q.pop().await.as_str(), "aa");
        assert_eq!(q.push(Utf8Bytes::from_static("ee")), Pushed::Queued);
        assert_eq!(q.push(Utf8Bytes::from_static("f")), Pushed::Full);
        let rest: Vec<_> = std::iter::from_fn(|| q.try_pop()).collect();
        assert_eq!(rest, ["bb", "cc", "ee"].map(Utf8Bytes::from_static));
        assert!(q.try_pop().is_none());
    }

    #[test]
    fn a_frame_larger_than_the_bound_fits_an_empty_queue_only() {
        let q = Outbox::new(4);
        let big = Utf8Bytes::from_static("0123456789");
        assert_eq!(
            q.push(big.clone()),
            Pushed::Queued,
            "an empty queue takes it"
        );
        assert_eq!(q.push(Utf8Bytes::from_static("x")), Pushed::Full);
        assert!(q.try_pop().is_some());
        assert_eq!(q.push(Utf8Bytes::from_static("x")), Pushed::Queued);
        assert_eq!(q.push(big), Pushed::Full, "not behind another frame");
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_a_push_from_another_task() {
        let q = Arc::new(Outbox::new(8));
        let writer = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.push(Utf8Bytes::from_static("x"));
        assert_eq!(writer.await.unwrap().as_str(), "x");
    }

    #[test]
    fn storage_is_released_after_a_burst_and_closing_refuses_pushes() {
        let q = Outbox::new(10_000);
        for _ in 0..500 {
            q.push(Utf8Bytes::from_static("burst"));
        }
        while q.try_pop().is_some() {}
        assert_eq!(q.lock().frames.capacity(), 0);
        q.push(Utf8Bytes::from_static("kept"));
        q.close();
        assert_eq!(q.push(Utf8Bytes::from_static("late")), Pushed::Closed);
        assert!(q.try_pop().is_none());
    }
}
