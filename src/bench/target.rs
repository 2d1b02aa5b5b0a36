//! The systems under test. [`TargetSpec`] is what `--target` names; a [`Connection`] is one
//! client of it, with the few operations the workloads need, whatever the system.
//!
//! `latch://H:P,H:P` (or plain `H:P,H:P`) is a Latch cluster reached through `latch-client`;
//! `etcd://H:P,H:P` an etcd cluster reached through `etcd-client`, when this binary was built
//! with the cargo feature `etcd`; `zk://H:P,H:P` a ZooKeeper ensemble, one session per
//! connection through `zookeeper-client`, with the cargo feature `zk` (how keys and operations
//! map onto znodes: [`super::zk`]). Every client gets the same per-operation timeout.

use std::fmt;
use std::time::Duration;

use latch_client::{Compare, CompareResult, Op, RangeRequest, Txn};

#[cfg(feature = "zk")]
use super::zk;
use super::{Error, KeySpace, Progress};

/// Which kind of cluster a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// Latch, through `latch-client`.
    Latch,
    /// etcd v3, through `etcd-client`.
    Etcd,
    /// ZooKeeper, through `zookeeper-client`.
    Zk,
}

impl System {
    /// The scheme of its targets, and its name in reports: `"latch"`, `"etcd"` or `"zk"`.
    pub fn name(self) -> &'static str {
        match self {
            System::Latch => "latch",
            System::Etcd => "etcd",
            System::Zk => "zk",
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
    /// Parses `latch://H:P,H:P`, `etcd://H:P,H:P`, `zk://H:P,H:P`, or `H:P,H:P` (Latch); or
    /// says what is wrong.
    pub fn parse(target: &str) -> Result<TargetSpec, String> {
        let (system, list) = match target.trim().split_once("://") {
            None => (System::Latch, target),
            Some(("latch", list)) => (System::Latch, list),
            Some(("etcd", list)) => (System::Etcd, list),
            Some(("zk", list)) => (System::Zk, list),
            Some((scheme, _)) => {
                return Err(format!(
                    "unknown system {scheme:?} in {target:?}; expected latch://H:P,H:P, etcd://H:P,H:P \
                     or zk://H:P,H:P"
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

/// A failed operation: its kind (the gRPC code name, e.g. `UNAVAILABLE`; for ZooKeeper its own
/// error name, e.g. `CONNECTIONLOSS`; `CLIENT` for a failure inside the client) and what the
/// server or the client said.
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
    /// A ZooKeeper session.
    #[cfg(feature = "zk")]
    Zk(zk::Session),
}

/// `count` clients of `target`, the `i`-th with the endpoint list rotated by `i`, so that
/// their first calls spread over the members given (a ZooKeeper session keeps to the first).
pub async fn connect(target: &TargetSpec, count: usize, timeout: Duration) -> Result<Vec<Connection>, Error> {
    connect_routed(target, count, timeout, true).await
}

/// Like [`connect`]; with `writes_to_leader` false, a Latch client's writes stay on the
/// endpoints given (`ClientOptions::writes_to_leader`), for a run that pins a member.
pub async fn connect_routed(
    target: &TargetSpec,
    count: usize,
    timeout: Duration,
    writes_to_leader: bool,
) -> Result<Vec<Connection>, Error> {
    let mut connections = Vec::with_capacity(count);
    for i in 0..count {
        let mut endpoints = target.endpoints.clone();
        let shift = i % endpoints.len().max(1);
        endpoints.rotate_left(shift);
        connections.push(connect_one(target.system, endpoints, timeout, writes_to_leader).await?);
    }
    Ok(connections)
}

async fn connect_one(
    system: System,
    endpoints: Vec<String>,
    timeout: Duration,
    writes_to_leader: bool,
) -> Result<Connection, Error> {
    match system {
        System::Latch => {
            let options = latch_client::ClientOptions {
                request_timeout: timeout,
                retry_budget: timeout,
                writes_to_leader,
                // The servers are measured: no call is sent twice.
                hedge_after: None,
                ..latch_client::ClientOptions::default()
            };
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
        #[cfg(feature = "zk")]
        System::Zk => {
            // `parse` admits no target without an endpoint.
            let endpoint = endpoints.first().map(String::as_str).unwrap_or_default();
            zk::Session::connect(endpoint, timeout)
                .await
                .map(Connection::Zk)
                .map_err(|error| Error::Unreachable { target: format!("zk://{endpoint}"), error })
        }
        #[cfg(not(feature = "zk"))]
        System::Zk => {
            let _ = (endpoints, timeout);
            Err(Error::ZkNotBuilt)
        }
    }
}

/// Makes the keys of `keys` exist where the system needs them to before they can be written:
/// ZooKeeper's `setData` needs its znode (see [`super::zk`]); Latch and etcd create a
/// key by writing it, so for them this does nothing.
pub async fn create_key_space(
    connections: &[Connection],
    keys: &KeySpace,
    value: &[u8],
    progress: &Progress,
) -> Result<(), OpError> {
    #[cfg(feature = "zk")]
    {
        let sessions: Vec<zk::Session> = connections
            .iter()
            .filter_map(|c| match c {
                Connection::Zk(session) => Some(session.clone()),
                _ => None,
            })
            .collect();
        if !sessions.is_empty() {
            return zk::create_key_space(&sessions, keys, value, progress).await;
        }
    }
    let _ = (connections, keys, value, progress);
    Ok(())
}

/// Ends every connection, waiting at most `timeout`: a ZooKeeper session is closed, so that the
/// servers forget it now rather than when it expires; the others just drop.
pub async fn close(connections: Vec<Connection>, timeout: Duration) {
    #[cfg(feature = "zk")]
    {
        let closing = connections.into_iter().filter_map(|c| match c {
            Connection::Zk(session) => Some(session.close(timeout)),
            _ => None,
        });
        futures::future::join_all(closing).await;
    }
    #[cfg(not(feature = "zk"))]
    let _ = (connections, timeout);
}

impl Connection {
    /// Sets `key` to `value`.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        match self {
            Connection::Latch(client) => client.put(key, value).await.map(drop).map_err(OpError::from),
            #[cfg(feature = "etcd")]
            Connection::Etcd(client) => client.put(key, value, None).await.map(drop).map_err(OpError::from),
            #[cfg(feature = "zk")]
            Connection::Zk(session) => session.set(&key, &value).await,
        }
    }

    /// The mod revision of `key` (the revision of its last write; for ZooKeeper its data
    /// version), or `None` if it does not exist.
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
            #[cfg(feature = "zk")]
            Connection::Zk(session) => session.version(&key, consistency).await,
        }
    }

    /// The revision of `key` that a read-modify-write ([`compare_and_put`](Self::compare_and_put))
    /// starts from. Latch and etcd read it linearizably. ZooKeeper reads it with a plain
    /// `getData`, as its clients do before a conditional `setData`: the version is checked
    /// where the write is ordered, so a stale one costs a conflict, never a lost update.
    pub async fn revision_to_update(&mut self, key: Vec<u8>) -> Result<Option<i64>, OpError> {
        #[cfg(feature = "zk")]
        if let Connection::Zk(session) = self {
            return session.version(&key, Consistency::Serializable).await;
        }
        self.get(key, Consistency::Linearizable).await
    }

    /// Sets `key` to `value` only if its mod revision is still `mod_revision` (0: only if it
    /// does not exist), in one transaction; returns whether it did. For ZooKeeper the revision
    /// is the znode's data version, and the znode must exist.
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
            #[cfg(feature = "zk")]
            Connection::Zk(session) => session.set_if_version(&key, mod_revision, &value).await,
        }
    }

    /// Writes every pair in one transaction (for ZooKeeper: one `multi` of `setData`s).
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
            #[cfg(feature = "zk")]
            Connection::Zk(session) => session.set_all(&pairs).await,
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
    fn a_zk_target_names_every_server_of_the_ensemble() {
        let zk = TargetSpec::parse("zk://127.0.0.1:2181, 127.0.0.1:2182,127.0.0.1:2183").expect("valid");
        assert_eq!(zk.system, System::Zk);
        assert_eq!(zk.endpoints, vec!["127.0.0.1:2181", "127.0.0.1:2182", "127.0.0.1:2183"]);
        assert_eq!(zk.to_string(), "zk://127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183");
        for (bad, why) in [
            ("zk://h", "\"h\" in"),
            ("zk://h:2181/chroot", "not host:port"),
            ("zk://h:99999", "not host:port"),
            ("zk:// , ", "no endpoints"),
        ] {
            let e = TargetSpec::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: expected {why:?} in {e:?}");
        }
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
            ("consul://h:1", "unknown system \"consul\""),
            ("zk://", "expected zk://H:P,H:P"),
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

    #[cfg(not(feature = "zk"))]
    #[tokio::test]
    async fn zk_without_the_feature_says_how_to_build_it() {
        let target = TargetSpec::parse("zk://127.0.0.1:2181").expect("valid");
        let e = connect(&target, 1, Duration::from_secs(1)).await.err().expect("no zk client built in");
        assert!(e.is_usage());
        assert!(e.to_string().contains("--features zk"), "{e}");
    }

    #[cfg(feature = "zk")]
    #[tokio::test]
    async fn a_zk_server_that_refuses_the_connection_is_unreachable_not_a_usage_error() {
        // Port 1 on loopback: nothing listens there.
        let target = TargetSpec::parse("zk://127.0.0.1:1").expect("valid");
        let e = connect(&target, 1, Duration::from_secs(5)).await.err().expect("nothing listens on port 1");
        assert!(!e.is_usage(), "{e}");
        assert!(e.to_string().starts_with("zk://127.0.0.1:1 does not serve: CONNECTIONLOSS"), "{e}");
    }
}
