//! Membership: a member that lost its data comes back as a learner, and votes again once it
//! has caught up; a new member joins as a learner and votes once it has caught up
//! ([`check_add`], then [`addition`]); a member leaves the cluster for good ([`check_remove`],
//! then [`removal`]).
//!
//! The cluster starts with `--initial-cluster`'s members (their ids, their addresses, and the
//! cluster id folded from them). A member added at run time comes with its peer address in its
//! change's context, which every member's state records (`fsm::members`) for good: the members a
//! cluster ever had are the initial ones and the added ones ([`Known`]), and one of them in
//! neither raft's voters nor its learners was removed ([`Known::removed`]). A member whose data
//! dir was lost may not take part under its id as it was (`server::admission`): it forgot the
//! entries it acknowledged and the votes it cast. Replacing it ([`check_replace`], then
//! [`demotion`] proposed by the leader) makes it a learner through raft, one simple change of
//! one voter: from that entry on its acknowledgements count toward no commit and its votes
//! toward no election, for every member that applied the change. Its peers then no longer list
//! it among the members that ran before (`Peer.Status.learners`), so it is admitted on an empty
//! data dir; it catches up from a snapshot, and the leader makes it a voter again
//! ([`ready_learner`], then [`promotion`]) once it has acknowledged an entry at or past the one
//! that demoted it — so that neither a learner that is down nor its old life still running is
//! promoted — and is within [`PROMOTE_WITHIN`] entries of the commit index. Why a forgotten vote
//! cannot elect a second leader meanwhile: docs/architecture.md, "Replacing a member".
//!
//! Invariants:
//! - One change at a time: a change is proposed only when raft has none pending, and a
//!   replacement only while no member is a learner.
//! - A removed member takes no part again under its id: members drop its messages, it stops once
//!   it applies its removal or a peer tells it, and a start on its data dir is refused. An id is
//!   never added twice, so a member that has not yet applied its own addition (it catches up
//!   from entries or a snapshot older than it) is not one that was removed.
//! - The leader is never demoted (it is running on its data; stopping it first lets another
//!   lead), and a cluster keeps at least two voters through a replacement.
//! - Raft applies a change when the core hands its entry to the applier, once in a member's life
//!   and in index order; the applier records the configuration reached in the transaction that
//!   records the entry's index (`fsm::set_conf_state`), and a member restarts with that record,
//!   so a change is neither applied twice nor skipped across restarts.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType,
};

/// How close to the commit index a learner's log must be for the leader to make it a voter.
pub const PROMOTE_WITHIN: u64 = 1024;

/// Why a replacement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("member {member} is not a member of this cluster (its voters are {voters:?})")]
    NotAMember { member: u64, voters: Vec<u64> },
    #[error(
        "member {member} leads the cluster, so it is running on its data: stop it first (another \
         member takes over within an election timeout), then replace it"
    )]
    Leads { member: u64 },
    #[error(
        "member {member} is running (the leader heard from it within two election timeouts): a \
         replacement is for a member that lost its data — stop it first. Replaced while running, its \
         old life would be made a voter again as soon as it answered, and then refused when started \
         on an empty data dir"
    )]
    Running { member: u64 },
    #[error(
        "only {running} of the {voters} voters left after {change} member {member} are running \
         (members {up:?}); the cluster needs {quorum} of them to commit anything, so it would stop \
         until the others return — bring them back first"
    )]
    NoQuorum { change: Change, member: u64, voters: usize, running: usize, up: Vec<u64>, quorum: usize },
    #[error(
        "member {member} leads the cluster: it hands leadership to member {to} first; ask again in \
         a moment, and the new leader removes it"
    )]
    HandingOver { member: u64, to: u64 },
    #[error(
        "member {member} leads the cluster and no other voter is running to take over from it; \
         a cluster keeps at least one voter"
    )]
    NoSuccessor { member: u64 },
    #[error(
        "member {learner} is still catching up as a learner (replaced or added); change one member \
         at a time (`latch cluster status` shows it a follower once it votes)"
    )]
    Busy { learner: u64 },
    #[error("member {member} is a member already ({role}{at})")]
    AlreadyAMember { member: u64, role: &'static str, at: String },
    #[error(
        "member {member} was removed from the cluster, and a member id is never used again: add \
         the new member under another id"
    )]
    WasRemoved { member: u64 },
    #[error("peer address {addr} is member {member}'s: each member needs its own")]
    AddressTaken { addr: String, member: u64 },
    #[error(
        "the cluster was started with member {first} alone in --initial-cluster, and such a cluster \
         does not grow: started again on an empty data dir, that member could not tell this cluster \
         from a new one of its own, and would lead it. Start a cluster that is to grow with its \
         first members in --initial-cluster (1=HOST:PORT,2=HOST:PORT,3=HOST:PORT)"
    )]
    StartedAlone { first: u64 },
    #[error("a change of the cluster's membership is still being applied; retry in a moment")]
    Pending,
    #[error(
        "member {leader} was elected leader moments ago and may not have heard from every member \
         that runs yet; retry in a moment"
    )]
    JustElected { leader: u64 },
    #[error(
        "member {member} is one of only {voters} voters: a cluster keeps at least two through a \
         replacement"
    )]
    TooFewVoters { member: u64, voters: usize },
    #[error("the leader did not take the change ({why}); retry")]
    Dropped { why: String },
    #[error(
        "the change proposed at log index {index} was lost with a change of leader; ask again \
         (`latch cluster status` shows the members' roles)"
    )]
    Lost { index: u64 },
}

impl Refused {
    /// Whether asking again soon may succeed with nothing changed by the operator.
    pub fn passes(&self) -> bool {
        matches!(
            self,
            Refused::Pending
                | Refused::JustElected { .. }
                | Refused::Dropped { .. }
                | Refused::Lost { .. }
                | Refused::HandingOver { .. }
        )
    }
}

/// Which change a refusal is of, in its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Replacing,
    Removing,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::Replacing => "replacing",
            Change::Removing => "removing",
        })
    }
}

/// Whether the leader `me`, whose raft configuration is `conf` (with a change still `pending`
/// or not) and which heard from the voters `running` (itself among them) within two election
/// timeout, may demote voter `member` to a learner. `Ok(false)`: it is a learner already (a
/// replacement asked again; nothing to propose). A member that runs is not replaced (its
/// acknowledgements would make it a voter again at once), nor one whose replacement would leave
/// fewer running voters than the new configuration's quorum.
pub fn check_replace(
    me: u64,
    conf: &ConfState,
    member: u64,
    pending: bool,
    running: &[u64],
) -> Result<bool, Refused> {
    if conf.learners.contains(&member) {
        // Asked again: the leader forgets what the learner acknowledged (its new life may have
        // lost its data again), which is right only for a learner that is down and whose
        // promotion is not on its way.
        if member == me {
            return Err(Refused::Leads { member });
        }
        if running.contains(&member) {
            return Err(Refused::Running { member });
        }
        if pending {
            return Err(Refused::Pending);
        }
        return Ok(false);
    }
    if !conf.voters.contains(&member) {
        return Err(Refused::NotAMember { member, voters: sorted(&conf.voters) });
    }
    if member == me {
        return Err(Refused::Leads { member });
    }
    if let Some(learner) = conf.learners.first() {
        return Err(Refused::Busy { learner: *learner });
    }
    if pending || !conf.voters_outgoing.is_empty() {
        return Err(Refused::Pending);
    }
    if conf.voters.len() <= 2 {
        return Err(Refused::TooFewVoters { member, voters: conf.voters.len() });
    }
    if running.contains(&member) {
        return Err(Refused::Running { member });
    }
    quorum_left(Change::Replacing, conf, member, running)?;
    Ok(true)
}

/// Refuses a change that leaves fewer running voters than the new configuration's quorum.
fn quorum_left(change: Change, conf: &ConfState, member: u64, running: &[u64]) -> Result<(), Refused> {
    let left: Vec<u64> = sorted(&conf.voters).into_iter().filter(|id| *id != member).collect();
    let up: Vec<u64> = left.iter().copied().filter(|id| running.contains(id)).collect();
    let quorum = left.len() / 2 + 1;
    if up.len() < quorum {
        return Err(Refused::NoQuorum { change, member, voters: left.len(), running: up.len(), up, quorum });
    }
    Ok(())
}

/// Whether the leader `me`, whose raft configuration is `conf` (with a change still `pending`
/// or not) and which heard from the members `running` (itself among them) within two election
/// timeout, may remove `member` — a voter or a learner, running or not — from the cluster for
/// good. A removed member takes no part under its id again (`Core::step` drops its messages, the
/// transport tells it, and it stops). The leader is not removed while it leads: it hands over
/// first ([`Refused::HandingOver`], the caller's to do), and the removal of a voter must leave a
/// quorum of running voters. A learner's removal is always possible: it is how a replacement
/// whose member never comes back is given up.
/// `successor` is the running voter the leader would hand over to; `known` the members the
/// cluster ever had. `Ok(false)`: removed already (a removal asked again; nothing to propose).
pub fn check_remove(
    me: u64,
    (conf, known): (&ConfState, &Known),
    member: u64,
    pending: bool,
    running: &[u64],
    successor: Option<u64>,
) -> Result<bool, Refused> {
    if !in_conf(conf, member) {
        return match known.has(member) {
            true => Ok(false),
            false => Err(Refused::NotAMember { member, voters: sorted(&conf.voters) }),
        };
    }
    if pending || !conf.voters_outgoing.is_empty() {
        return Err(Refused::Pending);
    }
    if member == me && successor.is_none() {
        return Err(Refused::NoSuccessor { member });
    }
    if conf.voters.contains(&member) {
        quorum_left(Change::Removing, conf, member, running)?;
    }
    if let (true, Some(to)) = (member == me, successor) {
        return Err(Refused::HandingOver { member, to });
    }
    Ok(true)
}

/// Whether the leader, whose raft configuration is `conf` (with a change still `pending` or
/// not), may add `member` as a learner at peer address `addr`. `Ok(false)`: it is that learner
/// already (an addition asked again; nothing to propose). One change at a time: not while
/// another member is a learner (catching up after its replacement or addition). An id the
/// cluster ever had is never added again, nor an address a member has.
pub fn check_add(
    (conf, known): (&ConfState, &Known),
    member: u64,
    addr: &str,
    pending: bool,
) -> Result<bool, Refused> {
    if in_conf(conf, member) {
        let role = if conf.voters.contains(&member) { "a voter" } else { "a learner" };
        return match known.added.get(&member) {
            Some(at) if at == addr && role == "a learner" => Ok(false),
            Some(at) => Err(Refused::AlreadyAMember { member, role, at: format!(" at {at}") }),
            None => Err(Refused::AlreadyAMember { member, role, at: String::new() }),
        };
    }
    if known.has(member) {
        return Err(Refused::WasRemoved { member });
    }
    if let [first] = known.initial[..] {
        return Err(Refused::StartedAlone { first });
    }
    if let Some((other, _)) = known.added.iter().find(|(id, at)| *at == addr && in_conf(conf, **id)) {
        return Err(Refused::AddressTaken { addr: addr.to_string(), member: *other });
    }
    if let Some(learner) = conf.learners.first() {
        return Err(Refused::Busy { learner: *learner });
    }
    if pending || !conf.voters_outgoing.is_empty() {
        return Err(Refused::Pending);
    }
    Ok(true)
}

/// The members a cluster ever had: `--initial-cluster`'s, and those added at run time with
/// their peer addresses (as a member's state records them: removed ones stay).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    pub initial: Vec<u64>,
    pub added: BTreeMap<u64, String>,
}

impl Known {
    pub fn has(&self, member: u64) -> bool {
        self.initial.contains(&member) || self.added.contains_key(&member)
    }

    /// Whether `conf` has `member`, one the cluster had, neither voting nor learning: removed.
    /// A member unknown here is not (it may have been added in a change not yet applied).
    pub fn removed(&self, conf: &ConfState, member: u64) -> bool {
        self.has(member) && !in_conf(conf, member)
    }

    /// Every member the cluster had that `conf` no longer has, in increasing order.
    pub fn all_removed(&self, conf: &ConfState) -> Vec<u64> {
        let mut ids: Vec<u64> = (self.initial.iter().chain(self.added.keys()))
            .copied()
            .filter(|id| !in_conf(conf, *id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

fn in_conf(conf: &ConfState, member: u64) -> bool {
    conf.voters.contains(&member) || conf.learners.contains(&member)
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

/// The change that makes voter `member` a learner.
pub fn demotion(member: u64) -> ConfChangeV2 {
    single(ConfChangeType::AddLearnerNode, member)
}

/// The change that removes `member` from the cluster.
pub fn removal(member: u64) -> ConfChangeV2 {
    single(ConfChangeType::RemoveNode, member)
}

/// The change that adds `member` as a learner at peer address `addr` (in the change's context,
/// for every member's state to record: [`added_by`]).
pub fn addition(member: u64, addr: &str) -> ConfChangeV2 {
    let mut cc = single(ConfChangeType::AddLearnerNode, member);
    cc.context = addr.as_bytes().to_vec().into();
    cc
}

/// The member a change adds and its peer address, if it is an [`addition`].
pub fn added_by(cc: &ConfChangeV2) -> Option<(u64, String)> {
    match cc.get_changes() {
        [one] if one.get_change_type() == ConfChangeType::AddLearnerNode && !cc.context.is_empty() => {
            Some((one.node_id, String::from_utf8_lossy(&cc.context).into_owned()))
        }
        _ => None,
    }
}

/// The member change `cc` added and its peer address, if raft took the change: the
/// configuration it reached, `reached`, has the member. The core (its address book) and the
/// applier (`fsm::members`) both record what this decides.
pub fn addition_taken(cc: &ConfChangeV2, reached: &ConfState) -> Option<(u64, String)> {
    added_by(cc).filter(|(member, _)| in_conf(reached, *member))
}

/// Who votes and who learns, as a member last applied it; who was removed; and the peer
/// addresses of the members added at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub removed: Vec<u64>,
    pub added: BTreeMap<u64, String>,
    /// The members whose addition this member's log holds past the changes it applied
    /// (appended, perhaps not committed yet), with their peer addresses.
    pub logged: BTreeMap<u64, String>,
}

impl Configuration {
    pub fn of(conf: &ConfState, known: &Known) -> Configuration {
        Configuration {
            voters: sorted(&conf.voters),
            learners: sorted(&conf.learners),
            removed: known.all_removed(conf),
            added: known.added.clone(),
            logged: BTreeMap::new(),
        }
    }

    /// Whether `member` votes or learns.
    pub fn has(&self, member: u64) -> bool {
        self.voters.contains(&member) || self.learners.contains(&member)
    }

    /// The members added at run time that this configuration has, and those whose addition
    /// the log holds past the applied index, with their peer addresses: what a member that lost
    /// its data counts as members beside the first ones (`server::admission`).
    pub fn named_added(&self) -> BTreeMap<u64, String> {
        let applied = self.added.iter().filter(|(id, _)| self.has(**id));
        let named = self.logged.iter().chain(applied);
        named.map(|(id, addr)| (*id, addr.clone())).collect()
    }

    /// Every member that votes or learns, in increasing order of id.
    pub fn members(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.voters.iter().chain(&self.learners).copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// The change that makes learner `member` a voter again.
pub fn promotion(member: u64) -> ConfChangeV2 {
    single(ConfChangeType::AddNode, member)
}

fn single(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    cc.set_transition(ConfChangeTransition::Auto);
    let mut one = ConfChangeSingle::default();
    one.set_change_type(change_type);
    one.node_id = node_id;
    cc.mut_changes().push(one);
    cc
}

/// The change a conf change entry carries (raft-rs writes either kind).
pub fn change_of(e: &Entry) -> Result<ConfChangeV2, protobuf::ProtobufError> {
    match e.get_entry_type() {
        EntryType::EntryConfChange => {
            let v1 = ConfChange::parse_from_bytes(&e.data)?;
            Ok(single(v1.get_change_type(), v1.node_id))
        }
        _ => ConfChangeV2::parse_from_bytes(&e.data),
    }
}

pub fn encode(conf: &ConfState) -> Result<Vec<u8>, protobuf::ProtobufError> {
    conf.write_to_bytes()
}

pub fn decode(bytes: &[u8]) -> Result<ConfState, protobuf::ProtobufError> {
    ConfState::parse_from_bytes(bytes)
}

/// The configuration a state records as of its applied index (`None`: no change applied, so
/// it is the one the members started with).
pub fn recorded(txn: &redb::ReadTransaction) -> Result<Option<ConfState>, String> {
    match crate::fsm::conf_state(txn).map_err(|e| e.to_string())? {
        Some(bytes) => {
            decode(&bytes).map(Some).map_err(|e| format!("table conf_state: not a raft ConfState: {e}"))
        }
        None => Ok(None),
    }
}

/// The learners a state records, in increasing order.
pub fn recorded_learners(txn: &redb::ReadTransaction) -> Result<Vec<u64>, String> {
    Ok(recorded(txn)?.map(|conf| sorted(&conf.learners)).unwrap_or_default())
}

/// A learner as the leader's progress tracker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learner {
    pub id: u64,
    /// The highest index it acknowledged having.
    pub matched: u64,
    /// It answered within the last election timeout.
    pub recent_active: bool,
}

/// The learner the leader should make a voter now, if any: one that acknowledged an entry at
/// or past `since[id]` (the entry that made it a learner, or the leader's commit index when it
/// first saw it a learner) and whose log is within [`PROMOTE_WITHIN`] of `committed`.
pub fn ready_learner(learners: &[Learner], since: &BTreeMap<u64, u64>, committed: u64) -> Option<u64> {
    learners
        .iter()
        .find(|l| {
            let since = since.get(&l.id).copied().unwrap_or(u64::MAX);
            l.recent_active && l.matched >= since && l.matched + PROMOTE_WITHIN >= committed
        })
        .map(|l| l.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState { voters: voters.to_vec(), learners: learners.to_vec(), ..Default::default() }
    }

    fn initial(ids: &[u64]) -> Known {
        Known { initial: ids.to_vec(), added: BTreeMap::new() }
    }

    #[test]
    fn a_replacement_demotes_one_voter_that_does_not_lead_while_nothing_else_changes() {
        let three = conf(&[1, 2, 3], &[]);
        let up = [1, 2];
        assert_eq!(check_replace(1, &three, 3, false, &up), Ok(true));
        assert_eq!(
            check_replace(1, &conf(&[1, 2], &[3]), 3, false, &up),
            Ok(false),
            "asked again: nothing to do"
        );
        assert_eq!(
            check_replace(1, &three, 7, false, &up),
            Err(Refused::NotAMember { member: 7, voters: vec![1, 2, 3] })
        );
        assert_eq!(check_replace(1, &three, 1, false, &up), Err(Refused::Leads { member: 1 }));
        assert_eq!(check_replace(1, &three, 3, true, &up), Err(Refused::Pending));
        assert_eq!(
            check_replace(1, &conf(&[1, 2, 4, 5], &[3]), 4, false, &up),
            Err(Refused::Busy { learner: 3 })
        );
        assert_eq!(
            check_replace(1, &conf(&[1, 2], &[]), 2, false, &up),
            Err(Refused::TooFewVoters { member: 2, voters: 2 })
        );
    }

    #[test]
    fn a_member_that_runs_is_not_replaced_nor_one_whose_replacement_leaves_no_running_quorum() {
        let three = conf(&[1, 2, 3], &[]);
        assert_eq!(check_replace(1, &three, 3, false, &[1, 2, 3]), Err(Refused::Running { member: 3 }));
        assert_eq!(
            check_replace(1, &three, 3, false, &[1]),
            Err(Refused::NoQuorum {
                change: Change::Replacing,
                member: 3,
                voters: 2,
                running: 1,
                up: vec![1],
                quorum: 2
            }),
            "with member 2 down too, members 1 and 2 would have to commit everything"
        );
        let five = conf(&[1, 2, 3, 4, 5], &[]);
        assert_eq!(check_replace(1, &five, 5, false, &[1, 2, 3]), Ok(true), "3 of the 4 left run");
        assert!(matches!(
            check_replace(1, &five, 5, false, &[1, 2]),
            Err(Refused::NoQuorum { quorum: 3, .. })
        ));
    }

    #[test]
    fn a_removal_takes_a_voter_or_a_learner_and_leaves_a_running_quorum() {
        let initial = initial(&[1, 2, 3]);
        let three = (&conf(&[1, 2, 3], &[]), &initial);
        assert_eq!(check_remove(1, three, 3, false, &[1, 2, 3], Some(2)), Ok(true), "running or not");
        assert_eq!(check_remove(1, three, 3, false, &[1, 2], Some(2)), Ok(true));
        assert_eq!(
            check_remove(1, three, 2, false, &[1, 2], Some(2)),
            Err(Refused::NoQuorum {
                change: Change::Removing,
                member: 2,
                voters: 2,
                running: 1,
                up: vec![1],
                quorum: 2
            }),
            "with member 3 down, members 1 and 3 would have to commit everything"
        );
        assert_eq!(
            check_remove(1, (&conf(&[1, 2], &[3]), &initial), 3, false, &[1], None),
            Ok(true),
            "a learner — a replacement given up — goes whatever runs"
        );
        assert_eq!(
            check_remove(1, three, 7, false, &[1, 2, 3], Some(2)),
            Err(Refused::NotAMember { member: 7, voters: vec![1, 2, 3] }),
            "a member the cluster never had"
        );
        let two = (&conf(&[1, 2], &[]), &initial);
        assert_eq!(
            check_remove(1, two, 3, false, &[1, 2], Some(2)),
            Ok(false),
            "removed already: asked again"
        );
        assert_eq!(check_remove(1, three, 3, true, &[1, 2], Some(2)), Err(Refused::Pending));
        assert_eq!(check_remove(1, two, 2, false, &[1, 2], Some(2)), Ok(true), "down to one voter");
    }

    #[test]
    fn an_addition_takes_a_new_id_at_an_address_of_its_own_while_nothing_else_changes() {
        let mut known = initial(&[1, 2, 3]);
        let three = conf(&[1, 2, 3], &[]);
        assert_eq!(check_add((&three, &known), 4, "h:4", false), Ok(true));
        assert_eq!(
            check_add((&conf(&[1], &[]), &initial(&[1])), 2, "h:2", false),
            Err(Refused::StartedAlone { first: 1 }),
            "a member started alone, started again empty, could not tell it grew"
        );
        assert_eq!(check_add((&three, &known), 4, "h:4", true), Err(Refused::Pending));
        assert_eq!(
            check_add((&conf(&[1, 2], &[3]), &known), 4, "h:4", false),
            Err(Refused::Busy { learner: 3 }),
            "a replacement still catching up"
        );
        assert_eq!(
            check_add((&three, &known), 2, "h:4", false),
            Err(Refused::AlreadyAMember { member: 2, role: "a voter", at: String::new() })
        );
        known.added.insert(4, "h:4".to_string());
        let learning = conf(&[1, 2, 3], &[4]);
        assert_eq!(check_add((&learning, &known), 4, "h:4", false), Ok(false), "asked again");
        assert_eq!(
            check_add((&learning, &known), 4, "h:5", false),
            Err(Refused::AlreadyAMember { member: 4, role: "a learner", at: " at h:4".to_string() }),
            "asked again with another address"
        );
        let four = conf(&[1, 2, 3, 4], &[]);
        assert_eq!(
            check_add((&four, &known), 5, "h:4", false),
            Err(Refused::AddressTaken { addr: "h:4".to_string(), member: 4 })
        );
        let without_three = conf(&[1, 2, 4], &[]);
        assert_eq!(
            check_add((&without_three, &known), 3, "h:3", false),
            Err(Refused::WasRemoved { member: 3 })
        );
        let without_four = conf(&[1, 2, 3], &[]);
        assert_eq!(
            check_add((&without_four, &known), 4, "h:4", false),
            Err(Refused::WasRemoved { member: 4 })
        );
        assert_eq!(
            check_add((&without_four, &known), 5, "h:4", false),
            Ok(true),
            "a removed member's address is free again"
        );
    }

    #[test]
    fn a_member_is_removed_only_once_it_was_known_and_the_configuration_lost_it() {
        let mut known = initial(&[1, 2, 3]);
        known.added.insert(5, "h:5".to_string());
        let c = conf(&[1, 2], &[]);
        assert!(known.removed(&c, 3));
        assert!(known.removed(&c, 5), "an added member, removed since");
        assert!(!known.removed(&c, 4), "one this state never heard added is not removed");
        assert!(!known.removed(&c, 1));
        assert_eq!(known.all_removed(&c), vec![3, 5]);
        let cc = addition(4, "h:4");
        assert_eq!(added_by(&cc), Some((4, "h:4".to_string())));
        assert_eq!(added_by(&demotion(4)), None, "a demotion adds no member");
    }

    #[test]
    fn the_leader_is_removed_only_after_it_handed_over() {
        let leaves_no_quorum =
            check_remove(1, (&conf(&[1, 2, 3], &[]), &initial(&[1, 2, 3])), 1, false, &[1, 2], Some(2));
        assert!(
            matches!(leaves_no_quorum, Err(Refused::NoQuorum { .. })),
            "no handover for a removal that could not pass: {leaves_no_quorum:?}"
        );
        let refused =
            check_remove(1, (&conf(&[1, 2, 3], &[]), &initial(&[1, 2, 3])), 1, false, &[1, 2, 3], Some(3));
        assert_eq!(refused, Err(Refused::HandingOver { member: 1, to: 3 }));
        assert!(refused.is_err_and(|r| r.passes()), "asked again, the next leader removes it");
        let alone = check_remove(1, (&conf(&[1], &[2]), &initial(&[1, 2, 3])), 1, false, &[1, 2], None);
        assert_eq!(alone, Err(Refused::NoSuccessor { member: 1 }));
        assert!(alone.is_err_and(|r| !r.passes()));
    }

    #[test]
    fn a_learner_is_promoted_only_once_it_acknowledged_its_demotion_and_is_close_to_the_commit_index() {
        let since = BTreeMap::from([(3, 100)]);
        let learner = |matched, recent_active| Learner { id: 3, matched, recent_active };
        assert_eq!(ready_learner(&[learner(99, true)], &since, 99), None, "down since before its demotion");
        assert_eq!(ready_learner(&[learner(100, false)], &since, 100), None, "not heard from lately");
        assert_eq!(
            ready_learner(&[learner(100, true)], &since, 100 + PROMOTE_WITHIN + 1),
            None,
            "too far behind"
        );
        assert_eq!(ready_learner(&[learner(100, true)], &since, 100 + PROMOTE_WITHIN), Some(3));
        assert_eq!(ready_learner(&[learner(500, true)], &BTreeMap::new(), 500), None, "since unknown");
    }

    #[test]
    fn the_changes_round_trip_through_an_entry() {
        for (cc, kind) in [
            (demotion(3), ConfChangeType::AddLearnerNode),
            (promotion(3), ConfChangeType::AddNode),
            (removal(3), ConfChangeType::RemoveNode),
            (addition(3, "h:3"), ConfChangeType::AddLearnerNode),
        ] {
            let e = Entry {
                entry_type: EntryType::EntryConfChangeV2,
                data: cc.write_to_bytes().expect("encodes").into(),
                ..Default::default()
            };
            let back = change_of(&e).expect("decodes");
            assert_eq!(back.get_changes().len(), 1);
            assert_eq!(back.get_changes()[0].get_change_type(), kind);
            assert_eq!(back.get_changes()[0].node_id, 3);
        }
        let c = conf(&[1, 2], &[3]);
        assert_eq!(decode(&encode(&c).expect("encodes")).expect("decodes"), c);
    }
}
