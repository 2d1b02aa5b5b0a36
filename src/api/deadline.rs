//! The caller's deadline (`grpc-timeout`): a tower layer for the client port. A call that
//! carries one is served with the node's waits ending a little before it (`node::deadline`),
//! so that a member that cannot serve a request in time — no quorum, no leader — answers
//! why (UNAVAILABLE) while its caller still listens, instead of leaving it to time out on
//! silence. The rest of the deadline is tonic's to enforce, as before.

use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::node::deadline;

/// What a member leaves of a caller's deadline for its answer to reach the caller: a tenth,
/// at most this.
const MOST_MARGIN: Duration = Duration::from_millis(500);

/// The deadline a gRPC caller sent: `grpc-timeout`'s digits (at most 8) and unit (H, M, S, m,
/// u or n); `None` for anything else, which tonic passes on as it is.
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// By when a call that arrived `now` with `timeout` is answered, the margin left for the way
/// back; `None` (no bound) past what the clock can count.
fn answer_by(now: Instant, timeout: Duration) -> Option<Instant> {
    now.checked_add(timeout - (timeout / 10).min(MOST_MARGIN))
}

#[derive(Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService { inner }
    }
}

#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for DeadlineService<S>
where
    S: Service<http::Request<ReqBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<Option<Instant>, S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let timeout = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(grpc_timeout);
        let by = timeout.and_then(|timeout| answer_by(Instant::now(), timeout));
        deadline::answering_by(by, self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_grpc_timeout_is_read_in_each_unit_and_nonsense_is_none() {
        assert_eq!(grpc_timeout("1000m"), Some(Duration::from_secs(1)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(grpc_timeout("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        for nonsense in ["", "m", "10x", "-1S", "+1S", "1.5S", "123456789S", "18446744073709551615S"] {
            assert_eq!(grpc_timeout(nonsense), None, "{nonsense:?}");
        }
    }

    #[test]
    fn a_member_answers_a_tenth_of_the_deadline_early_and_at_most_half_a_second() {
        let now = Instant::now();
        assert_eq!(answer_by(now, Duration::from_secs(2)), Some(now + Duration::from_millis(1800)));
        assert_eq!(answer_by(now, Duration::from_secs(30)), Some(now + Duration::from_millis(29_500)));
        assert_eq!(answer_by(now, Duration::ZERO), Some(now));
        let longest = grpc_timeout("99999999H").expect("8 digits of hours");
        assert!(answer_by(now, longest).is_some(), "the longest timeout gRPC allows is counted");
        assert_eq!(answer_by(now, Duration::MAX), None, "past what the clock counts: no bound, no panic");
    }
}
