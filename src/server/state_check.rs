//! Compares this member's state with its peers' at every check point (`core::state_check`), and
//! stops it for good when a quorum of them agree on a state that is not its own.
//!
//! Every [`CHECK_EVERY`] that it holds hashes not judged yet, the member asks each peer for its
//! status, which lists the peer's own hashes, and judges each of its points
//! (`state_check::judge`). With `--state-check-action stop` (the default) a diverged member
//! writes [`MARK`] into its data dir (durably: a temporary file renamed) and stops, and
//! `server::run` refuses to start on a data dir that holds it; with `alert` it logs an error at
//! every such point and goes on. Its raft log is whole — its state file changed under it, or
//! it applied something differently — but no entry of the log can repair its state.
//!
//! What a quorum's agreement cannot tell alone: a damaged leader's snapshot, installed by a
//! member that fell behind before the next check point, puts the same damage on two members of
//! three. So a peer's hash whose state is a copy not yet seen to agree with this member's
//! (`state_check::copied`) is no witness, and a quorum that needs one stops nobody: it is
//! logged as an error and counted (`unsure`) — the price is that a damaged member outvoted
//! only with the help of such a copy is not stopped either.
//!
//! A member never judges a peer: each judges itself, so the check needs no leader and no
//! replicated command, and a member that cannot reach a quorum of the others judges nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Peer, StateCheckAction};
use crate::core::state_check::{copied, judge, Point, StateHashes, Verdict, Vote, STATE_HASH_VERSION};
use crate::metrics::Metrics;
use crate::transport::peer_status;

/// How often the member compares its new check points with its peers'.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long one peer's answer may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// A check point the peers still cannot judge after this long is let go (they are behind,
/// down, or went past it by a snapshot); the next one is judged instead.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// The mark (`server::marks`) a diverged member leaves in its data dir.
pub const MARK: &str = super::marks::DIVERGED;

/// What the member was found to be.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "member {member}'s state differs from the one member(s) {members:?} share: right after log \
     index {index} it hashes to {mine:016x}, theirs to {theirs:016x} (its state file changed \
     under it, or it applied something differently; no entry of the raft log can repair it){}",
    marked.as_deref().map(|m| format!(". {m}. There is no repairing a member in place yet (no \
     member replace; a data dir restored from an older copy has forgotten entries it acknowledged \
     and is refused): keep it stopped and run the cluster on the others; should they be the \
     damaged ones, remove the mark and start it with --state-check-action alert to run it as \
     it is")).unwrap_or_default()
)]
pub struct Diverged {
    pub member: u64,
    pub index: u64,
    pub mine: u64,
    pub theirs: u64,
    pub members: Vec<u64>,
    /// What became of it with `--state-check-action stop`: whether the mark was written.
    pub marked: Option<String>,
}

/// Judges this member's check points against its peers' until a quorum of them says its state
/// diverged; then marks its data dir and returns why. Runs for as long as the member does
/// otherwise.
/// The members judged are those of `node`'s configuration as it last applied it (a member
/// removed from the cluster is neither asked nor counted, one added is), each asked where the
/// transport knows it listens (`links`).
pub async fn watch(
    (node, cluster_id): (crate::node::NodeHandle, u64),
    links: Arc<crate::transport::Links>,
    hashes: Arc<StateHashes>,
    data_dir: PathBuf,
    (action, metrics): (StateCheckAction, Arc<Metrics>),
) -> Diverged {
    let metrics = &metrics.state_check;
    let me = node.member_id;
    // The highest index judged; when each point not judged yet was first seen.
    let mut judged = 0u64;
    let mut waiting: BTreeMap<u64, Instant> = BTreeMap::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let kept = hashes.points();
        let mine: Vec<_> = kept.iter().filter(|p| p.index > judged).copied().collect();
        let configuration = node.configuration();
        let voters = configuration.voters.len() + configuration.learners.len();
        let peers = links.peers();
        let others: Vec<&Peer> = peers.iter().filter(|p| p.id != me && configuration.has(p.id)).collect();
        if mine.is_empty() || others.is_empty() {
            continue;
        }
        let answers = futures::future::join_all(others.iter().map(|p| async move {
            // An answer from another member (a stale address) or cluster is no vote.
            (p.id, peer_status(p.id, &p.peer_addr, cluster_id, ASK_TIMEOUT).await.ok())
        }))
        .await;
        for point in mine {
            let theirs: Vec<Vote> = answers
                .iter()
                .filter_map(|(id, answer)| {
                    let s = answer.as_ref().filter(|s| s.state_hash_version == STATE_HASH_VERSION)?;
                    let points: Vec<Point> =
                        s.state_hashes.iter().map(|h| Point { index: h.index, hash: h.hash }).collect();
                    let at = points.iter().find(|h| h.index == point.index)?;
                    let copied = copied(point.index, s.state_installed_at, &points, &kept);
                    Some(Vote { member: *id, hash: at.hash, copied })
                })
                .collect();
            // Agreed with one peer, this member is judged sound; another peer that differs is
            // judged by itself, and is named here too.
            let differ: Vec<u64> = theirs.iter().filter(|v| v.hash != point.hash).map(|v| v.member).collect();
            if !differ.is_empty() {
                tracing::warn!(
                    member = me,
                    index = point.index,
                    ?differ,
                    "peers' states differ from this member's at a check point"
                );
            }
            match judge(point.index, point.hash, &theirs, voters) {
                Verdict::Agreed => {
                    tracing::debug!(member = me, index = point.index, "state check point agreed");
                    // Every member has this member's hash: a copy it installed before is
                    // confirmed, for good (its peers count it as its own from now on).
                    let all = theirs.len() + 1 == voters && differ.is_empty();
                    if let Some(install) = all.then(|| hashes.confirm(point.index)).flatten() {
                        let kept = super::marks::write(
                            &data_dir,
                            super::marks::COPY_CONFIRMED,
                            &install.to_string(),
                        );
                        if let Err(e) = kept {
                            tracing::warn!(member = me, install, error = %e, "cannot keep the confirmation of a copy across restarts");
                        }
                    }
                    judged = judged.max(point.index);
                    metrics.judged("agreed");
                    metrics.agreed_index.set(i64::try_from(point.index).unwrap_or(i64::MAX));
                }
                Verdict::Diverged { index, mine, theirs, members } => {
                    metrics.judged("diverged");
                    judged = judged.max(index);
                    let mut diverged = Diverged { member: me, index, mine, theirs, members, marked: None };
                    if action == StateCheckAction::Alert {
                        tracing::error!(member = me, "{diverged} (--state-check-action alert: it goes on)");
                        continue;
                    }
                    let mark = data_dir.join(MARK);
                    diverged.marked =
                        Some(match super::marks::write(&data_dir, MARK, &diverged.to_string()) {
                            Ok(()) => {
                                format!(
                                    "it stops, and does not start again while {} is there",
                                    mark.display()
                                )
                            }
                            Err(e) => format!(
                            "it stops; it could not write {} ({e}), so nothing keeps it from starting again",
                            mark.display()
                        ),
                        });
                    return diverged;
                }
                Verdict::Unsure { index, mine, theirs, members, copies } => {
                    tracing::error!(
                        member = me,
                        index,
                        mine = %format!("{mine:016x}"),
                        theirs = %format!("{theirs:016x}"),
                        ?members,
                        ?copies,
                        "the members named share a state other than this member's at a check point, \
                         but only counting the copies, whose states came from a snapshot since they \
                         last agreed with this member: the difference may have come with the \
                         snapshot and this member be the sound one, so nobody is stopped; compare \
                         their data before trusting any"
                    );
                    judged = judged.max(index);
                    metrics.judged("unsure");
                }
                Verdict::Split { index, hashes } => {
                    tracing::error!(
                        member = me,
                        index,
                        mine = %format!("{:016x}", point.hash),
                        peers = ?hashes,
                        "the members' states differ at a check point and no quorum of them agrees: \
                         no member can be judged; compare their data before trusting any"
                    );
                    judged = judged.max(index);
                    metrics.judged("split");
                }
                Verdict::Undecided => {
                    let since = *waiting.entry(point.index).or_insert_with(Instant::now);
                    if since.elapsed() >= GIVE_UP_AFTER {
                        tracing::info!(
                            member = me,
                            index = point.index,
                            "state check point let go: too few peers have it"
                        );
                        judged = judged.max(point.index);
                        metrics.judged("let_go");
                    }
                }
            }
        }
        waiting.retain(|&index, _| index > judged);
    }
}
