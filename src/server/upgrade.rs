//! Rolling upgrades: which builds a member runs beside, and the leader's raise of the cluster
//! version (`fsm::versions`).
//!
//! Every command carries the version of the rules it is applied by, and a build stops at a
//! version later than its own. So members propose at the *cluster version*, which the leader
//! raises to the lowest build of its configuration's members once every one of them has said
//! which it runs ([`raise_to`], asked every [`RAISE_EVERY`] by [`raise`]) — etcd's cluster
//! version. An upgrade then goes one member at a time: stop it, start it on the new build; once
//! the last one runs it, the cluster version follows and the new build's commands are proposed.
//!
//! A member starting checks once ([`check`]) that it can run beside its peers: not beside a
//! build that does not roll ([`ROLLS_FROM`]), nor in a cluster whose version is past its own
//! build (it would stop at the first command). Peers that do not answer within
//! [`ASK_TIMEOUT`] are not waited for; a member that slips past the check stops at the first
//! command it cannot apply, before writing anything of it (`fsm::FsmError::NewerVersion`), and
//! a member whose own state is past its build does not start (`core::CoreError::ClusterAhead`).
//!
//! Builds of version 10, the last before the cluster version, propose at their own version,
//! refuse to start beside a peer of another, and do not all keep the same state (the additions
//! of members came within version 10): a cluster of 10 upgrades to 11 whole, as before, and
//! upgrades roll from 11 on.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use latch_proto::internal::{command::Body, Command, RaiseClusterVersion};

use crate::config::Peer;
use crate::core::membership::Configuration;
use crate::core::{Retry, Role};
use crate::fsm::{versions, COMMAND_VERSION};
use crate::node::NodeHandle;
use crate::transport::{peer_status, Links};

/// How long one peer's answer may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a leader whose cluster version is below its build's asks the members' builds.
pub const RAISE_EVERY: Duration = Duration::from_secs(2);
/// The oldest build this one runs beside: the first with the cluster version. Builds of 10
/// propose at their own version whatever their peers run, and not all of them record the
/// members added at run time (which came without a new version), so two of them can keep
/// different states; version 9 applied raft's changes of membership as no-ops, and builds
/// before the command version field (7 or 8) do not say theirs.
pub const ROLLS_FROM: u32 = versions::FIRST_RAISE;

/// Why a member does not start beside its peers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error(
        "member {peer} runs a build of {}, and this build of version {ours} runs beside builds \
         of version {ROLLS_FROM} or later only: stop every member, then start each on the same \
         build (docs/architecture.md, \"Upgrades\")",
        named(*theirs)
    )]
    TooOld { peer: u64, theirs: u32, ours: u32 },
    #[error(
        "member {peer}'s state says the cluster runs version {cluster}, and this build applies \
         versions up to {ours}: it would stop at the first command. Start this member with a \
         build of version {cluster} or later (docs/architecture.md, \"Upgrades\")"
    )]
    ClusterAhead { peer: u64, cluster: u32, ours: u32 },
}

fn named(theirs: u32) -> String {
    match theirs {
        // Builds before the field proposed version 7 or 8; a peer of version 7 would reject
        // every command of this build's and fall behind for good, so not saying is not enough.
        0 => "an unknown version (a build from before 2026-12-05, version 7 or 8)".to_string(),
        v => format!("version {v}"),
    }
}

/// What a peer said of its build and its state's cluster version (each 0 from a build that
/// does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerVersions {
    pub peer: u64,
    pub build: u32,
    pub cluster: u32,
}

/// The first reason among `answers` that a build of version `ours` must not start beside them.
/// (A peer whose build is behind the cluster version refuses to start by itself, or stops at
/// the next command: refusing beside it would keep sound members down for one stuck peer.)
pub fn incompatible(ours: u32, answers: &[PeerVersions]) -> Option<Incompatible> {
    let too_old = answers.iter().find(|a| a.build < ROLLS_FROM);
    if let Some(a) = too_old {
        return Some(Incompatible::TooOld { peer: a.peer, theirs: a.build, ours });
    }
    let ahead = answers.iter().filter(|a| a.cluster > ours).max_by_key(|a| a.cluster);
    ahead.map(|a| Incompatible::ClusterAhead { peer: a.peer, cluster: a.cluster, ours })
}

/// Asks every peer of `peers` but `me` once, within [`ASK_TIMEOUT`], which build it runs and
/// which cluster version its state holds; refuses if one that answers as a member of cluster
/// `cluster_id` says this build must not start beside it ([`incompatible`]). A member that
/// `restarted` (its log held entries: a step of an upgrade) warns when no peer answered.
pub async fn check(
    (me, restarted): (u64, bool),
    cluster_id: u64,
    peers: &[Peer],
) -> Result<(), Incompatible> {
    let asked = peers
        .iter()
        .filter(|p| p.id != me)
        .map(|p| async move { (p.id, peer_status(p.id, &p.peer_addr, cluster_id, ASK_TIMEOUT).await) });
    let mut answers = Vec::new();
    let mut silent = Vec::new();
    for (peer, answer) in futures::future::join_all(asked).await {
        match answer {
            Ok(s) => answers.push((
                PeerVersions { peer, build: s.command_version, cluster: s.cluster_version },
                s.removed,
            )),
            Err(e) => {
                tracing::info!(member = me, peer, error = %e, "a peer did not say its build as this member starts");
                silent.push(peer);
            }
        }
    }
    // A skipped check must not look like a passed one: a peer of a build that does not roll is
    // then caught only at the next raise of the cluster version, where it stops. (The members
    // of a new cluster start together, and rarely find each other up: not worth a warning.)
    if restarted && answers.is_empty() && !silent.is_empty() {
        tracing::warn!(
            member = me,
            ?silent,
            "no peer said its build: this member starts without checking that it may run beside them"
        );
    }
    incompatible(COMMAND_VERSION, &of_members(me, answers)).map_or(Ok(()), Err)
}

/// The answers, with each peer's list of the members its state has removed, but those of peers
/// another answer names removed: a removed member that still runs (it never heard of its
/// removal) answers from a build and a state that are no longer the cluster's, and must not
/// keep a member from starting beside the members that are.
fn of_members(me: u64, answers: Vec<(PeerVersions, Vec<u64>)>) -> Vec<PeerVersions> {
    let removed: BTreeSet<u64> = answers.iter().flat_map(|(_, removed)| removed.iter().copied()).collect();
    let (kept, gone): (Vec<PeerVersions>, Vec<PeerVersions>) =
        answers.into_iter().map(|(a, _)| a).partition(|a| !removed.contains(&a.peer));
    if !gone.is_empty() {
        let gone: Vec<u64> = gone.iter().map(|a| a.peer).collect();
        tracing::info!(member = me, ?gone, "peers another peer names removed: their builds are not counted");
    }
    kept
}

/// The version to raise the cluster version to, if any: the lowest build among this member's
/// (`mine`) and those every other member of the configuration (`others`) answered with in
/// `builds`, when every one of them answered and it is above `cluster`. A member that did not
/// answer (down, or still starting) holds the raise back: its build is not known.
pub fn raise_to(cluster: u32, mine: u32, others: &[u64], builds: &BTreeMap<u64, u32>) -> Option<u32> {
    let mut lowest = mine;
    for member in others {
        lowest = lowest.min(*builds.get(member)?);
    }
    (lowest > cluster && lowest >= versions::FIRST_RAISE).then_some(lowest)
}

/// The members whose builds a raise by member `me` waits for: every other member of its
/// configuration, and every member whose addition its log holds past the changes it applied
/// (appended, perhaps not committed yet) — a member on its way in runs whatever build it was
/// started with, and once it is in, a cluster version past that build would stop it.
pub fn asked(configuration: &Configuration, me: u64) -> Vec<u64> {
    let mut ids = configuration.members();
    ids.extend(configuration.logged.keys());
    ids.sort_unstable();
    ids.dedup();
    ids.retain(|id| *id != me);
    ids
}

/// While this member leads and the cluster version is below its build's, asks every member of
/// its configuration (and every one its log is adding, [`asked`]) which build it runs, every
/// [`RAISE_EVERY`], and proposes the raise [`raise_to`] finds. Runs until `stopped`.
pub async fn raise(
    (node, cluster_id): (NodeHandle, u64),
    links: Arc<Links>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let me = node.member_id;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RAISE_EVERY) => {}
            _ = &mut stopped => return,
        }
        let status = node.status();
        if status.role != Role::Leader || status.cluster_version >= status.build_version {
            continue;
        }
        let others = asked(&node.configuration(), me);
        let asked =
            others.iter().filter_map(|id| Some((*id, links.address(*id)?))).map(|(id, addr)| async move {
                (id, peer_status(id, &addr, cluster_id, ASK_TIMEOUT).await.ok().map(|s| s.command_version))
            });
        let builds: BTreeMap<u64, u32> = (futures::future::join_all(asked).await.into_iter())
            .filter_map(|(id, build)| Some((id, build?)))
            .collect();
        let Some(version) = raise_to(status.cluster_version, status.build_version, &others, &builds) else {
            tracing::debug!(
                member = me,
                cluster_version = status.cluster_version,
                ?builds,
                "cluster version not raised yet"
            );
            continue;
        };
        let cmd = Command {
            version,
            request_id: String::new(),
            body: Some(Body::RaiseClusterVersion(RaiseClusterVersion {})),
        };
        match node.propose(cmd, Retry::NoId).await {
            Ok(_) => tracing::info!(
                member = me,
                version,
                "cluster version raised: every member runs a build of it"
            ),
            Err(e) => {
                tracing::info!(member = me, version, error = %e, "cluster version not raised this time")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(peer: u64, build: u32, cluster: u32) -> PeerVersions {
        PeerVersions { peer, build, cluster }
    }

    #[test]
    fn a_member_runs_beside_older_and_newer_builds_unless_one_does_not_roll_or_the_cluster_is_past_it() {
        assert_eq!(incompatible(11, &[peer(1, 11, 11), peer(3, 11, 11)]), None, "the same build");
        assert_eq!(incompatible(11, &[peer(2, 12, 11)]), None, "a later build while the cluster is at 11");
        assert_eq!(
            incompatible(12, &[peer(1, 11, 11), peer(3, 12, 11)]),
            None,
            "an earlier build that rolls"
        );
        assert_eq!(
            incompatible(11, &[peer(1, 10, 0), peer(3, 11, 10)]),
            Some(Incompatible::TooOld { peer: 1, theirs: 10, ours: 11 }),
            "builds of 10 do not roll: they propose at their own version"
        );
        assert_eq!(
            incompatible(11, &[peer(1, 11, 11), peer(3, 0, 0)]),
            Some(Incompatible::TooOld { peer: 3, theirs: 0, ours: 11 }),
            "a build that does not say (7 or 8)"
        );
        assert_eq!(
            incompatible(11, &[peer(1, 12, 12), peer(2, 13, 13)]),
            Some(Incompatible::ClusterAhead { peer: 2, cluster: 13, ours: 11 }),
            "the highest cluster version an answer holds is named"
        );
        let named = Incompatible::ClusterAhead { peer: 2, cluster: 12, ours: 11 }.to_string();
        assert!(
            named.contains("member 2") && named.contains("version 12") && named.contains("up to 11"),
            "the refusal names the peer, the cluster's version and this build's: {named}"
        );
        let unknown = Incompatible::TooOld { peer: 3, theirs: 0, ours: 11 }.to_string();
        assert!(unknown.contains("an unknown version") && unknown.contains("member 3"), "{unknown}");
    }

    #[test]
    fn a_peer_another_names_removed_does_not_keep_a_member_from_starting() {
        let answers = vec![(peer(1, 10, 10), vec![]), (peer(2, 11, 11), vec![1]), (peer(3, 11, 11), vec![1])];
        let counted = of_members(4, answers);
        assert_eq!(
            counted,
            vec![peer(2, 11, 11), peer(3, 11, 11)],
            "member 1, removed, still runs a build of 10"
        );
        assert_eq!(incompatible(11, &counted), None, "the members that are the cluster's run 11");
        let unnamed = of_members(4, vec![(peer(1, 10, 10), vec![]), (peer(2, 11, 11), vec![])]);
        assert!(
            matches!(incompatible(11, &unnamed), Some(Incompatible::TooOld { peer: 1, .. })),
            "a peer no answer names removed still counts"
        );
    }

    #[test]
    fn a_raise_waits_for_the_members_the_log_is_adding_as_for_the_members_in() {
        let configuration = Configuration {
            voters: vec![1, 2, 3],
            learners: vec![4],
            logged: BTreeMap::from([(5, "127.0.0.1:5380".to_string()), (4, "127.0.0.1:4380".to_string())]),
            ..Configuration::default()
        };
        assert_eq!(
            asked(&configuration, 1),
            vec![2, 3, 4, 5],
            "the other voters, the learner, and member 5 whose addition the log holds, once each"
        );
        let builds = BTreeMap::from([(2, 12), (3, 12), (4, 12)]);
        assert_eq!(
            raise_to(11, 12, &asked(&configuration, 1), &builds),
            None,
            "member 5, on its way in, has not said its build: no raise"
        );
    }

    #[test]
    fn the_cluster_version_rises_to_the_lowest_build_once_every_member_said_its() {
        let builds = |b: &[(u64, u32)]| b.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(raise_to(10, 11, &[2, 3], &builds(&[(2, 11), (3, 11)])), Some(11), "every member runs 11");
        assert_eq!(raise_to(10, 11, &[2, 3], &builds(&[(2, 11), (3, 10)])), None, "member 3 still runs 10");
        assert_eq!(raise_to(10, 11, &[2, 3], &builds(&[(2, 11)])), None, "member 3 did not answer");
        assert_eq!(raise_to(10, 12, &[2, 3], &builds(&[(2, 11), (3, 13)])), Some(11), "the lowest build");
        assert_eq!(raise_to(11, 11, &[2, 3], &builds(&[(2, 12), (3, 12)])), None, "at this build already");
        assert_eq!(raise_to(10, 11, &[], &builds(&[])), Some(11), "a member alone");
        assert_eq!(raise_to(10, 10, &[2], &builds(&[(2, 11)])), None, "never to a version without raises");
    }
}
