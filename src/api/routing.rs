//! What every answer of a member tells a client about where its calls belong: a tower layer
//! for the client port.
//!
//! - **Which cluster.** Every answer names the member's cluster (`latch-cluster-id`), and a
//!   request naming another cluster is refused before any service sees it (UNAVAILABLE,
//!   nothing done, the answer naming both). UNAVAILABLE, not FAILED_PRECONDITION: for the
//!   client the member is not there, and every call and stream moves on to another endpoint,
//!   as from any member that cannot serve it, rather than take the refusal for its own
//!   cluster's answer (an acquire settled, a release done). Clients name the cluster their
//!   first answer came from, so a call sent to an address that a member of another cluster now holds (a leader
//!   hint that went stale while the member moved, an endpoint list that mixes two clusters)
//!   changes nothing there. The name also tells a client that the member itself answered: an
//!   UNAVAILABLE carrying it came from a live member, not from a broken connection. The
//!   trailers name it too, so a failure sent inside a stream (a keepalive's) says the same.
//! - **Where the leader is.** Every answer of a follower names the leader's client address in
//!   `latch-leader-addr` (the metadata an UNAVAILABLE answer already carries). Clients send
//!   their writes there (Chubby's clients talk to the master): a write sent to a follower is
//!   forwarded to the leader and answered only once the follower has applied it, so it costs
//!   the follower's gRPC call, a forward and a commit notice more than a write sent to the
//!   leader (docs/performance.md, "Writes straight to the leader"). Nothing depends on the hint
//!   being current: a client that follows a stale one is forwarded or told again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::HeaderValue;
use http_body::Frame;
use http_body_util::BodyExt;
use latch_proto::{format_cluster_id, parse_cluster_id, CLUSTER_ID_METADATA};
use tonic::body::BoxBody;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

use super::{Context, LEADER_ADDR_METADATA};

/// Checks and names the cluster on each call of the service it wraps, and adds the leader
/// hint to its answers. Cloning is cheap.
#[derive(Clone)]
pub struct RoutingLayer {
    shared: Arc<Shared>,
}

struct Shared {
    ctx: Context,
    cluster_id: u64,
    /// `cluster_id` as the metadata value every answer carries.
    named: HeaderValue,
}

impl RoutingLayer {
    pub fn new(ctx: Context) -> RoutingLayer {
        let cluster_id = ctx.node.cluster_id;
        let named =
            HeaderValue::from_str(&format_cluster_id(cluster_id)).expect("hex digits are a header value");
        RoutingLayer { shared: Arc::new(Shared { ctx, cluster_id, named }) }
    }
}

impl<S> Layer<S> for RoutingLayer {
    type Service = RoutingService<S>;

    fn layer(&self, inner: S) -> RoutingService<S> {
        RoutingService { inner, shared: self.shared.clone() }
    }
}

#[derive(Clone)]
pub struct RoutingService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    /// Why a request naming `asked` as its cluster is refused, if it is.
    fn refusal(&self, asked: Option<&HeaderValue>) -> Option<Status> {
        let asked = asked?;
        let ours = format_cluster_id(self.cluster_id);
        match asked.to_str().ok().and_then(parse_cluster_id) {
            Some(id) if id == self.cluster_id => None,
            Some(id) => Some(Status::unavailable(format!(
                "this member belongs to cluster {ours}, not to cluster {} that the client talks to \
                 (an address of the client's cluster is now held by another cluster's member, or \
                 its endpoints name members of two clusters); nothing was done",
                format_cluster_id(id)
            ))),
            None => Some(Status::invalid_argument(format!(
                "metadata {CLUSTER_ID_METADATA}: {asked:?} is not a cluster id (16 hex digits, as \
                 answers name it)"
            ))),
        }
    }
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for RoutingService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<BoxBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        match shared.refusal(req.headers().get(CLUSTER_ID_METADATA)) {
            Some(status) => ResponseFuture { inner: None, refused: Some(status), shared },
            None => ResponseFuture { inner: Some(self.inner.call(req)), refused: None, shared },
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        refused: Option<Status>,
        shared: Arc<Shared>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<BoxBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (result, refused) = match (this.inner.as_pin_mut(), this.refused.take()) {
            (Some(inner), _) => (std::task::ready!(inner.poll(cx)), false),
            (None, Some(status)) => (Ok(status.into_http()), true),
            (None, None) => panic!("a routing future polled after it completed"),
        };
        let result = result.map(|mut resp| {
            let headers = resp.headers_mut();
            headers.insert(CLUSTER_ID_METADATA, this.shared.named.clone());
            // Named as of the answer: a leader elected while the call ran is the one to follow.
            // Not in a refusal: this cluster's leader is nothing to a client of another one.
            if let Some(addr) = this.shared.ctx.leader_addr().filter(|_| !refused) {
                headers.entry(LEADER_ADDR_METADATA).or_insert(addr);
            }
            let named = this.shared.named.clone();
            resp.map(|body| body.map_frame(move |frame| name_trailers(frame, &named)).boxed_unsync())
        });
        Poll::Ready(result)
    }
}

/// `frame`, its cluster named if it is the trailers (where a stream's status goes).
fn name_trailers<D>(frame: Frame<D>, named: &HeaderValue) -> Frame<D> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            trailers.entry(CLUSTER_ID_METADATA).or_insert_with(|| named.clone());
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}
