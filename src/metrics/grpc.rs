//! A tower layer for the client gRPC server that counts every call by method and status code
//! and times it (`latch_grpc_requests_total`, `latch_grpc_request_duration_seconds`).
//!
//! The status code is read where gRPC puts it: in the response headers of a trailers-only
//! response (how tonic answers a unary call with an error), else in the trailers at the end of
//! the body (a success, or a stream's end). A body that ends without a status counts as OK; one
//! dropped before its end (the client went away) counts as CANCELLED. A call is recorded once,
//! when its status is known, so a stream's duration is its lifetime.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tower_layer::Layer;
use tower_service::Service;

use super::{GrpcLabels, MethodLabels, Metrics};

/// The method label of a path that is none of the known methods (bounds the label's values).
pub const UNKNOWN_METHOD: &str = "unknown";

/// The gRPC status code names, by code.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of the code in a `grpc-status` value; UNKNOWN for anything unparsable.
fn code_name(value: &[u8]) -> &'static str {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|c| CODES.get(c).copied())
        .unwrap_or("UNKNOWN")
}

fn status_in(headers: &HeaderMap) -> Option<&'static str> {
    headers.get("grpc-status").map(|v| code_name(v.as_bytes()))
}

/// A known method's series, resolved once so that recording a successful call is two atomic
/// updates and no lookup.
struct MethodSeries {
    path: &'static str,
    ok: Counter,
    duration: Histogram,
}

struct Methods {
    metrics: Arc<Metrics>,
    /// The known methods, then [`UNKNOWN_METHOD`] last.
    series: Vec<MethodSeries>,
}

impl Methods {
    fn index_of(&self, path: &str) -> usize {
        let known = self.series.len() - 1;
        self.series[..known].iter().position(|m| m.path == path).unwrap_or(known)
    }

    fn record(&self, index: usize, code: &'static str, started: Instant) {
        let m = &self.series[index];
        m.duration.observe(started.elapsed().as_secs_f64());
        if code == "OK" {
            m.ok.inc();
        } else {
            self.metrics.grpc.requests.get_or_create(&GrpcLabels { method: m.path, code }).inc();
        }
    }
}

/// Counts and times the calls of the service it wraps. Cloning is cheap.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    methods: Arc<Methods>,
}

impl GrpcMetricsLayer {
    /// `methods` are the gRPC paths served (`/latch.v1.KV/Put`, …): each gets its own label
    /// value and its series exist from the start; any other path is labelled `unknown`.
    pub fn new(metrics: Arc<Metrics>, methods: impl IntoIterator<Item = &'static str>) -> GrpcMetricsLayer {
        let series = methods
            .into_iter()
            .chain([UNKNOWN_METHOD])
            .map(|path| MethodSeries {
                path,
                ok: metrics.grpc.requests.get_or_create(&GrpcLabels { method: path, code: "OK" }).clone(),
                duration: metrics.grpc.duration.get_or_create(&MethodLabels { method: path }).clone(),
            })
            .collect();
        GrpcMetricsLayer { methods: Arc::new(Methods { metrics, series }) }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> GrpcMetricsService<S> {
        GrpcMetricsService { inner, methods: self.methods.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    methods: Arc<Methods>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let call = Call {
            index: self.methods.index_of(req.uri().path()),
            methods: self.methods.clone(),
            started: Instant::now(),
            code: "CANCELLED",
        };
        ResponseFuture { inner: self.inner.call(req), call: Some(call) }
    }
}

/// One call under way. Recorded when dropped, with `code` (CANCELLED until the status is
/// known), so a call is counted exactly once however it ends.
struct Call {
    methods: Arc<Methods>,
    index: usize,
    started: Instant,
    code: &'static str,
}

impl Call {
    fn end(mut self, code: &'static str) {
        self.code = code;
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.methods.record(self.index, self.code, self.started);
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match result {
            Ok(resp) => {
                let call = match (status_in(resp.headers()), call) {
                    (Some(code), Some(call)) => {
                        call.end(code);
                        None
                    }
                    (_, call) => call,
                };
                Ok(resp.map(|inner| MeteredBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = call {
                    call.end("UNKNOWN");
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the status arrives in its trailers.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(f)) => f.trailers_ref().map(|t| status_in(t).unwrap_or("OK")),
            Some(Err(_)) => Some("UNKNOWN"),
            None => Some("OK"),
        };
        if let Some(code) = code {
            if let Some(call) = this.call.take() {
                call.end(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_values_map_to_code_names() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"14"), "UNAVAILABLE");
        assert_eq!(code_name(b"16"), "UNAUTHENTICATED");
        assert_eq!(code_name(b"17"), "UNKNOWN");
        assert_eq!(code_name(b"x"), "UNKNOWN");
    }

    /// A body of fixed frames.
    struct Frames(std::collections::VecDeque<Frame<&'static [u8]>>);

    impl Body for Frames {
        type Data = &'static [u8];
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn ok_count(metrics: &Metrics, method: &'static str) -> u64 {
        metrics.grpc.requests.get_or_create(&GrpcLabels { method, code: "OK" }).get()
    }

    #[test]
    fn a_call_is_recorded_when_its_trailers_pass_not_at_its_data() {
        let metrics = Arc::new(Metrics::new());
        let layer = GrpcMetricsLayer::new(metrics.clone(), ["/latch.v1.KV/Put"]);
        let call =
            Call { index: 0, methods: layer.methods.clone(), started: Instant::now(), code: "CANCELLED" };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = Frames([Frame::data(&b"reply"[..]), Frame::trailers(trailers)].into());
        let mut body = MeteredBody { inner: frames, call: Some(call) };
        let mut next =
            || futures::executor::block_on(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)));
        assert!(next().is_some_and(|f| f.is_ok_and(|f| f.is_data())));
        assert_eq!(ok_count(&metrics, "/latch.v1.KV/Put"), 0, "not recorded before the status is known");
        assert!(next().is_some_and(|f| f.is_ok_and(|f| f.is_trailers())));
        assert_eq!(ok_count(&metrics, "/latch.v1.KV/Put"), 1, "recorded OK at the trailers");
        assert!(next().is_none());
        drop(body);
        assert_eq!(ok_count(&metrics, "/latch.v1.KV/Put"), 1, "recorded once");
    }

    #[test]
    fn a_call_is_recorded_once_under_its_method_or_unknown() {
        let metrics = Arc::new(Metrics::new());
        let layer = GrpcMetricsLayer::new(metrics.clone(), ["/latch.v1.KV/Put"]);
        let m = &layer.methods;
        for (path, code) in [("/latch.v1.KV/Put", "OK"), ("/latch.v1.KV/Put", "UNAVAILABLE"), ("/x/Y", "OK")]
        {
            let call =
                Call { index: m.index_of(path), methods: m.clone(), started: Instant::now(), code: "" };
            call.end(code);
        }
        drop(Call { index: 0, methods: m.clone(), started: Instant::now(), code: "CANCELLED" });
        let text = metrics.encode();
        for line in [
            "latch_grpc_requests_total{method=\"/latch.v1.KV/Put\",code=\"OK\"} 1\n",
            "latch_grpc_requests_total{method=\"/latch.v1.KV/Put\",code=\"UNAVAILABLE\"} 1\n",
            "latch_grpc_requests_total{method=\"/latch.v1.KV/Put\",code=\"CANCELLED\"} 1\n",
            "latch_grpc_requests_total{method=\"unknown\",code=\"OK\"} 1\n",
            "latch_grpc_request_duration_seconds_count{method=\"/latch.v1.KV/Put\"} 3\n",
        ] {
            assert!(text.contains(line), "expected {line:?} in:\n{text}");
        }
    }
}
