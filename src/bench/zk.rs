//! The ZooKeeper target, `zk://H:P,H:P`: how the benchmark's keys and operations map onto
//! znodes, and (cargo feature `zk`) one ZooKeeper session per connection through the
//! `zookeeper-client` crate.
//!
//! The mapping:
//! - A key `bench/000…0042` is the znode `/bench/000…0042`: every benchmark znode is a child of
//!   [`PARENT`], so `deleteall /bench` (zkCli) removes them all.
//! - A znode must exist before `setData` can write it, so the whole key space is created before
//!   the clock starts (`create_key_space`), whatever the workload. The parent's data records
//!   which key spaces were created completely ([`CreatedKeySpaces`]), so a later run skips the
//!   creation.
//! - put = `setData` with no version; get serializable = `getData` from the session's server;
//!   get linearizable = `sync` and `getData` sent back to back on the session (ZooKeeper serves
//!   a session's requests in order, so the read waits for the sync: one round trip, as with
//!   Java's async `sync` followed by a read); a compare-and-put = `setData` with the version
//!   read, a `BADVERSION` answer being the conflict.
//! - A revision, for ZooKeeper, is the znode's data version (`stat.version`).
//! - Failed operations are counted by ZooKeeper's own error names (`KeeperException.Code`:
//!   `CONNECTIONLOSS`, `SESSIONEXPIRED`, `NONODE`, …), as the gRPC systems' are by gRPC code
//!   names; `DEADLINE_EXCEEDED` is the load generator's own `--timeout`, as for the others, and
//!   `CLIENT` a failure inside the client library.
//!
//! Each session is pinned to one server, the `i`-th connection to the `i`-th endpoint (modulo
//! their number), as etcd's benchmark tool does: the client library shuffles its server list,
//! which would spread the sessions unevenly, and differently on every run. A pinned session
//! whose server goes away fails its operations (`CONNECTIONLOSS`) instead of moving.

use std::collections::BTreeMap;

use super::keys::{KeySpace, PREFIX};
use super::OpError;

/// The parent of every benchmark znode: [`PREFIX`] as a path, without its trailing `/`.
pub const PARENT: &str = "/bench";

/// The znode of a benchmark key: `/` and the key. A key of another shape (not
/// `bench/NAME`, with a NAME that ZooKeeper takes as one path element) is refused with kind
/// `BADARGUMENTS`; [`KeySpace`] makes none.
#[cfg_attr(not(feature = "zk"), allow(dead_code))]
pub fn znode(key: &[u8]) -> Result<String, OpError> {
    let bad = |why: &str| OpError {
        kind: "BADARGUMENTS",
        message: format!("key {:?} has no znode: {why}", String::from_utf8_lossy(key)),
    };
    let key = std::str::from_utf8(key).map_err(|_| bad("not UTF-8"))?;
    let name = key.strip_prefix(PREFIX).ok_or_else(|| bad("it does not start with bench/"))?;
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad("no name after bench/"));
    }
    if name.chars().any(|c| c == '/' || c.is_control()) {
        return Err(bad("its name holds a '/' or a control character"));
    }
    Ok(format!("/{key}"))
}

/// The key spaces created completely under [`PARENT`]: for each key size, how many keys (the
/// indexes `0..n`). Kept as the parent's data, one line `key_size=K keys=N` per key size, written
/// only after every znode of the key space exists; lines of another shape are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreatedKeySpaces(BTreeMap<usize, u64>);

#[cfg_attr(not(feature = "zk"), allow(dead_code))]
impl CreatedKeySpaces {
    /// What the parent's data says.
    pub fn parse(data: &[u8]) -> CreatedKeySpaces {
        let text = String::from_utf8_lossy(data);
        let entries = text.lines().filter_map(|line| {
            let (size, keys) = line.trim().split_once(' ')?;
            let size = size.strip_prefix("key_size=")?.parse().ok()?;
            let keys = keys.trim().strip_prefix("keys=")?.parse().ok()?;
            Some((size, keys))
        });
        let mut created = CreatedKeySpaces::default();
        for (size, keys) in entries {
            created.record(size, keys);
        }
        created
    }

    /// Whether every znode of `keys` was created.
    pub fn covers(&self, keys: &KeySpace) -> bool {
        self.0.get(&keys.key_size()).is_some_and(|&n| n >= keys.size())
    }

    /// Notes that the first `keys` keys of `key_size` bytes exist.
    pub fn record(&mut self, key_size: usize, keys: u64) {
        let n = self.0.entry(key_size).or_default();
        *n = (*n).max(keys);
    }

    /// The parent's data that [`parse`](Self::parse) reads back.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().map(|(size, keys)| format!("key_size={size} keys={keys}\n")).collect::<String>().into()
    }
}

#[cfg(feature = "zk")]
pub use client::{create_key_space, create_missing, Session};

#[cfg(feature = "zk")]
mod client {
    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, MultiWriteError};

    use super::{znode, CreatedKeySpaces, PARENT};
    use crate::bench::keys::{load_batch, KeySpace};
    use crate::bench::{Consistency, OpError, Progress};

    /// Tries at recording a created key space in the parent's data when other runs write it
    /// at the same time.
    const RECORD_TRIES: usize = 5;

    /// One ZooKeeper session. Clones share it: every clone's requests go down the session's
    /// one connection, in the order they are made.
    #[derive(Clone)]
    pub struct Session {
        client: Client,
        /// How long one operation may take before it fails with `DEADLINE_EXCEEDED`.
        timeout: Duration,
    }

    impl std::fmt::Debug for Session {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Session").field("id", &self.client.session_id()).finish()
        }
    }

    impl From<ZkError> for OpError {
        fn from(error: ZkError) -> Self {
            OpError { kind: kind(&error), message: error.to_string() }
        }
    }

    impl From<MultiWriteError> for OpError {
        fn from(error: MultiWriteError) -> Self {
            let message = error.to_string();
            OpError { kind: kind(&ZkError::from(error)), message }
        }
    }

    /// ZooKeeper's name (`KeeperException.Code`) of an error, or `CLIENT` for one of the
    /// client library's own.
    fn kind(error: &ZkError) -> &'static str {
        match error {
            ZkError::NoHosts | ZkError::ConnectionLoss => "CONNECTIONLOSS",
            ZkError::Timeout => "OPERATIONTIMEOUT",
            ZkError::BadArguments(_) => "BADARGUMENTS",
            ZkError::NoNode => "NONODE",
            ZkError::NoAuth => "NOAUTH",
            ZkError::BadVersion => "BADVERSION",
            ZkError::NoChildrenForEphemerals => "NOCHILDRENFOREPHEMERALS",
            ZkError::NodeExists => "NODEEXISTS",
            ZkError::NotEmpty => "NOTEMPTY",
            ZkError::SessionExpired => "SESSIONEXPIRED",
            ZkError::InvalidAcl => "INVALIDACL",
            ZkError::AuthFailed => "AUTHFAILED",
            ZkError::SessionMoved => "SESSIONMOVED",
            ZkError::NotReadOnly => "NOTREADONLY",
            ZkError::NoWatcher => "NOWATCHER",
            ZkError::QuotaExceeded => "QUOTAEXCEEDED",
            ZkError::Throttled => "THROTTLEDOP",
            ZkError::MarshallingError => "MARSHALLINGERROR",
            ZkError::Unimplemented => "UNIMPLEMENTED",
            ZkError::ReconfigDisabled => "RECONFIGDISABLED",
            ZkError::RuntimeInconsistent => "RUNTIMEINCONSISTENCY",
            ZkError::UnexpectedErrorCode(_) => "SYSTEMERROR",
            _ => "CLIENT",
        }
    }

    impl Session {
        /// A new session with the server at `endpoint` (`host:port`). Fails at once if the
        /// server refuses the connection, and after `timeout` if it does not answer.
        pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Session, OpError> {
            let connecting = Client::connector().with_fail_eagerly().connect(endpoint);
            let client = within(timeout, async { connecting.await.map_err(OpError::from) }).await?;
            Ok(Session { client, timeout })
        }

        /// Sets the znode of `key` to `value`, whatever its version.
        pub async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
            let path = znode(key)?;
            let setting = self.client.set_data(&path, value, None);
            within(self.timeout, async { setting.await.map(drop).map_err(OpError::from) }).await
        }

        /// The data version of the znode of `key`, or `None` if it does not exist.
        pub async fn version(&self, key: &[u8], consistency: Consistency) -> Result<Option<i64>, OpError> {
            let path = znode(key)?;
            // Both requests are sent here, in this order; the server answers the read after
            // the sync.
            let synced = (consistency == Consistency::Linearizable).then(|| self.client.sync(&path));
            let reading = self.client.get_data(&path);
            within(self.timeout, async {
                if let Some(synced) = synced {
                    synced.await?;
                }
                match reading.await {
                    Ok((_, stat)) => Ok(Some(i64::from(stat.version))),
                    Err(ZkError::NoNode) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            })
            .await
        }

        /// Sets the znode of `key` to `value` only if its data version is still `version`;
        /// returns whether it did.
        pub async fn set_if_version(&self, key: &[u8], version: i64, value: &[u8]) -> Result<bool, OpError> {
            let path = znode(key)?;
            let version = i32::try_from(version).map_err(|_| OpError {
                kind: "BADARGUMENTS",
                message: format!("{version} is not a ZooKeeper data version (a 32-bit number)"),
            })?;
            let setting = self.client.set_data(&path, value, Some(version));
            within(self.timeout, async {
                match setting.await {
                    Ok(_) => Ok(true),
                    Err(ZkError::BadVersion) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            })
            .await
        }

        /// Sets the znode of every key to its value, in one `multi`.
        pub async fn set_all(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), OpError> {
            let mut multi = self.client.new_multi_writer();
            for (key, value) in pairs {
                multi.add_set_data(&znode(key)?, value, None)?;
            }
            let committing = multi.commit();
            within(self.timeout, async { committing.await.map(drop).map_err(OpError::from) }).await
        }

        /// Creates every znode of `keys` with `value`, in one `multi`, or — when some exist
        /// already, which fails the `multi` whole — one by one, the existing ones left as
        /// they are. The creates of one batch are all sent before the first answer is awaited.
        async fn create_all(&self, keys: &[Vec<u8>], value: &[u8]) -> Result<(), OpError> {
            let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
            let paths = keys.iter().map(|key| znode(key)).collect::<Result<Vec<_>, _>>()?;
            let mut multi = self.client.new_multi_writer();
            for path in &paths {
                multi.add_create(path, value, &persistent)?;
            }
            let committing = multi.commit();
            match within(self.timeout, async { Ok(committing.await) }).await? {
                Ok(_) => return Ok(()),
                Err(MultiWriteError::OperationFailed { source: ZkError::NodeExists, .. }) => {}
                Err(other) => return Err(other.into()),
            }
            create_missing(&self.client, &paths, value, self.timeout).await
        }

        /// Closes the session, so that the servers forget it now rather than when it expires.
        /// Waits at most `timeout`; a session that does not close in time expires later.
        pub async fn close(self, timeout: Duration) {
            let mut state = self.client.state_watcher();
            drop(self.client);
            let _ = tokio::time::timeout(timeout, async { while !state.changed().await.is_terminated() {} })
                .await;
        }
    }

    /// Creates each of `paths` with `value` where it does not exist (the others are left as
    /// they are), all sent before the first answer is awaited: in order on the session, so a
    /// parent listed before its children is created first.
    pub async fn create_missing(
        client: &Client,
        paths: &[String],
        value: &[u8],
        timeout: Duration,
    ) -> Result<(), OpError> {
        let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
        let creating: Vec<_> = paths.iter().map(|path| client.create(path, value, &persistent)).collect();
        within(timeout, async {
            for created in futures::future::join_all(creating).await {
                match created {
                    Ok(_) | Err(ZkError::NodeExists) => {}
                    Err(e) => return Err(OpError::from(e)),
                }
            }
            Ok(())
        })
        .await
    }

    /// `operation`, failed with `DEADLINE_EXCEEDED` if it takes longer than `timeout`.
    async fn within<T>(
        timeout: Duration,
        operation: impl Future<Output = Result<T, OpError>>,
    ) -> Result<T, OpError> {
        match tokio::time::timeout(timeout, operation).await {
            Ok(result) => result,
            Err(_) => Err(OpError {
                kind: "DEADLINE_EXCEEDED",
                message: format!("no answer from ZooKeeper within {}", humantime::format_duration(timeout)),
            }),
        }
    }

    /// Makes every znode of `keys` exist, with `value` for the ones it creates: [`PARENT`], then
    /// the keys in `multi`s of up to 100 creates, one in flight per session; then records the
    /// key space in the parent's data. Does nothing when the parent's data says it was done
    /// before.
    pub async fn create_key_space(
        sessions: &[Session],
        keys: &KeySpace,
        value: &[u8],
        progress: &Progress,
    ) -> Result<(), OpError> {
        let Some(first) = sessions.first() else { return Ok(()) };
        let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
        let creating = first.client.create(PARENT, &[], &persistent);
        within(first.timeout, async {
            match creating.await {
                Ok(_) | Err(ZkError::NodeExists) => Ok(()),
                Err(e) => Err(OpError::from(e)),
            }
        })
        .await?;
        let (data, _) = read_parent(first).await?;
        if CreatedKeySpaces::parse(&data).covers(keys) {
            return Ok(());
        }

        let batch = load_batch(keys.key_size(), value.len());
        let next = AtomicU64::new(0);
        progress.creating(keys.size());
        let creators = sessions.iter().map(|session| {
            let next = &next;
            async move {
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= keys.size() {
                        return Ok::<(), OpError>(());
                    }
                    let last = (first + batch).min(keys.size());
                    let names: Vec<Vec<u8>> = (first..last).map(|i| keys.key(i)).collect();
                    session.create_all(&names, value).await?;
                    progress.loaded(last - first);
                }
            }
        });
        futures::future::try_join_all(creators).await?;

        // Another run may record its own key space meanwhile: merge, and write only over the
        // version read.
        for _ in 0..RECORD_TRIES {
            let (data, stat) = read_parent(first).await?;
            let mut created = CreatedKeySpaces::parse(&data);
            created.record(keys.key_size(), keys.size());
            let recording = first.client.set_data(PARENT, &created.to_bytes(), Some(stat.version));
            match within(first.timeout, async { Ok(recording.await) }).await? {
                Ok(_) => return Ok(()),
                Err(ZkError::BadVersion) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OpError {
            kind: "BADVERSION",
            message: format!("{PARENT} kept changing; the key space was created but not recorded"),
        })
    }

    async fn read_parent(session: &Session) -> Result<(Vec<u8>, zookeeper_client::Stat), OpError> {
        let reading = session.client.get_data(PARENT);
        within(session.timeout, async { reading.await.map_err(OpError::from) }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_znode_of_the_same_name_under_the_parent() {
        let keys = KeySpace::new(100_000, 32).expect("valid");
        assert_eq!(znode(&keys.key(42)).expect("a key space key"), "/bench/00000000000000000000000042");
        for i in [0, 7, 99_999] {
            let path = znode(&keys.key(i)).expect("a key space key");
            assert!(path.starts_with(&format!("{PARENT}/")), "{path} is not under {PARENT}");
            assert_eq!(path.len(), 33, "one '/' and the 32-byte key");
        }
        assert_eq!(format!("{PARENT}/"), format!("/{PREFIX}"), "the parent is the key prefix as a path");
    }

    #[test]
    fn keys_without_a_znode_are_refused_saying_why() {
        for (key, why) in [
            (&b"other/1"[..], "does not start with bench/"),
            (b"bench/", "no name"),
            (b"bench/..", "no name"),
            (b"bench/a/b", "'/'"),
            (b"bench/a\0", "control"),
            (b"bench/\xff", "not UTF-8"),
        ] {
            let e = znode(key).expect_err("no znode");
            assert_eq!(e.kind, "BADARGUMENTS");
            assert!(e.message.contains(why), "{key:?}: expected {why:?} in {:?}", e.message);
        }
    }

    #[test]
    fn created_key_spaces_round_trip_through_the_parents_data() {
        let mut created = CreatedKeySpaces::default();
        created.record(32, 100_000);
        created.record(16, 10);
        created.record(32, 50);
        let data = created.to_bytes();
        assert_eq!(data, b"key_size=16 keys=10\nkey_size=32 keys=100000\n");
        assert_eq!(CreatedKeySpaces::parse(&data), created);
    }

    #[test]
    fn a_key_space_is_covered_only_by_one_of_its_key_size_at_least_as_large() {
        let created = CreatedKeySpaces::parse(b"key_size=32 keys=1000\n");
        assert!(created.covers(&KeySpace::new(1000, 32).expect("valid")));
        assert!(created.covers(&KeySpace::new(10, 32).expect("valid")));
        assert!(!created.covers(&KeySpace::new(1001, 32).expect("valid")));
        assert!(!created.covers(&KeySpace::new(10, 16).expect("valid")), "other key size, other znodes");
    }

    #[test]
    fn parent_data_of_another_shape_records_nothing() {
        for data in [&b""[..], b"hello", b"key_size=x keys=1", b"keys=1 key_size=32", b"\xff\xfe"] {
            assert_eq!(CreatedKeySpaces::parse(data), CreatedKeySpaces::default(), "{data:?}");
        }
        let mixed = CreatedKeySpaces::parse(b"junk\nkey_size=8 keys=3\n");
        assert!(mixed.covers(&KeySpace::new(3, 8).expect("valid")));
    }

    #[cfg(feature = "zk")]
    #[test]
    fn zookeeper_errors_are_counted_by_zookeepers_own_names() {
        use zookeeper_client::Error as ZkError;
        assert_eq!(OpError::from(ZkError::ConnectionLoss).kind, "CONNECTIONLOSS");
        assert_eq!(OpError::from(ZkError::NoHosts).kind, "CONNECTIONLOSS");
        assert_eq!(OpError::from(ZkError::SessionExpired).kind, "SESSIONEXPIRED");
        assert_eq!(OpError::from(ZkError::NoNode).kind, "NONODE");
        assert_eq!(OpError::from(ZkError::Throttled).kind, "THROTTLEDOP");
        assert_eq!(OpError::from(ZkError::ClientClosed).kind, "CLIENT");
        let multi =
            zookeeper_client::MultiWriteError::OperationFailed { index: 3, source: ZkError::NodeExists };
        let e = OpError::from(multi);
        assert_eq!(e.kind, "NODEEXISTS");
        assert!(e.message.contains("index 3"), "{}", e.message);
    }
}
