//! Every answer of a follower names the leader: a tower layer for the client port that puts
//! the leader's client address in `latch-leader-addr` (the metadata an UNAVAILABLE answer
//! already carries) on each response of a member that is not the leader and knows one.
//!
//! Clients send their writes there (Chubby's clients talk to the master): a write sent to a
//! follower is forwarded to the leader and answered only once the follower has applied it, so
//! it costs the follower's gRPC call, a forward and a commit notice more than a write sent to
//! the leader (docs/performance.md, "Writes straight to the leader"). Nothing depends on the
//! hint being current: a client that follows a stale one is forwarded or told again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{Context, LEADER_ADDR_METADATA};

/// Adds the leader hint to the responses of the service it wraps. Cloning is cheap.
#[derive(Clone)]
pub struct LeaderHintLayer {
    ctx: Arc<Context>,
}

impl LeaderHintLayer {
    pub fn new(ctx: Context) -> LeaderHintLayer {
        LeaderHintLayer { ctx: Arc::new(ctx) }
    }
}

impl<S> Layer<S> for LeaderHintLayer {
    type Service = LeaderHintService<S>;

    fn layer(&self, inner: S) -> LeaderHintService<S> {
        LeaderHintService { inner, ctx: self.ctx.clone() }
    }
}

#[derive(Clone)]
pub struct LeaderHintService<S> {
    inner: S,
    ctx: Arc<Context>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for LeaderHintService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        ResponseFuture { inner: self.inner.call(req), ctx: self.ctx.clone() }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        ctx: Arc<Context>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let Ok(resp) = &mut result {
            // Named as of the answer: a leader elected while the call ran is the one to follow.
            if let Some(addr) = this.ctx.leader_addr() {
                resp.headers_mut().entry(LEADER_ADDR_METADATA).or_insert(addr);
            }
        }
        Poll::Ready(result)
    }
}
