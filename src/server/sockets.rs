//! Accepted sockets of the client and peer ports: TCP_NODELAY on each; on the client port,
//! writes gathered until a flush; on the peer port, the message wire told apart from HTTP/2 by
//! a connection's first bytes ([`sniffed`]).
//!
//! Why gather: whenever the socket says it takes vectored writes (a TCP socket does), h2 (under
//! tonic) ends a write at every DATA frame whose payload is 256 bytes or more: it writes its
//! buffer and that payload in one `writev`, and flushes. A watch stream's response for one put
//! is about 300 bytes, so a member fanning one revision out to 3,000 watchers made thousands
//! of `writev`s (docs/performance.md, "Writes gathered on the client port"). To a socket that
//! does not take vectored writes, h2 copies payloads under 1 KiB into its 16 KiB write buffer
//! instead, and writes that buffer once it fills or the connection has nothing more to send;
//! a larger payload it then writes in two calls, its buffer first. [`Gathered`] is such a
//! socket: it says it takes no vectored writes, holds a write under [`DIRECT_BYTES`] until the
//! flush, and sends a larger one in one `writev` behind what it holds, without copying it —
//! so a large frame still costs one system call.
//!
//! h2 flushes at the end of every turn of its connection task, and that task is woken by every
//! response a stream hands it. A member fanning a revision out to many watch streams of one
//! connection ran their tasks on one worker and the connection's on the other, which flushed
//! after each response: one `sendto` of 321 bytes per event (measured with strace at 10,000
//! watchers). So a flush of less than [`YIELD_BELOW`] yields once first: it wakes its task and
//! returns Pending, which puts the connection's task at the back of its worker's queue, behind
//! the tasks ready now — those streams' tasks, whose responses join the same write. The next
//! flush writes, even if the socket makes it wait first: a response waits for the tasks that
//! were ready before its connection's (in the worker's queue, or the runtime's shared one when
//! that overflows). A yield that gathered nothing costs a turn of the connection's task for no
//! gain, so after one the next [`SKIP_AFTER_NO_GAIN`] flushes write at once. That is also what
//! a connection still receiving requests gets: hyper polls h2 again at once for the next
//! request, which flushes again with nothing added.
//!
//! Invariants:
//! - Bytes reach the socket in the order they were written, each once; a flush returns ready
//!   only once everything written before it reached the socket.
//! - A flush returns Pending without writing at most once in a row (and wakes its task then);
//!   the flush after it writes what is held. After a yield that gathered nothing, the next
//!   [`SKIP_AFTER_NO_GAIN`] flushes do not yield.
//! - At most [`HOLD_BYTES`] are held per connection, in a buffer of at most that capacity,
//!   given back at a flush when it grew past [`KEEP_BYTES`] (an idle connection holds at most
//!   that).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Most bytes held before a write goes to the socket: h2's write buffer (16 KiB) and a frame
/// of the default largest size (16 KiB) after it.
pub const HOLD_BYTES: usize = 32 * 1024;
/// A write of this many bytes or more is not held (copied) but sent at once, in one call
/// behind what is held.
pub const DIRECT_BYTES: usize = 4 * 1024;
/// Capacity of the held buffer kept after a flush; a larger one is given back.
pub const KEEP_BYTES: usize = 4 * 1024;
/// A flush of fewer held bytes yields once before it writes them.
pub const YIELD_BELOW: usize = 16 * 1024;
/// Flushes that do not yield after a yield that gathered nothing.
pub const SKIP_AFTER_NO_GAIN: u32 = 64;

/// Accepted connections of `listener`, with TCP_NODELAY set on each: small responses must not
/// wait for Nagle's algorithm (≈ 40 ms with delayed ACKs). `Server::tcp_nodelay` only applies
/// to sockets tonic binds itself, not to a listener handed to it. TCP keepalive too, probing
/// after [`TCP_KEEPALIVE_IDLE`] of silence: a connection whose host vanished is closed by the
/// kernel even if nothing above it asks (each port's HTTP/2 pings find it sooner).
pub fn accepted(listener: TcpListener) -> io::Result<TcpIncoming> {
    TcpIncoming::from_listener(listener, true, Some(TCP_KEEPALIVE_IDLE)).map_err(io::Error::other)
}

/// Silence on an accepted connection after which the kernel starts its keepalive probes.
pub const TCP_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a new connection to the peer port may take to send its first bytes.
pub const SNIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepted connections of the peer port, told apart by their first eight bytes: those that
/// start with `wire` are handed to `on_wire` (a blocking socket, TCP_NODELAY and keepalive
/// set), the others (HTTP/2: gRPC's snapshot, status and fault calls, and the message stream
/// of members of earlier versions) come out of the returned stream, as from [`accepted`]. A
/// connection that sends fewer than eight bytes within [`SNIFF_TIMEOUT`] is closed. Accepting
/// ends when the stream is dropped (the gRPC server stopped), and with it every connection not
/// yet told apart: nothing holds `on_wire` after that but the wire connections it started.
pub fn sniffed(
    listener: TcpListener,
    wire: [u8; 8],
    on_wire: impl Fn(std::net::TcpStream) + Send + Sync + 'static,
) -> impl Stream<Item = io::Result<TcpStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<TcpStream>>(64);
    let on_wire = std::sync::Arc::new(on_wire);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let socket = match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: the
                    // listener itself stays good.
                    tracing::debug!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let (tx, on_wire) = (tx.clone(), on_wire.clone());
            tokio::spawn(async move {
                if keep_alive(&socket).is_err() {
                    return;
                }
                // A connection still silent when accepting ends does not keep `on_wire` (and
                // what it holds: the node's handle, so its state file) until the timeout.
                // Biased: once accepting has ended, the wire handler is not called, whatever
                // else is ready.
                let first = tokio::select! {
                    biased;
                    () = tx.closed() => return,
                    first = tokio::time::timeout(SNIFF_TIMEOUT, first_bytes(&socket)) => first,
                };
                match first {
                    Ok(Ok(first)) if first == wire => match socket.into_std() {
                        Ok(socket) if socket.set_nonblocking(false).is_ok() => on_wire(socket),
                        _ => {}
                    },
                    Ok(Ok(_)) => {
                        let _ = tx.send(Ok(socket)).await;
                    }
                    _ => {}
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// TCP_NODELAY and keepalive after [`TCP_KEEPALIVE_IDLE`], as [`accepted`] sets them.
fn keep_alive(socket: &TcpStream) -> io::Result<()> {
    socket.set_nodelay(true)?;
    rustix::net::sockopt::set_socket_keepalive(socket, true)?;
    rustix::net::sockopt::set_tcp_keepidle(socket, TCP_KEEPALIVE_IDLE)?;
    Ok(())
}

/// The first eight bytes a connection sent, left unread; an error if it closed before.
async fn first_bytes(socket: &TcpStream) -> io::Result<[u8; 8]> {
    let mut first = [0u8; 8];
    let mut wait = std::time::Duration::from_millis(1);
    loop {
        match socket.peek(&mut first).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            8 => return Ok(first),
            // Part of them: the rest is on its way (peek would find the same part at once).
            _ => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_millis(200));
            }
        }
    }
}

/// [`accepted`] connections, their writes gathered ([`Gathered`]).
pub fn gathered(listener: TcpListener) -> io::Result<impl Stream<Item = io::Result<Gathered<TcpStream>>>> {
    Ok(accepted(listener)?.map(|socket| socket.map(Gathered::new)))
}

/// A socket whose writes are held until a flush, up to [`HOLD_BYTES`]; it reports that it
/// takes no vectored writes (see the module's documentation).
#[derive(Debug)]
pub struct Gathered<S> {
    io: S,
    held: Vec<u8>,
    /// The last flush yielded, holding this many bytes: the next one writes.
    yielded: Option<usize>,
    /// Flushes left that write without yielding.
    skip: u32,
}

impl<S> Gathered<S> {
    pub fn new(io: S) -> Gathered<S> {
        Gathered { io, held: Vec::new(), yielded: None, skip: 0 }
    }

    /// Forgets the `n` bytes the socket took from the front of what is held.
    fn taken(&mut self, n: usize) {
        self.held.drain(..n);
        if self.held.is_empty() && self.held.capacity() > KEEP_BYTES {
            self.held = Vec::new();
        }
    }
}

impl<S: AsyncWrite + Unpin> Gathered<S> {
    /// Writes what is held until none is.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.taken(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gathered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            let need = this.held.len() + buf.len();
            if buf.len() < DIRECT_BYTES && need <= HOLD_BYTES {
                if need > this.held.capacity() {
                    let grown = need.max(2 * this.held.capacity()).min(HOLD_BYTES);
                    this.held.reserve_exact(grown - this.held.len());
                }
                this.held.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            if this.held.is_empty() {
                return Pin::new(&mut this.io).poll_write(cx, buf);
            }
            // What is held goes first, with as much of `buf` as the socket takes in the same
            // call; what the socket leaves of `buf` may then be held after all.
            let both = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &both))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let held = this.held.len();
            this.taken(n.min(held));
            if n > held {
                return Poll::Ready(Ok(n - held));
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.yielded {
            // The write is owed now, even if the socket makes it wait.
            Some(held) if held == self.held.len() => self.skip = SKIP_AFTER_NO_GAIN,
            Some(_) => {}
            None if self.held.is_empty() || self.held.len() >= YIELD_BELOW => {}
            None if self.skip > 0 => self.skip -= 1,
            None => {
                // Woken while it runs, a tokio task goes to the back of its worker's queue.
                self.yielded = Some(self.held.len());
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        ready!(self.poll_write_held(cx))?;
        self.yielded = None;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// No: h2 then copies small frames into its write buffer instead of writing each alone.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gathered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Connected for Gathered<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Once the stream of sniffed connections is dropped (the member stops), a connection that
    /// never sent its first bytes lets go of the wire handler at once, not after
    /// [`SNIFF_TIMEOUT`]: the handler holds the node's handle, and with it the state file that a
    /// restart of the member in the same process must open again.
    #[tokio::test]
    async fn a_connection_not_yet_told_apart_lets_go_of_the_wire_handler_when_accepting_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("a bound address");
        let held = std::sync::Arc::new(());
        let in_handler = held.clone();
        let mut incoming = Box::pin(sniffed(listener, *b"testwire", move |_| {
            let _ = &in_handler;
        }));
        let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect the silent one");
        // Accepted after the silent one (one accept loop, the kernel's queue in order): once it
        // comes out, the silent one is being sniffed.
        let mut http = tokio::net::TcpStream::connect(addr).await.expect("connect the HTTP/2 one");
        http.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("write a preface");
        let told = tokio::time::timeout(std::time::Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(told, Ok(Some(Ok(_)))), "the HTTP/2 connection did not come out of the stream");
        drop(incoming);
        let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT / 2;
        while std::sync::Arc::strong_count(&held) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the wire handler was still held {:?} after accepting ended (a silent connection \
                 kept it until its sniff timeout, {SNIFF_TIMEOUT:?})",
                SNIFF_TIMEOUT / 2
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// A socket that takes at most `per_call` bytes per write, refuses every other call when
    /// `busy` (Pending, then wakes the caller), and records each call's size.
    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        calls: Vec<usize>,
        per_call: usize,
        busy: bool,
        refuse_next: bool,
        flushes: usize,
        shut: bool,
    }

    impl Sink {
        fn new(per_call: usize) -> Sink {
            Sink { per_call, ..Default::default() }
        }

        fn take(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            if self.busy {
                self.refuse_next = !self.refuse_next;
                if self.refuse_next {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(self.per_call - n);
                self.got.extend_from_slice(&b[..k]);
                n += k;
            }
            self.calls.push(n);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.take(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.take(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_leave_in_one_call() {
        let mut g = Gathered::new(Sink::new(usize::MAX));
        let frames: Vec<Vec<u8>> = (0..40).map(|i| bytes(300, i)).collect();
        for f in &frames {
            g.write_all(f).await.expect("a held write succeeds");
        }
        assert!(g.io.calls.is_empty(), "nothing reaches the socket before a flush: {:?}", g.io.calls);
        g.flush().await.expect("flush");
        assert_eq!(g.io.calls, vec![12_000], "40 writes of 300 bytes leave in one call");
        assert_eq!(g.io.got, frames.concat(), "the bytes arrive in order, each once");
        assert_eq!(g.io.flushes, 1, "the socket itself is flushed");
    }

    #[test]
    fn a_small_flush_yields_once_then_writes() {
        use futures::task::noop_waker_ref;
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(Count(woken.clone())));
        let mut cx = Context::from_waker(&waker);
        let mut g = Gathered::new(Sink::new(usize::MAX));
        let write = |g: &mut Gathered<Sink>, b: &[u8]| {
            let polled = Pin::new(g).poll_write(&mut Context::from_waker(noop_waker_ref()), b);
            assert!(matches!(polled, Poll::Ready(Ok(n)) if n == b.len()), "held at once");
        };
        write(&mut g, &bytes(300, 1));
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_pending(), "the first flush yields");
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 1, "and wakes its task to come back");
        assert!(g.io.calls.is_empty(), "nothing written yet");
        write(&mut g, &bytes(300, 2));
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_ready(), "the next flush writes");
        assert_eq!(g.io.calls, vec![600], "both responses in one call");
        // Nothing held: nothing to wait for.
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_ready());
        // A flush with YIELD_BELOW bytes or more held writes at once.
        write(&mut g, &bytes(DIRECT_BYTES - 1, 3));
        write(&mut g, &bytes(DIRECT_BYTES - 1, 4));
        write(&mut g, &bytes(DIRECT_BYTES - 1, 5));
        write(&mut g, &bytes(DIRECT_BYTES - 1, 6));
        write(&mut g, &bytes(DIRECT_BYTES - 1, 7));
        assert!(g.held.len() >= YIELD_BELOW);
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_ready(), "a large flush does not yield");
        assert_eq!(g.io.calls.len(), 2);
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A yield that gathered nothing: the next SKIP_AFTER_NO_GAIN flushes write at once.
        write(&mut g, &bytes(300, 8));
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_pending(), "a small flush yields");
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_ready(), "nothing came meanwhile: written");
        for i in 0..SKIP_AFTER_NO_GAIN {
            write(&mut g, &bytes(300, i as u8));
            assert!(Pin::new(&mut g).poll_flush(&mut cx).is_ready(), "flush {i} after a fruitless yield");
        }
        write(&mut g, &bytes(300, 9));
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_pending(), "then it tries a yield again");
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[test]
    fn a_flush_that_yielded_writes_next_even_after_the_socket_made_it_wait() {
        use futures::task::noop_waker_ref;
        let mut cx = Context::from_waker(noop_waker_ref());
        // The socket refuses every other call.
        let mut g = Gathered::new(Sink { busy: true, ..Sink::new(usize::MAX) });
        let held = Pin::new(&mut g).poll_write(&mut cx, &bytes(300, 1));
        assert!(matches!(held, Poll::Ready(Ok(300))));
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_pending(), "the flush yields");
        // Another response joins meanwhile (the yield gathered something).
        let joined = Pin::new(&mut g).poll_write(&mut cx, &bytes(300, 2));
        assert!(matches!(joined, Poll::Ready(Ok(300))));
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_pending(), "the socket refuses the write");
        assert!(g.io.calls.is_empty());
        assert!(Pin::new(&mut g).poll_flush(&mut cx).is_ready(), "written now: no second yield");
        assert_eq!(g.io.calls, vec![600]);
        assert_eq!(g.io.flushes, 1, "the socket was flushed once, after the write");
    }

    #[tokio::test]
    async fn a_large_write_goes_out_behind_what_is_held_in_one_call_uncopied() {
        let mut g = Gathered::new(Sink::new(usize::MAX));
        let (head, payload) = (bytes(2_000, 1), bytes(15_000, 2));
        g.write_all(&head).await.expect("held");
        g.write_all(&payload).await.expect("written");
        assert_eq!(g.io.calls, vec![17_000], "head and payload in one vectored call");
        assert!(g.held.is_empty(), "nothing is left held");
        assert!(g.held.capacity() < DIRECT_BYTES, "the payload was not copied into the buffer");
        assert_eq!(g.io.got, [head, payload].concat());
    }

    #[tokio::test]
    async fn small_writes_past_the_hold_go_out_and_the_rest_is_held() {
        // The socket takes exactly what is held: the write that did not fit is then held.
        let mut g = Gathered::new(Sink::new(31 * 1_000));
        let small: Vec<Vec<u8>> = (0..31).map(|i| bytes(1_000, i)).collect();
        for w in &small {
            g.write_all(w).await.expect("held");
        }
        let last = bytes(3_000, 99);
        g.write_all(&last).await.expect("written");
        assert_eq!(g.io.calls, vec![31_000], "what was held left in one call");
        assert_eq!(g.held.len(), 3_000, "the write that did not fit waits for the flush");
        assert!(g.held.capacity() <= HOLD_BYTES, "the buffer never grows past the hold");
        g.flush().await.expect("flush");
        assert_eq!(g.io.got, [small.concat(), last].concat(), "every byte once, in order");
    }

    #[tokio::test]
    async fn partial_and_refused_writes_keep_the_order() {
        // The socket takes 1,000 bytes per call and refuses every other call.
        let mut g = Gathered::new(Sink { busy: true, ..Sink::new(1_000) });
        let writes: Vec<Vec<u8>> = [700, 20_000, 30_000, 5, HOLD_BYTES + 3, 64]
            .iter()
            .enumerate()
            .map(|(i, &n)| bytes(n, i as u8))
            .collect();
        for w in &writes {
            g.write_all(w).await.expect("written");
        }
        g.flush().await.expect("flush");
        assert_eq!(g.io.got, writes.concat(), "every byte once, in order, despite partial writes");
        assert!(g.io.calls.iter().all(|&n| n <= 1_000 && n > 0), "calls: {:?}", g.io.calls);
    }

    #[tokio::test]
    async fn a_flush_gives_back_a_grown_buffer() {
        let mut g = Gathered::new(Sink::new(usize::MAX));
        g.write_all(&bytes(KEEP_BYTES / 2 + 1, 0)).await.expect("held");
        g.write_all(&bytes(KEEP_BYTES / 2 + 1, 1)).await.expect("held");
        assert!(g.held.capacity() > KEEP_BYTES, "the buffer grew past KEEP_BYTES");
        g.flush().await.expect("flush");
        assert_eq!(g.held.capacity(), 0, "a buffer grown past KEEP_BYTES is not kept");
        g.write_all(&bytes(100, 0)).await.expect("held");
        g.flush().await.expect("flush");
        assert!(g.held.capacity() > 0, "a small one is kept for the next flush");
        assert!(g.held.capacity() <= KEEP_BYTES);
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_held_first() {
        let mut g = Gathered::new(Sink::new(usize::MAX));
        g.write_all(b"last words").await.expect("held");
        g.shutdown().await.expect("shutdown");
        assert_eq!(g.io.got, b"last words");
        assert!(g.io.shut, "the socket itself is shut down, after the held bytes");
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_fails_the_flush() {
        let mut g = Gathered::new(Sink::new(0));
        g.write_all(b"nowhere to go").await.expect("held");
        let err = g.flush().await.expect_err("a socket that writes 0 bytes fails the flush");
        assert_eq!(err.kind(), io::ErrorKind::WriteZero, "got {err}");
    }

    #[test]
    fn it_takes_no_vectored_writes() {
        assert!(
            !Gathered::new(Sink::new(1)).is_write_vectored(),
            "h2 must copy small frames, not chain them"
        );
    }
}
