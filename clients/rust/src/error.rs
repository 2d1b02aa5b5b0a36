//! The client's one error type.

use tonic::Code;

/// What can go wrong in a call to Latch.
///
/// Every failure of a call arrives as [`Error::Status`]: either the cluster's own answer (a bad
/// key, a limit exceeded, …) or, once the retry budget is spent, the last error seen while trying
/// the endpoints. [`Error::code`] tells them apart without matching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call failed with this gRPC status. Its message is the server's, e.g.
    /// `key is 5000 bytes, over the limit of 4096 (--max-key-bytes)`. Boxed, because a
    /// `tonic::Status` is large and every `Result` of the client carries this type.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Box<tonic::Status>),
    /// An endpoint given to [`Client::connect`](crate::Client::connect) is not `host:port` or
    /// `http://host:port`.
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    /// The gRPC transport failed outside of any call.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Error {
    /// The gRPC code of the failure: the status's own code, `InvalidArgument` for a bad
    /// endpoint, `Unavailable` for a transport failure.
    pub fn code(&self) -> Code {
        match self {
            Error::Status(status) => status.code(),
            Error::InvalidEndpoint(_) => Code::InvalidArgument,
            Error::Transport(_) => Code::Unavailable,
        }
    }

    /// The gRPC status, when the failure is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(status) => Some(status),
            _ => None,
        }
    }

    /// For a read or a watch refused because its revision is compacted (OUT_OF_RANGE): the
    /// compact revision, above which the history still is.
    pub fn compact_revision(&self) -> Option<i64> {
        let value = self.status()?.metadata().get(latch_proto::COMPACT_REVISION_METADATA)?;
        value.to_str().ok()?.parse().ok()
    }

    /// A member refused the request over one of its limits (RESOURCE_EXHAUSTED, marked by the
    /// member): nothing was queued or changed. A RESOURCE_EXHAUSTED without the mark may have
    /// come from the transport after the request was acted on; and a write's refusal after
    /// another of its attempts went unanswered is not this either ([`Error::unsettled`]: that
    /// attempt may still take effect).
    pub fn over_limit(&self) -> bool {
        self.code() == Code::ResourceExhausted
            && self.status().is_some_and(|s| {
                s.metadata().get(latch_proto::OVER_LIMIT_METADATA).is_some_and(|v| v == "true")
            })
            && !self.unsettled()
    }

    /// A write that may still take effect, or have taken effect, although the call failed
    /// (the classic ambiguity of a timed-out write): an attempt went unanswered, or a member
    /// could not commit it in time and left it proposed, and no member's answer settled it
    /// since. Read before sending it again. (Never so for a read.)
    pub fn unsettled(&self) -> bool {
        self.status().is_some_and(|s| s.metadata().contains_key(latch_proto::UNSETTLED_METADATA))
    }

    /// For a write that was applied although the call failed FAILED_PRECONDITION: the revision
    /// it was applied at. The answer's data (previous values, a txn's ranges) is not there: a
    /// retry came after the first attempt's answer was lost and the member does not keep such
    /// data, or — on a first attempt too — the member had too many answers on their way to hold
    /// this one's data. The write took effect once; do not send it again; read what it needs.
    pub fn applied_revision(&self) -> Option<i64> {
        let value = self.status()?.metadata().get(latch_proto::APPLIED_REVISION_METADATA)?;
        value.to_str().ok()?.parse().ok()
    }

    /// For a transaction [`applied`](Error::applied_revision) although the call failed: whether
    /// its compares held (which branch ran).
    pub fn txn_succeeded(&self) -> Option<bool> {
        self.applied_revision()?;
        match self.status()?.metadata().get(latch_proto::TXN_SUCCEEDED_METADATA)?.to_str().ok()? {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// The canonical gRPC name of [`Error::code`], e.g. `"RESOURCE_EXHAUSTED"`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code())
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(Box::new(status))
    }
}

/// The canonical name of a gRPC code, as the gRPC specification spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_error_shows_the_code_name_and_the_servers_message() {
        let e = Error::from(tonic::Status::resource_exhausted(
            "key is 5000 bytes, over the limit of 4096 (--max-key-bytes)",
        ));
        assert_eq!(
            e.to_string(),
            "RESOURCE_EXHAUSTED: key is 5000 bytes, over the limit of 4096 (--max-key-bytes)"
        );
        assert_eq!(e.code(), Code::ResourceExhausted);
    }
}
