//! The systems under test. [`TargetSpec`] is what `--target` names; a [`Connection`] is one
//! client of it, with the few operations the workloads need, whatever the system.
//!
//! `latch://H:P,H:P` (or plain `H:P,H:P`) is a Latch cluster reached through `latch-client`;
//! `etcd://H:P,H:P` an etcd cluster reached through `etcd-client`, when this binary was built
//! with the cargo feature `etcd`. Both clients get the same per-operation timeout.

use std::fmt;
use std::time::Duration;

use latch_client::{Compare, CompareResult, Op, RangeRequest, Txn};

use super::Error;

/// Which kind of cluster a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Latch, through `latch-client`.
    Latch,
    /// etcd v3, through `etcd-client`.
    Etcd,
}

impl System {
    /// The scheme of its targets, and its name in reports: `"latch"` or `"etcd"`.
    pub fn name(self) -> &'static str {
        match self {
            System::Latch => "latch",
            System::Etcd => "etcd",
        }
    }
}

/// A cluster to load: a system and the client addresses of some of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Which client talks to it.
    pub system: System,
    /// `host:port` of each member given, in the order given.
    pub endpoints: Vec<String>,
}

impl TargetSpec {
    /// Parses `latch://H:P,H:P`, `etcd://H:P,H:P`, or `H:P,H:P` (Latch); or says what is wrong.
    pub fn parse(target: &str) -> Result<TargetSpec, String> {
        let (system, list) = match target.trim().split_once("://") {
            None => (System::Latch, target),
            Some(("latch", list)) => (System::Latch, list),
            Some(("etcd", list)) => (System::Etcd, list),
            Some((scheme, _)) => {
                return Err(format!(
                    "unknown system {scheme:?} in {target:?}; expected latch://H:P,H:P or etcd://H:P,H:P"
                ))
            }
        };
        let endpoints: Vec<String> =
            list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect();
        if endpoints.is_empty() {
            return Err(format!("no endpoints in {target:?}; expected {}://H:P,H:P", system.name()));
        }
        if let Some(bad) = endpoints.iter().find(|e| !is_host_port(e)) {
            return Err(format!("{bad:?} in {target:?} is not host:port"));
        }
        Ok(TargetSpec { system, endpoints })
    }
}

/// `host:port` with a non-empty host and a numeric port.
fn is_host_port(endpoint: &str) -> bool {
    match endpoint.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok(),
        None => false,
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.system.name(), self.endpoints.join(","))
    }
}

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (the leader confirms it).
    Linearizable,
    /// The answering member's own copy: faster, possibly stale.
    Serializable,
}

impl Consistency {
    /// `"linearizable"` or `"serializable"`.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Serializable => "serializable",
        }
    }
}

/// A failed operation: its kind (the gRPC code name, e.g. `UNAVAILABLE`, or `CLIENT` for a
/// failure inside the client) and what the server or the client said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct OpError {
    /// What errors are counted by in the report.
    pub kind: &'static str,
    /// The server's or the client's message.
    pub message: String,
}

impl From<latch_client::Error> for OpError {
    fn from(error: latch_client::Error) -> Self {
        let message = match error.status() {
            Some(status) => status.message().to_string(),
            None => error.to_string(),
        };
        OpError { kind: error.code_name(), message }
    }
}

#[cfg(feature = "etcd")]
impl From<etcd_client::Error> for OpError {
    fn from(error: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match error {
            // The same names as Latch's, from latch-client's one table of gRPC code names.
            E::GRpcStatus(status) => OpError {
                kind: latch_client::Error::from(status.clone()).code_name(),
                message: status.message().to_string(),
            },
            E::TransportError(_) | E::IoError(_) => {
                OpError { kind: "UNAVAILABLE", message: error.to_string() }
            }
            other => OpError { kind: "CLIENT", message: other.to_string() },
        }
    }
}

/// One client of the target. Clones share the underlying connections.
#[derive(Clone)]
pub enum Connection {
    /// A Latch client.
    Latch(latch_client::Client),
    /// An etcd client (boxed: it holds a stub per etcd service, far larger than a Latch client).
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
}

/// `count` clients of `target`, the `i`-th with the endpoint list rotated by `i`, so that
/// their first calls spread over the members given.
pub async fn connect(target: &TargetSpec, count: usize, timeout: Duration) -> Result<Vec<Connection>, Error> {
    let mut connections = Vec::with_capacity(count);
    for i in 0..count {
        let mut endpoints = target.endpoints.clone();
        let shift = i % endpoints.len().max(1);
        endpoints.rotate_left(shift);
        connections.push(connect_one(target.system, endpoints, timeout).await?);
    }
    Ok(connections)
}

async fn connect_one(system: System, endpoints: Vec<String>, timeout: Duration) -> Result<Connection, Error> {
    match system {
        System::Latch => {
            let options = latch_client::ClientOptions { request_timeout: timeout, retry_budget: timeout };
            match latch_client::Client::connect_with(endpoints, options).await {
                Ok(client) => Ok(Connection::Latch(client)),
                Err(latch_client::Error::InvalidEndpoint(why)) => Err(Error::Target(why)),
                Err(other) => Err(Error::Target(other.to_string())),
            }
        }
        #[cfg(feature = "etcd")]
        System::Etcd => {
            let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
            let options =
                etcd_client::ConnectOptions::new().with_timeout(timeout).with_connect_timeout(timeout);
            etcd_client::Client::connect(urls, Some(options))
                .await
                .map(|client| Connection::Etcd(Box::new(client)))
                .map_err(|e| Error::Target(e.to_string()))
        }
        #[cfg(not(feature = "etcd"))]
        System::Etcd => {
            let _ = (endpoints, timeout);
            Err(Error::EtcdNotBuilt)
        }
    }
}

impl Connection {
    /// Sets `key` to `value`.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        match self {
            Connection::Latch(client) => client.put(key, value).await.map(drop).map_err(OpError::from),
            #[cfg(feature = "etcd")]
            Connection::Etcd(client) => client.put(key, value, None).await.map(drop).map_err(OpError::from),
        }
    }

    /// The mod revision of `key` (the revision of its last write), or `None` if it does not
    /// exist.
    pub async fn get(&mut self, key: Vec<u8>, consistency: Consistency) -> Result<Option<i64>, OpError> {
        let serializable = consistency == Consistency::Serializable;
        match self {
            Connection::Latch(client) => {
                let response = client.range(RangeRequest { key, serializable, ..Default::default() }).await?;
                Ok(response.kvs.first().map(|kv| kv.mod_revision))
            }
            #[cfg(feature = "etcd")]
            Connection::Etcd(client) => {
                let options = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                let response = client.get(key, options).await?;
                Ok(response.kvs().first().map(|kv| kv.mod_revision()))
            }
        }
    }

    /// Sets `key` to `value` only if its mod revision is still `mod_revision` (0: only if it
    /// does not exist), in one transaction; returns whether it did.
    pub async fn compare_and_put(
        &mut self,
        key: Vec<u8>,
        mod_revision: i64,
        value: Vec<u8>,
    ) -> Result<bool, OpError> {
        match self {
            Connection::Latch(client) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareResult::Equal, mod_revision)])
                    .and_then([Op::put(key, value)]);
                Ok(client.txn(txn).await?.succeeded)
            }
            #[cfg(feature = "etcd")]
            Connection::Etcd(client) => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision)])
                    .and_then([TxnOp::put(key, value, None)]);
                Ok(client.txn(txn).await?.succeeded())
            }
        }
    }

    /// Writes every pair in one transaction.
    pub async fn put_all(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), OpError> {
        match self {
            Connection::Latch(client) => {
                let txn = Txn::new().and_then(pairs.into_iter().map(|(k, v)| Op::put(k, v)));
                client.txn(txn).await.map(drop).map_err(OpError::from)
            }
            #[cfg(feature = "etcd")]
            Connection::Etcd(client) => {
                use etcd_client::{Txn, TxnOp};
                let ops: Vec<TxnOp> = pairs.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect();
                client.txn(Txn::new().and_then(ops)).await.map(drop).map_err(OpError::from)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_its_system_and_endpoints() {
        let latch = TargetSpec::parse("latch://a:1,b:2").expect("valid");
        assert_eq!(latch, TargetSpec { system: System::Latch, endpoints: vec!["a:1".into(), "b:2".into()] });
        assert_eq!(latch.to_string(), "latch://a:1,b:2");
        let etcd = TargetSpec::parse("etcd://127.0.0.1:2379").expect("valid");
        assert_eq!(etcd.system, System::Etcd);
        assert_eq!(etcd.to_string(), "etcd://127.0.0.1:2379");
    }

    #[test]
    fn a_target_without_a_scheme_is_latch() {
        let target = TargetSpec::parse("127.0.0.1:7379, 127.0.0.1:7479").expect("valid");
        assert_eq!(target.system, System::Latch);
        assert_eq!(target.endpoints, vec!["127.0.0.1:7379", "127.0.0.1:7479"]);
    }

    #[test]
    fn bad_targets_are_rejected_saying_why() {
        for (bad, why) in [
            ("zk://h:1", "unknown system \"zk\""),
            ("latch://", "no endpoints"),
            ("etcd://h", "\"h\" in"),
            ("latch://h:port", "not host:port"),
            ("latch://:1", "not host:port"),
        ] {
            let e = TargetSpec::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: expected {why:?} in {e:?}");
        }
    }

    #[test]
    fn latch_errors_are_counted_by_grpc_code_name() {
        let e = OpError::from(latch_client::Error::from(tonic::Status::unavailable("no leader")));
        assert_eq!(e, OpError { kind: "UNAVAILABLE", message: "no leader".into() });
    }

    #[cfg(not(feature = "etcd"))]
    #[tokio::test]
    async fn etcd_without_the_feature_says_how_to_build_it() {
        let target = TargetSpec::parse("etcd://127.0.0.1:2379").expect("valid");
        let e = connect(&target, 1, Duration::from_secs(1)).await.err().expect("no etcd client built in");
        assert!(e.is_usage());
        assert!(e.to_string().contains("--features etcd"), "{e}");
    }
}
