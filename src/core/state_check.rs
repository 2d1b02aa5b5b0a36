//! The members compare their states (etcd's corruption check): a member whose state file took
//! a changed byte, or whose disk handed back a page it never wrote, would otherwise serve it
//! for as long as it lives, since raft replicates the log, not the state.
//!
//! Check points are the empty entries of the log: the one every new leader appends, and the
//! ones a leader proposes every `Config::state_check_interval_ms`. They are the same entries,
//! at the same indexes, on every member, and apply to nothing; a member that applies one
//! hashes its whole state as it stands right after it ([`fsm::checked_state_hash`]: every
//! domain but the request memory, in a read transaction of its own, off the apply thread) and
//! keeps the last [`KEPT`] hashes
//! ([`StateHashes`]). Its peers read them from its status; [`judge`] says what they show.
//!
//! Invariants:
//! - A hash is of the state at exactly its index: the applier commits the batch right after
//!   the point, and the read transaction that is hashed begins before anything later applies.
//! - Two hashes are compared only when both were made by the same digest
//!   ([`STATE_HASH_VERSION`]) and at the same index.
//! - A member is judged diverged only when a quorum of the cluster's members other than
//!   itself report one and the same hash at the index, and it is not its own: a single other
//!   member, or members that disagree among themselves, cannot have it judged.
//! - Nor can members whose states are copies: a member that installed a snapshot holds the
//!   sender's state as it was, damage included (review-s58 #1: a damaged leader's snapshot puts
//!   its damage on a second member of three, and the sound third would be outvoted). A peer's
//!   hash counts towards a quorum only if the peer installed no snapshot at or before the
//!   point, or agreed with this member at a point at or after its install ([`copied`]), or
//!   its copy was confirmed — at a point since the install, every member had its hash, so the
//!   copy carried nothing that differs from any ([`StateHashes::confirm`]; kept across
//!   restarts by the server); a quorum that needs a copy is [`Verdict::Unsure`], and stops
//!   nobody.
//! - A member's kept points are of its state as it is now: an install drops them (a point
//!   hashed from an earlier copy would otherwise count as one of its own).

use std::collections::VecDeque;
use std::sync::Mutex;

/// The version of the digest and of the rows it reads: a build that changes `fsm::state_hash`
/// or how any domain's rows are encoded must change it, so that members of two builds never
/// take their different hashes for diverged states.
pub const STATE_HASH_VERSION: u32 = 1;

/// The check points whose hashes a member keeps.
pub const KEPT: usize = 32;

/// A member's state hash at one check point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    pub index: u64,
    pub hash: u64,
}

/// The hashes of the last [`KEPT`] check points this member applied, oldest first, and the
/// snapshot its state was last installed from.
#[derive(Debug, Default)]
pub struct StateHashes {
    points: Mutex<VecDeque<Point>>,
    copy: Mutex<Install>,
}

/// The snapshot a member's state was last installed from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Install {
    /// Its index; 0: never.
    pub installed_at: u64,
    /// At a point since, every member had this member's hash.
    pub confirmed: bool,
}

impl StateHashes {
    /// Records the hash of the state at `index` (a later point than any recorded in this life,
    /// or one replayed after a restart: an index already recorded is replaced).
    pub fn record(&self, index: u64, hash: u64) {
        let Ok(mut points) = self.points.lock() else { return };
        points.retain(|p| p.index != index);
        points.push_back(Point { index, hash });
        points.make_contiguous().sort_by_key(|p| p.index);
        while points.len() > KEPT {
            points.pop_front();
        }
    }

    /// Every point kept, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points.lock().map(|p| p.iter().copied().collect()).unwrap_or_default()
    }

    /// The state was replaced by a snapshot at `index`: the points kept were of the state it
    /// replaced, and go.
    pub fn installed(&self, index: u64) {
        if let Ok(mut points) = self.points.lock() {
            points.clear();
        }
        if let Ok(mut copy) = self.copy.lock() {
            *copy = Install { installed_at: index, confirmed: false };
        }
    }

    /// What a start finds: the last install (`fsm::installed_at`) and whether it was confirmed.
    pub fn started(&self, copy: Install) {
        if let Ok(mut c) = self.copy.lock() {
            *c = copy;
        }
    }

    /// Every member had this member's hash at check point `index`: a copy installed at or
    /// before it is confirmed. Returns the install it newly confirms, to be kept across
    /// restarts.
    pub fn confirm(&self, index: u64) -> Option<u64> {
        let mut copy = self.copy.lock().ok()?;
        let newly = copy.installed_at != 0 && copy.installed_at <= index && !copy.confirmed;
        copy.confirmed |= newly;
        newly.then_some(copy.installed_at)
    }

    /// The last install, and whether it was confirmed.
    pub fn copy(&self) -> Install {
        self.copy.lock().map(|c| *c).unwrap_or_default()
    }

    /// What peers count of this member's install (`Peer.Status`): the index of a copy not
    /// confirmed yet; 0 for none.
    pub fn unconfirmed_install(&self) -> u64 {
        let copy = self.copy();
        if copy.confirmed {
            0
        } else {
            copy.installed_at
        }
    }
}

/// One peer's hash at a check point, as [`judge`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    pub member: u64,
    pub hash: u64,
    /// Its state at the point is a copy of another member's not yet seen to agree with this
    /// member's ([`copied`]).
    pub copied: bool,
}

/// Whether a peer's state at check point `index` is a copy this member cannot count as a
/// witness: the peer installed a snapshot at `installed_at` (0: never), at or before the point,
/// and none of its `their` points from the install on has the hash this member's `mine` has
/// there. Once it agreed with this member after the install, the copy carried nothing that
/// differs from this member's state, and whatever differs later it came to by itself.
pub fn copied(index: u64, installed_at: u64, their: &[Point], mine: &[Point]) -> bool {
    installed_at != 0
        && installed_at <= index
        && !their.iter().any(|t| t.index >= installed_at && mine.contains(t))
}

/// What the peers' hashes at one check point say about this member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// At least one other member has the same hash there.
    Agreed,
    /// A quorum of the other members agree on another hash: this member's state is not the
    /// cluster's.
    Diverged { index: u64, mine: u64, theirs: u64, members: Vec<u64> },
    /// A quorum of the other members agree on another hash, but only counting `copies`, whose
    /// states came from a snapshot since they last agreed with this member: the damage may be
    /// the snapshot sender's, passed on, and this member the sound one. Nobody is judged.
    Unsure { index: u64, mine: u64, theirs: u64, members: Vec<u64>, copies: Vec<u64> },
    /// Every member answered and no two agree (or too few do to tell which state is right):
    /// something is wrong, and no member can be judged.
    Split { index: u64, hashes: Vec<(u64, u64)> },
    /// Not enough peers have the point yet (they are behind, down, or lost it to a snapshot).
    Undecided,
}

/// Judges this member's hash `mine` at check point `index` against the hashes its `peers`
/// report there, in a cluster of `voters` members.
pub fn judge(index: u64, mine: u64, peers: &[Vote], voters: usize) -> Verdict {
    if peers.iter().any(|v| v.hash == mine) {
        return Verdict::Agreed;
    }
    let quorum = voters / 2 + 1;
    let mut tally: Vec<(u64, Vec<Vote>)> = Vec::new();
    for &vote in peers {
        match tally.iter_mut().find(|(h, _)| *h == vote.hash) {
            Some((_, votes)) => votes.push(vote),
            None => tally.push((vote.hash, vec![vote])),
        }
    }
    if let Some((theirs, votes)) = tally.iter().find(|(_, v)| v.len() >= quorum) {
        let sorted = |keep: fn(&Vote) -> bool| {
            let mut members: Vec<u64> = votes.iter().filter(|v| keep(v)).map(|v| v.member).collect();
            members.sort_unstable();
            members
        };
        let (members, copies) = (sorted(|_| true), sorted(|v| v.copied));
        if members.len() - copies.len() >= quorum {
            return Verdict::Diverged { index, mine, theirs: *theirs, members };
        }
        return Verdict::Unsure { index, mine, theirs: *theirs, members, copies };
    }
    if !peers.is_empty() && peers.len() + 1 >= voters {
        let mut hashes: Vec<(u64, u64)> = peers.iter().map(|v| (v.member, v.hash)).collect();
        hashes.sort_unstable();
        return Verdict::Split { index, hashes };
    }
    Verdict::Undecided
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Witnesses: peers whose states are their own.
    fn votes(peers: &[(u64, u64)]) -> Vec<Vote> {
        peers.iter().map(|&(member, hash)| Vote { member, hash, copied: false }).collect()
    }

    #[test]
    fn one_peer_with_the_same_hash_is_agreement() {
        assert_eq!(judge(7, 1, &votes(&[(2, 1)]), 3), Verdict::Agreed, "a peer agrees");
        assert_eq!(
            judge(7, 1, &votes(&[(2, 9), (3, 1)]), 3),
            Verdict::Agreed,
            "the other peer is the odd one"
        );
        assert_eq!(
            judge(7, 1, &votes(&[(2, 1), (3, 9), (4, 9), (5, 9)]), 5),
            Verdict::Agreed,
            "whatever else peers say"
        );
    }

    #[test]
    fn a_member_is_diverged_only_when_a_quorum_of_the_others_agree_on_another_hash() {
        assert_eq!(
            judge(7, 1, &votes(&[(3, 9), (2, 9)]), 3),
            Verdict::Diverged { index: 7, mine: 1, theirs: 9, members: vec![2, 3] },
            "both others agree on another hash"
        );
        assert_eq!(
            judge(7, 1, &votes(&[(2, 9)]), 3),
            Verdict::Undecided,
            "one other member cannot have it judged"
        );
        assert_eq!(
            judge(7, 1, &votes(&[(2, 9), (3, 9)]), 5),
            Verdict::Undecided,
            "two of five are not a quorum"
        );
        assert!(
            matches!(judge(7, 1, &votes(&[(2, 9), (3, 9), (4, 9)]), 5), Verdict::Diverged { theirs: 9, .. }),
            "three of five are"
        );
        assert_eq!(
            judge(7, 1, &votes(&[]), 1),
            Verdict::Undecided,
            "a member alone has nothing to compare with"
        );
    }

    #[test]
    fn members_that_all_disagree_are_a_split_that_judges_nobody() {
        assert_eq!(
            judge(7, 1, &votes(&[(3, 8), (2, 9)]), 3),
            Verdict::Split { index: 7, hashes: vec![(2, 9), (3, 8)] },
            "three members, three hashes"
        );
        assert_eq!(
            judge(7, 1, &votes(&[(2, 9), (3, 8)]), 5),
            Verdict::Undecided,
            "two of five peers still to answer"
        );
    }

    /// review-s58 #1: member 2 installed member 3's (damaged) snapshot; member 1, the sound one,
    /// is outvoted only by counting the copy, and is not judged.
    #[test]
    fn a_quorum_that_needs_a_copy_judges_nobody() {
        let copy = |member, hash| Vote { member, hash, copied: true };
        let witness = |member, hash| Vote { member, hash, copied: false };
        assert_eq!(
            judge(7, 1, &[copy(2, 9), witness(3, 9)], 3),
            Verdict::Unsure { index: 7, mine: 1, theirs: 9, members: vec![2, 3], copies: vec![2] },
            "one witness and a copy of three"
        );
        assert!(
            matches!(
                judge(7, 1, &[copy(2, 9), witness(3, 9), witness(4, 9), witness(5, 9)], 5),
                Verdict::Diverged { .. }
            ),
            "three witnesses of five are a quorum without the copy"
        );
        assert_eq!(
            judge(7, 1, &[copy(2, 1), witness(3, 9)], 3),
            Verdict::Agreed,
            "a copy that agrees is agreement"
        );
    }

    #[test]
    fn a_peers_state_is_a_copy_from_its_install_until_it_agrees_with_this_members() {
        let p = |index, hash| Point { index, hash };
        let mine = [p(10, 1), p(20, 2), p(30, 3)];
        assert!(!copied(30, 0, &[p(30, 9)], &mine), "never installed: its own state");
        assert!(
            !copied(30, 31, &[p(30, 9)], &mine),
            "installed after the point: the point's hash was its own"
        );
        assert!(copied(30, 15, &[p(20, 8), p(30, 9)], &mine), "installed at 15, never agreed since");
        assert!(!copied(30, 15, &[p(20, 2), p(30, 9)], &mine), "agreed at 20, after its install at 15");
        assert!(copied(30, 15, &[p(10, 1), p(30, 9)], &mine), "agreed at 10, before its install: no witness");
        assert!(!copied(30, 5, &[p(10, 1), p(30, 9)], &mine), "agreed at 10, after its install at 5");
    }

    #[test]
    fn an_install_drops_the_points_of_the_state_it_replaced_and_is_a_copy_until_every_member_agrees() {
        let hashes = StateHashes::default();
        hashes.record(10, 1);
        hashes.installed(15);
        assert!(hashes.points().is_empty(), "the point at 10 was of the state the install replaced");
        assert_eq!(hashes.unconfirmed_install(), 15, "a copy, not yet confirmed");
        assert_eq!(hashes.confirm(12), None, "a point before the install confirms nothing");
        assert_eq!(hashes.confirm(20), Some(15), "every member agreed at 20, after the install");
        assert_eq!(hashes.confirm(30), None, "confirmed once");
        assert_eq!(hashes.unconfirmed_install(), 0, "a confirmed copy counts as the member's own");
        hashes.installed(40);
        assert_eq!(hashes.unconfirmed_install(), 40, "a new install is a new copy");
        hashes.started(Install { installed_at: 40, confirmed: true });
        assert_eq!(hashes.unconfirmed_install(), 0, "a confirmation kept across a restart");
    }

    #[test]
    fn a_member_keeps_the_newest_points_in_index_order() {
        let hashes = StateHashes::default();
        for i in (1..=KEPT as u64 + 5).rev() {
            hashes.record(i * 10, i);
        }
        hashes.record(100, 99);
        let points = hashes.points();
        assert!(points.contains(&Point { index: 100, hash: 99 }), "a point recorded again is replaced");
        assert_eq!(points.len(), KEPT, "at most KEPT points");
        assert!(points.windows(2).all(|w| w[0].index < w[1].index), "in index order: {points:?}");
        assert_eq!(points.last(), Some(&Point { index: (KEPT as u64 + 5) * 10, hash: KEPT as u64 + 5 }));
        assert_eq!(points.first().map(|p| p.index), Some(60), "the oldest dropped");
    }
}
