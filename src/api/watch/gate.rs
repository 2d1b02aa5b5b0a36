//! A future or stream polled only after it woke its task.
//!
//! A watch stream's task waits on several sources at once (its client's requests, its queue
//! closing, a tick, the member stopping) and is woken by one of them, the window's next
//! revision, on every revision. A `select!` polls every source on every wake; some polls cost a
//! lock shared with the whole connection (the request side of an HTTP/2 stream) or with every
//! stream (a `watch` channel's waiters). [`Gated`] keeps the source and the waker it registered
//! across the task's turns, and polls it again only once that waker fired: a wake for a
//! revision then costs the other sources one atomic swap each.
//!
//! Invariants:
//! - The inner future or stream is polled on the first poll, after each wake it sent, and
//!   after each item it yielded (it may hold more than its waker will announce): a wake is
//!   never lost, so `Gated` never waits where its inner would not.
//! - The task's waker is registered on every poll (and cloned only when it changed), so a wake
//!   reaches whichever task polls it last.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tokio_stream::Stream;

/// What the inner's waker sets, and the task it wakes.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pub struct Gated<T> {
    inner: T,
    flag: Arc<Flag>,
    /// The waker handed to `inner`: `flag`'s.
    waker: Waker,
}

impl<T> Gated<T> {
    pub fn new(inner: T) -> Gated<T> {
        let flag = Arc::new(Flag { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        let waker = Waker::from(flag.clone());
        Gated { inner, flag, waker }
    }

    /// Polls `inner` with `poll` if it is due — on the first poll, after it woke the task, or
    /// after it was ready (it may hold more than a wake will say) — with the flag's waker;
    /// registers the task's waker either way.
    fn poll_gated<R>(
        &mut self,
        cx: &Context<'_>,
        poll: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R>
    where
        T: Unpin,
    {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = poll(Pin::new(&mut self.inner), &mut Context::from_waker(&self.waker));
        if polled.is_ready() {
            self.flag.woken.store(true, Ordering::Release);
        }
        polled
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().poll_gated(cx, |inner, cx| inner.poll(cx))
    }
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.get_mut().poll_gated(cx, |inner, cx| inner.poll_next(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A stream that counts its polls and yields what was pushed into its channel.
    struct Counted {
        rx: tokio::sync::mpsc::UnboundedReceiver<u32>,
        polls: Arc<AtomicUsize>,
    }

    impl Stream for Counted {
        type Item = u32;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.rx.poll_recv(cx)
        }
    }

    /// `what`, or a failure naming it if it does not come within a (paused) minute.
    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), f).await.unwrap_or_else(|_| panic!("{what} never came"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_stream_is_polled_only_after_it_woke_and_loses_no_item() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let mut gated = Gated::new(Counted { rx, polls: polls.clone() });
        let mut other = tokio::time::interval(Duration::from_millis(1));
        // Woken 20 times by another source: the gated stream is polled once (to register).
        for _ in 0..20 {
            tokio::select! {
                biased;
                _ = gated.next() => panic!("nothing was sent"),
                _ = other.tick() => {}
            }
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, then left until it woke");
        // Two items sent before it is polled again: both come out, in order, though the
        // second announced itself with no wake of its own.
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(within("the first item", gated.next()).await, Some(1));
        assert_eq!(within("the second item", gated.next()).await, Some(2));
        drop(tx);
        assert_eq!(within("the end", gated.next()).await, None, "its end comes through");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_interval_keeps_ticking() {
        // An interval re-arms its timer without a new registration after a tick: the gate must
        // poll it again after each tick, or it would never tick twice.
        let mut ticks = Gated::new(tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(
            Duration::from_secs(1),
        )));
        let start = tokio::time::Instant::now();
        for n in 0..5u64 {
            within("a tick", ticks.next()).await.expect("an interval never ends");
            assert_eq!(start.elapsed(), Duration::from_secs(n), "tick {n} on time");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_future_completes_when_its_inner_does() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let mut gated = Gated::new(rx);
        let mut other = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..3 {
            tokio::select! {
                biased;
                _ = &mut gated => panic!("nothing was sent"),
                _ = other.tick() => {}
            }
        }
        tx.send(7).unwrap();
        assert_eq!(within("the value", &mut gated).await, Ok(7));
    }
}
