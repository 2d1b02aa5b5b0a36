//! Admission: a member takes no part in raft until it has checked that none of its peers runs
//! a build of another command version and, if its raft log was empty when it started, until
//! its peers confirm it has not lived before.
//!
//! Raft's safety rests on a member never forgetting the entries it acknowledged or the vote it
//! cast. A member whose data dir was lost (a replaced disk, a pod on an `emptyDir`) and that
//! restarts under its old id has forgotten both: with members L, W and O, an entry L and W
//! acknowledged is committed; W restarts empty; L crashes before O has the entry; O and W elect
//! O (W's empty log is no newer than O's), and the committed entry is gone. Nothing on disk
//! tells that restart from a member's first start, so the cluster remembers instead: every
//! member records its start in the replicated state once in each life until it applies
//! (`fsm::members`, proposed by `core`), and a member starting on an empty log asks its peers
//! (`Peer.Status` lists the members each one's state records). One that lists it → the member
//! refuses to start. Enough peers answered without listing it → it is admitted.
//!
//! Enough is what intersects every quorum that could have committed the record: the record was
//! acknowledged by a quorum, at most one of which is the member itself, so at least `quorum - 1`
//! of its `n - 1` peers have it; any `n - quorum + 1` peers include one of them. Peers that are
//! admitting too (a whole cluster's first start) answer from their own state, and count (unless
//! their state descends from another backup: see below). `n` is
//! the size of the configuration the answers describe ([`Tally`]: the first members, `--peers`'
//! and those any answer so far named added, without those any answer named removed), not of
//! `--initial-cluster`: a cluster grown from 3 to 5 needs 3 answers, one shrunk from 5 to 3
//! needs 2; and only the answers of its members that this round's replies show voting count
//! toward those needed (not of one known from a log alone, from `--peers` alone, nor of a
//! learner: no acknowledgement of theirs counted toward a commit), though any may refuse. A peer
//! names the additions its log holds past the changes it applied as well as those it applied:
//! an addition is committed by a quorum of the configuration before it, so any `peers_needed`
//! of that configuration's other members include one that holds it, and the count grows to it
//! before it could admit. A member named once stays counted when a later round's answers miss
//! it — but for one a peer's log alone held, which that peer's later answer, holding it
//! neither in its log nor applied, drops (cut from its log, it was never committed).
//!
//! What this cannot see: a record not applied yet by the peers that hold it (proposed moments
//! before the data was lost, or held in a peer's log past its applied index), and a loss of
//! data on more members than the one asking. A member's record is proposed as soon as it knows
//! a leader, so the first window is the first moments of its first life.
//!
//! A member added at run time (`latch cluster add`, not one of `--initial-cluster`'s) asks the
//! same way, and is admitted only once a peer has it a learner — its addition applied
//! ([`joining_verdict`]); refused once every peer it asked answered without.
//!
//! Backups (`latch snapshot restore`): every first member of a restored cluster is restored
//! from the same file, alike (`fsm::RestoredFrom`, which a raft snapshot carries to every other
//! member), and every other member starts empty and is sent the state. So a first member that
//! no peer has a learner is refused beside a peer that descends from another backup, and
//! beside one that descends from none and runs (not admitting): an empty one beside restored
//! ones could, with another empty one, elect a leader of an empty log and run an empty cluster
//! beside theirs; a restored one beside empty ones that run already would take their entries
//! onto the file's state ([`Verdict::Restored`]). A peer that is admitting too and descends
//! from another backup does not count toward those needed: one of the two is refused once it
//! hears the other. And a member restored from a file that a peer has a learner (replaced, or
//! added at run time) is refused ([`Verdict::RestoredNotFirst`]): the leader would replay its
//! log onto the file's state, which need not be the one its log starts from.
//!
//! Before any of this, every member with peers checks that it can run beside their builds
//! (`server::upgrade::check`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Peer;
use crate::fsm::RestoredFrom;
use crate::transport::{peer_status, ADMITTING};
use latch_proto::internal::MemberStatus;

/// How long one peer's answer may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the peers are asked until enough have answered.
const ASK_EVERY: Duration = Duration::from_millis(200);
/// How often waiting for answers is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long every peer must answer without having a member added at run time before it is
/// refused: the peers asked may not have heard of its addition's commit yet.
const NOT_ADDED_FOR: Duration = Duration::from_secs(10);

/// How many peers must answer, none listing the member, before a member of a cluster of
/// `members` that started on an empty log is admitted (see the module doc).
pub fn peers_needed(members: usize) -> usize {
    if members <= 1 {
        return 0;
    }
    let quorum = members / 2 + 1;
    members - quorum + 1
}

/// A peer's answer: whether its applied state records the asking member's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answer {
    pub lists_me: bool,
    /// The peer's applied state has the asking member a learner: it was replaced
    /// (`core::membership`) and may take part again as one.
    pub learner: bool,
    /// The peer is admitting too (it started on an empty log).
    pub admitting: bool,
    /// The peer's applied configuration no longer has the asking member: it was removed.
    pub removed: bool,
    /// The backup the peer's state descends from.
    pub restored_from: RestoredFrom,
}

/// Whether a peer whose applied state records the starts of `started` and has `learners` among
/// its members lists `me` as a member that ran before. A learner does not count: it was
/// replaced (`core::membership`), so it takes part again only as a learner, whatever it forgot.
pub fn lists(started: &[u64], learners: &[u64], me: u64) -> bool {
    started.contains(&me) && !learners.contains(&me)
}

/// A member admitted on an empty log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// A peer has it a learner: it ran before and was replaced, or it was added to the running
    /// cluster (`core::membership`). Either way its empty state is not the cluster's first.
    pub replaced: bool,
    /// The members added at run time that the peers' configurations have, and their peer
    /// addresses (`Peer.Status.added`).
    pub added: BTreeMap<u64, String>,
}

/// The members of the configuration the answering peers describe: the first members (`first`)
/// and those added since, without those removed, over every peer's view — each view the
/// members its applied state records added, and removed. A peer that applied a change applied
/// every record before it, and ids are never used twice, so the union is the most advanced of
/// the views.
pub fn answering_configuration<'a>(
    first: &[u64],
    views: impl IntoIterator<Item = (&'a [u64], &'a [u64])>,
) -> BTreeSet<u64> {
    let mut members: BTreeSet<u64> = first.iter().copied().collect();
    let mut removed: BTreeSet<u64> = BTreeSet::new();
    for (added, gone) in views {
        members.extend(added);
        removed.extend(gone);
    }
    members.retain(|m| !removed.contains(m));
    members
}

/// One peer's reply to a member asking whether it ran before: its answer, and what its
/// configuration names added (applied; or held in its log past the changes it applied,
/// `Peer.Status.added_in_log`), removed, and learning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub answer: Answer,
    pub added: Vec<u64>,
    pub logged: Vec<u64>,
    pub removed: Vec<u64>,
    pub learners: Vec<u64>,
}

/// What a peer's status replies to member `me`.
pub fn reply_of(me: u64, s: &MemberStatus) -> Reply {
    let answer = Answer {
        lists_me: lists(&s.started_members, &s.learners, me),
        learner: s.learners.contains(&me),
        admitting: s.role == ADMITTING,
        removed: s.removed.contains(&me),
        restored_from: RestoredFrom {
            checksum: s.restored_from,
            skip_generations: s.restored_skip_generations,
        },
    };
    Reply {
        answer,
        added: s.added.iter().map(|a| a.id).collect(),
        logged: s.added_in_log.iter().map(|a| a.id).collect(),
        removed: s.removed.clone(),
        learners: s.learners.clone(),
    }
}

/// The replies of every round so far, counted: each round's answers are counted against the
/// configuration all rounds' replies describe ([`answering_configuration`]). What a peer
/// applied stays applied, and an addition a peer's log holds may have been committed, so a
/// peer that answers from behind, or not at all, in a later round does not make the
/// configuration smaller; an addition a peer's log held and its next reply neither holds nor
/// applied was cut from that log, never committed, and no longer counts from that peer. An answer counts only from a member that may have acknowledged the
/// asking member's record: one of the configuration, known from an applied addition or as a
/// first member (not from a log alone: it may be a joiner still admitting), that no reply of
/// the round names a learner (a learner's acknowledgements commit nothing). Only one round's
/// answers count: a peer behind at an earlier one may have applied the member's record since.
/// Bounded by the members the cluster ever had.
#[derive(Debug, Clone)]
pub struct Tally {
    me: u64,
    /// A member added at run time, not one of the first members: [`joining_verdict`].
    joins: bool,
    /// The first members (`--initial-cluster`'s), voters until a reply says otherwise, and
    /// `--peers`' (members now, as the operator says; voters only where a reply says so): members
    /// until a reply names them removed.
    initial: BTreeSet<u64>,
    current: BTreeSet<u64>,
    /// The members a reply named added as applied (for good), and, by peer, those its latest
    /// reply held only in its log.
    added: BTreeSet<u64>,
    logged: BTreeMap<u64, BTreeSet<u64>>,
    /// By member, the first peer whose reply named it removed.
    removed: BTreeMap<u64, u64>,
    /// The backup the asking member's state descends from.
    restored_from: RestoredFrom,
}

/// One round's replies, counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub verdict: Verdict,
    /// The configuration the replies so far describe.
    pub configuration: BTreeSet<u64>,
    /// The answers of its members, and those of them that count toward the answers needed:
    /// of members that vote, as far as this round's replies tell.
    pub answers: BTreeMap<u64, Answer>,
    pub voters: BTreeSet<u64>,
}

impl Tally {
    /// Counts for member `me`, whose cluster's first members are `initial` and whose `--peers`
    /// are `current`; `joins` when it is not one of the first members.
    pub fn new(
        me: u64,
        initial: impl IntoIterator<Item = u64>,
        current: impl IntoIterator<Item = u64>,
        joins: bool,
    ) -> Tally {
        Tally {
            me,
            joins,
            initial: initial.into_iter().collect(),
            current: current.into_iter().collect(),
            added: BTreeSet::new(),
            logged: BTreeMap::new(),
            removed: BTreeMap::new(),
            restored_from: RestoredFrom::default(),
        }
    }

    /// Counts for a member whose state descends from the backup `from`.
    pub fn restored_from(self, from: RestoredFrom) -> Tally {
        Tally { restored_from: from, ..self }
    }

    /// Counts one round's replies, by peer.
    pub fn count(&mut self, replies: &BTreeMap<u64, Reply>) -> Counted {
        // What this round's replies say of who votes: a member added at run time votes once
        // a reply has its addition applied, and none names it a learner.
        let (mut added, mut learners): (BTreeSet<u64>, BTreeSet<u64>) = (BTreeSet::new(), BTreeSet::new());
        for (peer, reply) in replies {
            self.added.extend(&reply.added);
            self.logged.insert(*peer, reply.logged.iter().copied().collect());
            added.extend(&reply.added);
            learners.extend(&reply.learners);
            for id in &reply.removed {
                self.removed.entry(*id).or_insert(*peer);
            }
        }
        let first: Vec<u64> = self.initial.union(&self.current).copied().collect();
        let logged = self.logged.values().flatten();
        let named: Vec<u64> =
            self.added.iter().chain(logged).copied().collect::<BTreeSet<u64>>().into_iter().collect();
        let removed: Vec<u64> = self.removed.keys().copied().collect();
        let configuration = answering_configuration(&first, [(named.as_slice(), removed.as_slice())]);
        let answers: BTreeMap<u64, Answer> = (replies.iter())
            .filter(|(peer, _)| configuration.contains(peer))
            .map(|(peer, reply)| (*peer, reply.answer))
            .collect();
        let mine = self.restored_from;
        let voters: BTreeSet<u64> = (answers.iter())
            .filter(|(p, a)| {
                (self.initial.contains(p) || added.contains(p))
                    && !learners.contains(p)
                    && !admitting_from_another_backup(mine, a)
            })
            .map(|(p, _)| *p)
            .collect();
        let members = configuration.len();
        let asked = configuration.iter().filter(|m| **m != self.me).count();
        // Removed is for good: an earlier round's reply that said so still does.
        let verdict = match self.removed.get(&self.me) {
            Some(peer) => Verdict::Removed { peer: *peer },
            None if self.joins => joining_weighed(members, asked, &answers, voters.len()),
            None => weighed(members, &answers, voters.len()),
        };
        let learner_at = answers.iter().find(|(_, a)| a.learner).map(|(p, _)| *p);
        let verdict = match verdict {
            Verdict::Admit | Verdict::Wait { .. } | Verdict::Disagree { .. } => {
                weigh_backups(verdict, (mine, self.joins), (members, &answers, &learners), learner_at)
            }
            verdict => verdict,
        };
        // Added, and a voter since at a peer: it ran to catch up and was promoted, so it lost
        // its data. With no peer having it a learner, it is not "never added" (whose advice,
        // add it, the cluster would refuse); with another having it a learner, one of the two
        // has not applied the latest change (its promotion, or its replacement): ask again
        // until they agree, as when a peer records its start.
        let voter_at = (replies.iter())
            .filter(|(p, _)| answers.contains_key(p))
            .find(|(_, r)| r.added.contains(&self.me) && !r.answer.learner)
            .map(|(p, _)| *p);
        let verdict = match (verdict, voter_at, learner_at) {
            (Verdict::NotAdded, Some(peer), _) => Verdict::Promoted { peer },
            (Verdict::Admit, Some(voter), Some(learner)) if self.joins => {
                Verdict::Disagree { lists: voter, learner }
            }
            (verdict, _, _) => verdict,
        };
        Counted { verdict, configuration, answers, voters }
    }
}

/// Whether `a` is the answer of a peer admitting too whose state descends from another backup
/// than `mine`: one of the two is refused once it hears the other, so it does not count toward
/// the answers needed.
fn admitting_from_another_backup(mine: RestoredFrom, a: &Answer) -> bool {
    a.admitting && a.restored_from != mine
}

/// `verdict` (an admission, a wait or a disagreement) as backups weigh it, for a member whose
/// state descends from `mine` (see the module doc): a first member, unless replaced (a learner
/// at `learner_at`), is refused beside a peer restored from another backup, or from none and
/// running; a member restored from a file that takes part as a learner is refused.
///
/// A running peer whose state descends from none runs a cluster of its own only when it is no
/// learner and, of as many answers as admit a member, none is of a running peer that descends
/// from this member's backup: a member replaced or added runs on an empty state until the
/// leader's snapshot comes, and while it does, any `peers_needed` answers of a restored cluster
/// that runs include one of its members sent the state (it started with `n - quorum + 2` of them
/// restored, and one member at a time is replaced or added). A peer still admitting from another
/// backup, beside running members of a restored member's own, is the odd one out: it is
/// refused itself once it hears them.
fn weigh_backups(
    verdict: Verdict,
    (mine, joins): (RestoredFrom, bool),
    (members, answers, learners): (usize, &BTreeMap<u64, Answer>, &BTreeSet<u64>),
    learner_at: Option<u64>,
) -> Verdict {
    if let Some(peer) = learner_at {
        return match mine.is_restored() {
            true => Verdict::RestoredNotFirst { peer },
            false => verdict,
        };
    }
    if joins || matches!(verdict, Verdict::Disagree { .. }) {
        return verdict;
    }
    let enough = answers.len() >= peers_needed(members);
    let restored_runs = answers.values().any(|a| a.restored_from == mine && !a.admitting);
    let rival = |peer: &u64, a: &Answer| {
        a.restored_from != mine
            && ((a.restored_from.is_restored() && !(a.admitting && restored_runs && mine.is_restored()))
                || (!a.admitting && enough && !restored_runs && !learners.contains(peer)))
    };
    // A running rival is named first, its backup being the one that runs.
    let mut rivals: Vec<(&u64, &Answer)> = answers.iter().filter(|(p, a)| rival(p, a)).collect();
    rivals.sort_by_key(|(_, a)| a.admitting);
    match rivals.first() {
        // Whether a cluster runs, which the refusal's advice depends on: for a restored member,
        // whether the rival named runs; for an empty one, whether any peer runs (to replace it in).
        Some((peer, a)) => Verdict::Restored {
            peer: **peer,
            theirs: a.restored_from,
            running: match mine.is_restored() {
                true => !a.admitting,
                false => answers.values().any(|a| !a.admitting),
            },
        },
        None => verdict,
    }
}

/// What the answers so far decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// This peer's configuration no longer has the member: it was removed for good.
    Removed {
        peer: u64,
    },
    /// This peer records the member's start.
    Refuse {
        peer: u64,
    },
    Wait {
        answered: usize,
        needed: usize,
    },
    /// Peer `lists` records the member's start (or, for a member added at run time, has it a
    /// voter) while peer `learner` has it a learner: one of them has not applied the latest
    /// change of membership yet (a replacement, or the member's promotion); asking again
    /// settles it.
    Disagree {
        lists: u64,
        learner: u64,
    },
    /// A member that is not one of `--initial-cluster`'s, and every peer asked answered without
    /// having it a learner: it was never added.
    NotAdded,
    /// Peer `peer`'s state descends from another backup than this first member's (no peer has
    /// it a learner), or from none and it runs: every first member of a restored cluster is
    /// restored from the same file, alike.
    Restored {
        peer: u64,
        /// What that peer's state descends from.
        theirs: RestoredFrom,
        /// Whether that peer runs (it is admitting too otherwise).
        running: bool,
    },
    /// Peer `peer` has this member, restored from a file, a learner (replaced, or added at run
    /// time): it is to start empty and be sent the state.
    RestoredNotFirst {
        peer: u64,
    },
    /// As [`Verdict::NotAdded`], but peer `peer` has the member added at run time: a voter
    /// since, so it ran (to catch up and be promoted) and lost its data. Its peers counted on
    /// what it acknowledged: it is to be replaced.
    Promoted {
        peer: u64,
    },
}

/// The verdict of `answers` (by peer id) for a member of a cluster of `members`.
pub fn verdict(members: usize, answers: &BTreeMap<u64, Answer>) -> Verdict {
    weighed(members, answers, answers.len())
}

/// As [`verdict`], where `answers` are those of every member of the configuration and `votes`
/// of them count toward those needed (the others' may still refuse).
fn weighed(members: usize, answers: &BTreeMap<u64, Answer>, votes: usize) -> Verdict {
    if let Some((peer, _)) = answers.iter().find(|(_, a)| a.removed) {
        return Verdict::Removed { peer: *peer };
    }
    if let Some((peer, _)) = answers.iter().find(|(_, a)| a.lists_me) {
        if let Some((learner, _)) = answers.iter().find(|(_, a)| a.learner) {
            return Verdict::Disagree { lists: *peer, learner: *learner };
        }
        return Verdict::Refuse { peer: *peer };
    }
    let needed = peers_needed(members);
    match votes >= needed {
        true => Verdict::Admit,
        false => Verdict::Wait { answered: votes, needed },
    }
}

/// The verdict of `answers` for a member added at run time, which asked `asked` peers: as
/// [`verdict`], but admitted only once a peer has it a learner (its addition applied there),
/// and refused once all of them answered without.
pub fn joining_verdict(members: usize, asked: usize, answers: &BTreeMap<u64, Answer>) -> Verdict {
    joining_weighed(members, asked, answers, answers.len())
}

/// As [`joining_verdict`], where `votes` of `answers` count toward those needed: "not added"
/// takes every member's answer, whether it votes or not.
fn joining_weighed(members: usize, asked: usize, answers: &BTreeMap<u64, Answer>, votes: usize) -> Verdict {
    let added = answers.values().any(|a| a.learner);
    match weighed(members, answers, votes) {
        Verdict::Admit if added => Verdict::Admit,
        Verdict::Admit | Verdict::Wait { .. } if !added && answers.len() >= asked => Verdict::NotAdded,
        Verdict::Admit => Verdict::Wait { answered: answers.len(), needed: asked },
        other => other,
    }
}

/// A member that is not one of `--initial-cluster`'s started, and none of its peers has it a
/// member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "member {member} is not one of --initial-cluster's, and none of its members {asked:?} has it \
     among the members added since: add it first, against the running cluster — `latch cluster add \
     {member} HOST:PORT`, its peer address — then start it"
)]
pub struct NotAdded {
    pub member: u64,
    pub asked: Vec<u64>,
}

/// Why a member on an empty log is not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    NotAdded(#[from] NotAdded),
}

/// A peer records the start of a member that started on an empty log: it may not take part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", refusal_text(self))]
pub struct Refused {
    pub member: u64,
    pub peer: u64,
    pub data_dir: PathBuf,
    /// What the peer's answer says of the member.
    pub because: RefusedBecause,
}

/// What a peer that refuses a member on an empty log says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBecause {
    /// It records the member's start.
    Started,
    /// It has the member, added at run time, a voter: promoted after it caught up, it ran.
    Promoted,
    /// Its configuration no longer has the member.
    Removed,
    /// Its state descends from another backup than the member's, and it runs or not
    /// ([`Verdict::Restored`]).
    Restored { mine: RestoredFrom, theirs: RestoredFrom, running: bool },
    /// It has the member, restored from a file, a learner ([`Verdict::RestoredNotFirst`]).
    RestoredNotFirst { mine: RestoredFrom },
}

fn refusal_text(r: &Refused) -> String {
    let Refused { member, peer, data_dir, because } = r;
    let data_dir = data_dir.display();
    let says = match because {
        RefusedBecause::Removed => {
            return format!(
                "member {member} started on an empty raft log in {data_dir}, but member {peer}'s \
                 configuration no longer has member {member}: it was removed from the cluster for good \
                 (`latch cluster remove`), and takes no part under its id again"
            )
        }
        RefusedBecause::Restored { mine, theirs, running } if !mine.is_restored() => {
            // Replacing it needs a cluster that runs: during a restored cluster's first start
            // its members are still admitting, and serve no client.
            let or_replace = match running {
                true => format!(
                    "; or, to have it sent the state instead, replace it first (`latch cluster replace \
                     {member}` against the running members) and start it empty"
                ),
                false => String::new(),
            };
            return format!(
                "member {member} started on an empty raft log in {data_dir}, but member {peer}'s state \
                 was restored from {theirs} as this cluster's first state (`latch snapshot restore`): \
                 restore this member from the same file, with the same --skip-generations, into an \
                 empty --data-dir (this one holds nothing of the cluster's: remove it) before starting \
                 it (first members started empty beside restored ones could elect a leader of an empty \
                 log){or_replace}"
            );
        }
        RefusedBecause::Restored { mine, theirs, .. } if !theirs.is_restored() => {
            return format!(
                "member {member} was restored from {mine} into {data_dir}, but member {peer} runs a \
                 state restored from no file: members started on empty data dirs before this one and \
                 run a cluster of their own, without the file's state, which this member would take \
                 entries from onto it. To run the restored cluster, stop every member, restore each \
                 from the same file, with the same --skip-generations, into an empty --data-dir, and \
                 start them (what the members that run took since is not in the file)"
            )
        }
        RefusedBecause::Restored { mine, theirs, running } => {
            let choose = match running {
                true => format!(
                    "The members that run have taken writes since, which no file holds: restore this \
                     member again from {theirs}, into an empty --data-dir, or replace it (`latch cluster \
                     replace {member}` against them) and start it empty"
                ),
                false => "Choose the file (the newest backup holds the most acknowledged writes) and \
                          restore again, into an empty --data-dir, every first member restored otherwise"
                    .to_string(),
            };
            return format!(
                "member {member} was restored from {mine} into {data_dir}, but member {peer}'s state \
                 from {theirs}: every first member of a restored cluster is restored from the same file, \
                 with the same --skip-generations (`latch snapshot status` shows a file's checksum). \
                 {choose}"
            );
        }
        RefusedBecause::RestoredNotFirst { mine } => {
            return format!(
                "member {member} was restored from {mine} into {data_dir}, but member {peer} has it a \
                 learner (replaced, or added at run time): such a member starts on an empty --data-dir \
                 and is sent the state by the leader, which would otherwise replay its log onto the \
                 file's state. Remove this data dir and start the member on an empty one"
            )
        }
        RefusedBecause::Started => format!("records that member {member} has run before"),
        RefusedBecause::Promoted => format!(
            "has member {member}, added at run time, a voter: it ran before, to catch up and be promoted"
        ),
    };
    format!(
        "member {member} started on an empty raft log in {data_dir}, but member {peer} {says}: a \
         member that lost its data must not take part again under its id — its peers counted on the \
         entries it acknowledged and the votes it cast, and committed writes could be lost. Bring \
         back this data dir as the member left it when it last ran (an older copy has forgotten as \
         much), or replace the member: `latch cluster replace {member}` against the running members \
         makes it a learner, and it may then start on an empty data dir, catch up, and vote again"
    )
}

/// A verdict of never added (or added and promoted since) holds only once it lasted
/// [`NOT_ADDED_FOR`]: the peers may be behind the addition's commit. Until then it is a wait;
/// any other verdict starts the grace over.
#[derive(Debug, Default)]
struct NotAddedGrace {
    since: Option<tokio::time::Instant>,
}

impl NotAddedGrace {
    /// `verdict` as it stands at `now`, with `(answered, needed)` for a wait.
    fn weigh(
        &mut self,
        verdict: Verdict,
        now: tokio::time::Instant,
        (answered, needed): (usize, usize),
    ) -> Verdict {
        match verdict {
            Verdict::NotAdded | Verdict::Promoted { .. } => {
                let since = *self.since.get_or_insert(now);
                match now.duration_since(since) < NOT_ADDED_FOR {
                    true => Verdict::Wait { answered, needed },
                    false => verdict,
                }
            }
            other => {
                self.since = None;
                other
            }
        }
    }
}

/// Asks `peers` (the members the cluster started with, `me` included unless it was added since)
/// and `current` (`--peers`: members that run now, where the first ones may be gone) until their
/// answers admit member `me` or one of them records its start. (A data dir that kept its state
/// but lost its log never gets here: `LogStore::reconcile` refuses it.)
pub async fn ask_peers(
    me: u64,
    cluster_id: u64,
    (peers, current): (&[Peer], &[Peer]),
    data_dir: &Path,
    restored_from: RestoredFrom,
) -> Result<Admitted, NotAdmitted> {
    let joins = !peers.iter().any(|p| p.id == me);
    // Whom to ask, and where: the first members and `--peers`, then the members the answers
    // name added (an address a peer applied replaces one only its log holds, which a later
    // leader may have proposed again at another address).
    let mut others: BTreeMap<u64, String> = BTreeMap::new();
    for p in peers.iter().chain(current).filter(|p| p.id != me) {
        others.entry(p.id).or_insert_with(|| p.peer_addr.clone());
    }
    let mut tally = Tally::new(me, peers.iter().map(|p| p.id), current.iter().map(|p| p.id), joins)
        .restored_from(restored_from);
    let mut grace = NotAddedGrace::default();
    match restored_from.is_restored() {
        true => tracing::info!(
            member = me,
            restored_from = %restored_from,
            "the raft log is as a restore left it: asking the peers whether this member has run before \
             and what their state descends from"
        ),
        false => {
            tracing::info!(
                member = me,
                "the raft log is empty: asking the peers whether this member has run before"
            )
        }
    }
    let mut logged = tokio::time::Instant::now();
    loop {
        let asked = (others.iter())
            .map(|(id, addr)| async move { (*id, peer_status(*id, addr, cluster_id, ASK_TIMEOUT).await) });
        let asked: Vec<_> = futures::future::join_all(asked).await;
        let mut silent = Vec::new();
        let (mut replies, mut added, mut logged_added) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (peer, answer) in asked {
            match answer {
                Ok(s) => {
                    added.extend(s.added.iter().map(|a| (a.id, a.peer_addr.clone())));
                    logged_added.extend(s.added_in_log.iter().map(|a| (a.id, a.peer_addr.clone())));
                    replies.insert(peer, reply_of(me, &s));
                }
                Err(e) => silent.push(format!("member {peer}: {e}")),
            }
        }
        // The members added since are asked too, from the next round on (one of them may lead).
        for (id, addr) in logged_added.iter().filter(|(id, _)| **id != me) {
            others.entry(*id).or_insert_with(|| addr.clone());
        }
        for (id, addr) in added.iter().filter(|(id, _)| **id != me) {
            others.insert(*id, addr.clone());
        }
        let Counted { verdict, configuration, answers, voters } = tally.count(&replies);
        let asked = configuration.iter().filter(|m| **m != me).count();
        let verdict = grace.weigh(verdict, tokio::time::Instant::now(), (answers.len(), asked));
        match verdict {
            Verdict::Admit => {
                let admitting: Vec<u64> =
                    answers.iter().filter(|(_, a)| a.admitting).map(|(p, _)| *p).collect();
                let replaced = answers.values().any(|a| a.learner);
                tracing::info!(
                    member = me,
                    answered = ?answers.keys().collect::<Vec<_>>(),
                    counted = ?voters,
                    ?admitting,
                    replaced,
                    "no peer records this member's start as a voter's: taking part"
                );
                return Ok(Admitted { replaced, added });
            }
            Verdict::Refuse { peer }
            | Verdict::Promoted { peer }
            | Verdict::Removed { peer }
            | Verdict::Restored { peer, .. }
            | Verdict::RestoredNotFirst { peer } => {
                let because = match verdict {
                    Verdict::Promoted { .. } => RefusedBecause::Promoted,
                    Verdict::Removed { .. } => RefusedBecause::Removed,
                    Verdict::Restored { theirs, running, .. } => {
                        RefusedBecause::Restored { mine: restored_from, theirs, running }
                    }
                    Verdict::RestoredNotFirst { .. } => {
                        RefusedBecause::RestoredNotFirst { mine: restored_from }
                    }
                    _ => RefusedBecause::Started,
                };
                return Err(Refused { member: me, peer, data_dir: data_dir.to_path_buf(), because }.into());
            }
            Verdict::NotAdded => {
                return Err(NotAdded { member: me, asked: others.keys().copied().collect() }.into());
            }
            Verdict::Disagree { lists, learner } => {
                if logged.elapsed() >= LOG_EVERY {
                    logged = tokio::time::Instant::now();
                    tracing::warn!(
                        member = me,
                        lists,
                        learner,
                        "one peer records this member's start or has it a voter, another has it a learner \
                         (replaced, or being promoted): asking again until they agree"
                    );
                }
            }
            Verdict::Wait { answered, needed } => {
                if logged.elapsed() >= LOG_EVERY {
                    logged = tokio::time::Instant::now();
                    // Admitting too, from another backup: not counted (one of the two is refused).
                    let not_counted: Vec<u64> = (answers.iter())
                        .filter(|(_, a)| admitting_from_another_backup(restored_from, a))
                        .map(|(p, _)| *p)
                        .collect();
                    tracing::warn!(
                        member = me,
                        answered,
                        needed,
                        not_answering = ?silent,
                        admitting_from_another_backup = ?not_counted,
                        "waiting for the peers to say whether this member has run before"
                    );
                }
            }
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(list: &[(u64, bool)]) -> BTreeMap<u64, Answer> {
        list.iter()
            .map(|(p, lists_me)| {
                (
                    *p,
                    Answer {
                        lists_me: *lists_me,
                        learner: false,
                        admitting: false,
                        removed: false,
                        restored_from: RestoredFrom::default(),
                    },
                )
            })
            .collect()
    }

    /// Every set of `needed` peers meets every set of `quorum - 1` peers (those holding a record
    /// a quorum acknowledged, one of its members being the asker itself).
    #[test]
    fn the_peers_needed_meet_every_quorum_that_could_hold_the_record() {
        assert_eq!(peers_needed(1), 0, "a single member has nobody to ask");
        for members in 2..=9usize {
            let quorum = members / 2 + 1;
            let needed = peers_needed(members);
            let peers = members - 1;
            let holders = quorum - 1;
            assert!(
                needed + holders > peers,
                "{members} members: {needed} answers could all miss the {holders} peers holding the record"
            );
            assert!(
                needed <= peers - holders + 1,
                "{members} members: asking {needed} peers asks more than needed"
            );
        }
        assert_eq!((peers_needed(3), peers_needed(5), peers_needed(2)), (2, 3, 1));
    }

    /// Answers count against the configuration they describe: grown from 3 first members to 5,
    /// two lagging peers that have the member a learner are not enough (they could both miss
    /// the two that recorded its promotion); shrunk from 5 to 3, the two members left are.
    #[test]
    fn answers_count_against_the_configuration_the_peers_applied_not_the_first_one() {
        let learner = Answer {
            lists_me: false,
            learner: true,
            admitting: false,
            removed: false,
            restored_from: RestoredFrom::default(),
        };
        let grown = answering_configuration(&[1, 2, 3], [(&[4u64, 5][..], &[][..]), (&[][..], &[][..])]);
        assert_eq!(grown.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5], "the most advanced view");
        let two = BTreeMap::from([(4, learner), (5, learner)]);
        assert_eq!(verdict(5, &two), Verdict::Wait { answered: 2, needed: 3 }, "5 members need 3 answers");
        assert_eq!(verdict(3, &two), Verdict::Admit, "what counting --initial-cluster's 3 would say");

        let shrunk = answering_configuration(&[1, 2, 3, 4, 5], [(&[][..], &[1u64, 2][..])]);
        assert_eq!(shrunk.into_iter().collect::<Vec<_>>(), [3, 4, 5], "the removed ones are no members");
        let from_4_and_5 = BTreeMap::from([(4, learner), (5, learner)]);
        assert_eq!(verdict(3, &from_4_and_5), Verdict::Admit, "the two left of three are enough");

        let replaced_again =
            answering_configuration(&[1, 2, 3], [(&[4u64][..], &[3u64][..]), (&[4][..], &[][..])]);
        assert_eq!(replaced_again.into_iter().collect::<Vec<_>>(), [1, 2, 4], "added, and one removed since");
    }

    fn reply(added: &[u64], removed: &[u64]) -> Reply {
        Reply { added: added.to_vec(), removed: removed.to_vec(), ..Reply::default() }
    }

    fn logging(logged: &[u64]) -> Reply {
        Reply { logged: logged.to_vec(), ..Reply::default() }
    }

    /// A peer's status becomes a reply: its applied additions and those only in its log kept
    /// apart, its removed members and learners, and its answer about the asking member.
    #[test]
    fn a_status_replies_with_its_applied_and_logged_additions_apart() {
        use latch_proto::internal::AddedMember;
        let at = |id: u64| AddedMember { id, peer_addr: format!("h:{id}") };
        let status = MemberStatus {
            role: ADMITTING.into(),
            started_members: vec![1, 2, 3],
            learners: vec![4],
            removed: vec![2],
            added: vec![at(4)],
            added_in_log: vec![at(5)],
            ..MemberStatus::default()
        };
        let reply = reply_of(3, &status);
        assert_eq!((reply.added, reply.logged), (vec![4], vec![5]), "applied and logged additions");
        assert_eq!((reply.removed, reply.learners), (vec![2], vec![4]));
        assert_eq!(
            reply.answer,
            Answer {
                lists_me: true,
                learner: false,
                admitting: true,
                removed: false,
                restored_from: RestoredFrom::default()
            }
        );
        let replaced = reply_of(4, &status).answer;
        assert_eq!(
            replaced,
            Answer {
                lists_me: false,
                learner: true,
                admitting: true,
                removed: false,
                restored_from: RestoredFrom::default()
            }
        );
        assert!(reply_of(2, &status).answer.removed, "member 2 was removed");
    }

    /// Grown from 3 first members to 5, member 1 restarts empty knowing only the first three.
    /// Member 2 holds the additions of 4 and 5 in its log, not applied; member 3 has neither.
    /// Counting their answers against the three would admit member 1 on two answers, where its
    /// start record may be held by 4 and 5 alone. The additions count from the round that names
    /// them on, also once no reply names them again.
    #[test]
    fn the_configuration_grows_by_what_any_round_named_and_never_shrinks_by_a_silent_or_lagging_peer() {
        let mut tally = Tally::new(1, [1, 2, 3], [], false);
        let first = tally.count(&BTreeMap::from([(2, logging(&[4, 5])), (3, reply(&[], &[]))]));
        assert_eq!(first.configuration.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(first.verdict, Verdict::Wait { answered: 2, needed: 3 }, "5 members need 3 answers");

        let lagging = tally.count(&BTreeMap::from([(3, reply(&[], &[]))]));
        assert_eq!(lagging.verdict, Verdict::Wait { answered: 1, needed: 3 }, "2 silent, 3 behind");
        assert_eq!(lagging.configuration.len(), 5, "what an earlier round named stays");

        let all = tally.count(&BTreeMap::from([
            (3, reply(&[], &[])),
            (4, reply(&[4, 5], &[])),
            (5, reply(&[4, 5], &[])),
        ]));
        assert_eq!(all.verdict, Verdict::Admit, "three of the five's other members answered without it");
    }

    #[test]
    fn never_added_is_told_only_once_every_answer_said_so_for_ten_seconds() {
        let mut grace = NotAddedGrace::default();
        let t0 = tokio::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let waits = Verdict::Wait { answered: 2, needed: 2 };
        assert_eq!(
            grace.weigh(Verdict::NotAdded, at(0), (2, 2)),
            waits,
            "the peers may be behind the commit"
        );
        assert_eq!(grace.weigh(Verdict::Promoted { peer: 2 }, at(9), (2, 2)), waits, "one grace for both");
        assert_eq!(
            grace.weigh(Verdict::Disagree { lists: 2, learner: 3 }, at(9), (2, 2)),
            Verdict::Disagree { lists: 2, learner: 3 },
            "another verdict is told as it is"
        );
        assert_eq!(grace.weigh(Verdict::NotAdded, at(10), (2, 2)), waits, "and starts the grace over");
        assert_eq!(grace.weigh(Verdict::NotAdded, at(19), (2, 2)), waits);
        assert_eq!(grace.weigh(Verdict::NotAdded, at(20), (2, 2)), Verdict::NotAdded, "ten seconds of it");
        assert_eq!(
            grace.weigh(Verdict::Promoted { peer: 3 }, at(21), (2, 2)),
            Verdict::Promoted { peer: 3 },
            "promoted since is told after the same grace"
        );
    }

    /// review-s64 L2: an addition a deposed leader's log held, cut from it since, holds up no
    /// answer once that peer answers without it; a silent peer's last reply still counts.
    #[test]
    fn an_addition_cut_from_a_peers_log_leaves_the_configuration_when_that_peer_answers_without_it() {
        let mut tally = Tally::new(1, [1, 2, 3], [], false);
        let first = tally.count(&BTreeMap::from([(2, logging(&[4])), (3, logging(&[5]))]));
        assert_eq!(first.configuration.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);

        let cut = tally.count(&BTreeMap::from([(2, reply(&[], &[]))]));
        assert_eq!(
            cut.configuration.iter().copied().collect::<Vec<_>>(),
            [1, 2, 3, 5],
            "member 2's log no longer holds the addition of 4, nor did it apply it; member 3, silent, \
             still names 5"
        );
        assert_eq!(cut.verdict, Verdict::Wait { answered: 1, needed: 2 }, "4 members need 2 answers");

        let applied = tally.count(&BTreeMap::from([(3, reply(&[5], &[]))]));
        let again = tally.count(&BTreeMap::from([(2, reply(&[], &[])), (3, reply(&[], &[]))]));
        assert_eq!(applied.configuration, again.configuration, "an applied addition stays, named or not");
        assert_eq!(again.verdict, Verdict::Admit, "two of the four's other members answered without it");
    }

    /// review-s64 M1: a member known only from a peer's log (a joiner, perhaps still admitting)
    /// or named a learner (catching up) acknowledged nothing that committed, so its answer does
    /// not take a voter's place: with 3 voters, a lagging member 3 holding "add 4" in its log and
    /// member 4 answering, member 1 still waits for member 2.
    #[test]
    fn only_voters_answers_count_not_a_member_known_from_a_log_or_a_learner() {
        let mut tally = Tally::new(1, [1, 2, 3], [], false);
        let admitting = Reply { answer: Answer { admitting: true, ..Answer::default() }, ..Reply::default() };
        let counted = tally.count(&BTreeMap::from([(3, logging(&[4])), (4, admitting.clone())]));
        assert_eq!(counted.configuration.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(
            counted.voters.iter().copied().collect::<Vec<_>>(),
            [3],
            "member 4 is known from a log alone"
        );
        assert_eq!(counted.verdict, Verdict::Wait { answered: 1, needed: 2 });

        let learning = Reply { added: vec![4], learners: vec![4], ..Reply::default() };
        let counted = tally.count(&BTreeMap::from([(3, learning), (4, admitting)]));
        assert_eq!(counted.voters.iter().copied().collect::<Vec<_>>(), [3], "member 4 is a learner");
        assert_eq!(counted.verdict, Verdict::Wait { answered: 1, needed: 2 });
    }

    /// review-s64-2: whether a member votes is read from the round's own replies — a member of
    /// `--peers` votes only once a reply has its addition applied, and a member an earlier round
    /// named a learner does not count on its own answer later; a member that does not count may
    /// still refuse, and a joiner is not added once every member answered, voting or not.
    #[test]
    fn who_votes_is_read_from_the_rounds_own_replies_and_any_member_may_refuse() {
        let mut tally = Tally::new(5, [1, 2], [3, 4], true);
        let alone = tally.count(&BTreeMap::from([(3, Reply::default()), (4, Reply::default())]));
        assert!(alone.voters.is_empty(), "--peers' members, no reply has them added: {alone:?}");

        let mut tally = Tally::new(1, [1, 2, 3], [], false);
        let learning = Reply { added: vec![4], learners: vec![4], ..Reply::default() };
        tally.count(&BTreeMap::from([(3, learning)]));
        let later = tally.count(&BTreeMap::from([(4, Reply::default())]));
        assert!(later.voters.is_empty(), "member 4 answers alone a round later: {later:?}");

        let mut tally = Tally::new(1, [1, 2, 3], [], false);
        let lister = Reply { answer: Answer { lists_me: true, ..Answer::default() }, ..Reply::default() };
        let from_log = tally.count(&BTreeMap::from([(2, logging(&[4])), (3, Reply::default()), (4, lister)]));
        assert_eq!(
            from_log.verdict,
            Verdict::Refuse { peer: 4 },
            "a member that does not vote still refuses"
        );

        let mut tally = Tally::new(5, [1, 2, 3], [], true);
        let learning = Reply { added: vec![4], learners: vec![4], ..Reply::default() };
        let all = [(1, learning.clone()), (2, learning.clone()), (3, learning), (4, Reply::default())];
        let never = tally.count(&BTreeMap::from(all));
        assert_eq!(never.verdict, Verdict::NotAdded, "every member answered without member 5: {never:?}");
    }

    /// A reply of a member that is not in the configuration the replies describe does not count
    /// (a removed member that still runs answers from a stale state); a reply that named the
    /// asking member removed refuses it in every later round, whatever the later replies say.
    #[test]
    fn only_members_answers_count_and_a_removal_once_named_stays() {
        let mut tally = Tally::new(3, [1, 2, 3], [], false);
        let counted = tally.count(&BTreeMap::from([(1, reply(&[4], &[2])), (2, reply(&[], &[]))]));
        assert_eq!(
            counted.configuration.iter().copied().collect::<Vec<_>>(),
            [1, 3, 4],
            "2 removed, 4 added"
        );
        assert_eq!(counted.answers.keys().copied().collect::<Vec<_>>(), [1], "removed member 2's answer");
        assert_eq!(counted.verdict, Verdict::Wait { answered: 1, needed: 2 });

        let mut tally = Tally::new(3, [1, 2, 3], [], false);
        let removed = tally.count(&BTreeMap::from([(1, reply(&[], &[3]))]));
        assert_eq!(removed.verdict, Verdict::Removed { peer: 1 });
        let later = tally.count(&BTreeMap::from([(1, reply(&[], &[])), (2, reply(&[], &[]))]));
        assert_eq!(later.verdict, Verdict::Removed { peer: 1 }, "removed is for good");
    }

    /// A member added at run time counts itself once a reply names it added, and is not added
    /// until one has it a learner.
    #[test]
    fn a_joining_member_counts_against_the_configuration_that_has_it() {
        let mut tally = Tally::new(4, [1, 2, 3], [], true);
        let none =
            tally.count(&BTreeMap::from([(1, reply(&[], &[])), (2, reply(&[], &[])), (3, reply(&[], &[]))]));
        assert_eq!(none.verdict, Verdict::NotAdded, "every member answered without it");
        let learner = Reply { answer: Answer { learner: true, ..Answer::default() }, ..reply(&[4], &[]) };
        let added = tally.count(&BTreeMap::from([(1, learner.clone()), (2, reply(&[], &[]))]));
        assert_eq!(added.configuration.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(added.verdict, Verdict::Admit, "two of its three peers answered, one has it a learner");
    }

    /// A member added at run time and promoted since that lost its data before its start was
    /// recorded: every peer has it added, none a learner. It ran (to catch up and be promoted),
    /// so it is refused as a member that ran before (replace it), not told to add itself — the
    /// cluster would refuse that, its id being a member already.
    #[test]
    fn an_added_member_promoted_since_that_lost_its_data_is_refused_not_told_to_add_itself() {
        let mut tally = Tally::new(4, [1, 2, 3], [], true);
        let voter = tally.count(&BTreeMap::from([
            (1, reply(&[4], &[])),
            (2, reply(&[4], &[])),
            (3, reply(&[4], &[])),
        ]));
        assert_eq!(
            voter.verdict,
            Verdict::Promoted { peer: 1 },
            "every peer answered, all have it added: {voter:?}"
        );
        let mut tally = Tally::new(4, [1, 2, 3], [], true);
        let learning = Reply {
            answer: Answer { learner: true, ..Answer::default() },
            learners: vec![4],
            ..reply(&[4], &[])
        };
        let mixed =
            tally.count(&BTreeMap::from([(1, reply(&[4], &[])), (2, learning.clone()), (3, learning)]));
        assert_eq!(
            mixed.verdict,
            Verdict::Disagree { lists: 1, learner: 2 },
            "a voter at one peer, a learner at others: one of them is behind, ask again: {mixed:?}"
        );
        let refused =
            Refused { member: 4, peer: 1, data_dir: PathBuf::from("/d"), because: RefusedBecause::Promoted };
        let text = refused.to_string();
        assert!(
            text.contains("member 1 has member 4, added at run time, a voter")
                && text.contains("latch cluster replace 4"),
            "the refusal says what the peer said and how to bring the member back: {text}"
        );
    }

    #[test]
    fn one_peer_that_records_the_member_refuses_it_however_many_do_not() {
        let a = answers(&[(1, false), (3, true), (4, false), (5, false)]);
        assert_eq!(verdict(5, &a), Verdict::Refuse { peer: 3 });
        assert_eq!(
            verdict(3, &answers(&[(2, true)])),
            Verdict::Refuse { peer: 2 },
            "refused before enough answered"
        );
    }

    #[test]
    fn a_replaced_member_is_not_listed_and_waits_while_its_peers_disagree_on_it() {
        assert!(!lists(&[1, 2, 3], &[3], 3), "a learner is not listed");
        assert!(lists(&[1, 2, 3], &[], 3), "a voter that ran before is");
        assert!(!lists(&[1, 2], &[], 3), "a member that never ran is not");
        let learner = Answer {
            lists_me: false,
            learner: true,
            admitting: false,
            removed: false,
            restored_from: RestoredFrom::default(),
        };
        let lister = Answer {
            lists_me: true,
            learner: false,
            admitting: false,
            removed: false,
            restored_from: RestoredFrom::default(),
        };
        let both = BTreeMap::from([(1, learner), (2, lister)]);
        assert_eq!(verdict(3, &both), Verdict::Disagree { lists: 2, learner: 1 }, "one of them is behind");
        assert_eq!(verdict(3, &BTreeMap::from([(1, learner), (2, learner)])), Verdict::Admit);
    }

    #[test]
    fn an_added_member_is_admitted_once_a_peer_has_it_a_learner_and_refused_once_none_of_all_has() {
        let learner = Answer {
            lists_me: false,
            learner: true,
            admitting: false,
            removed: false,
            restored_from: RestoredFrom::default(),
        };
        let stranger = Answer {
            lists_me: false,
            learner: false,
            admitting: false,
            removed: false,
            restored_from: RestoredFrom::default(),
        };
        assert_eq!(
            joining_verdict(3, 3, &BTreeMap::from([(1, stranger), (2, stranger)])),
            Verdict::Wait { answered: 2, needed: 3 },
            "the third may be the leader, which applied the addition first"
        );
        assert_eq!(joining_verdict(3, 3, &BTreeMap::from([(1, stranger), (2, learner)])), Verdict::Admit);
        assert_eq!(
            joining_verdict(3, 3, &BTreeMap::from([(1, stranger), (2, stranger), (3, stranger)])),
            Verdict::NotAdded
        );
        let lister = Answer { lists_me: true, ..stranger };
        assert_eq!(
            joining_verdict(3, 3, &BTreeMap::from([(1, lister), (2, stranger), (3, stranger)])),
            Verdict::Refuse { peer: 1 },
            "an added member that voted and lost its data is refused as any other"
        );
        let said = NotAdded { member: 4, asked: vec![1, 2, 3] }.to_string();
        assert!(said.contains("latch cluster add 4 HOST:PORT"), "it says what to do: {said}");
    }

    fn file(checksum: u64) -> RestoredFrom {
        RestoredFrom { checksum, skip_generations: 0 }
    }

    /// A running peer's reply whose state descends from `from`.
    fn from(from: RestoredFrom) -> Reply {
        Reply { answer: Answer { restored_from: from, ..Answer::default() }, ..Reply::default() }
    }

    /// The reply of a peer admitting too, whose state descends from `backup`.
    fn admitting_from(backup: RestoredFrom) -> Reply {
        let running = from(backup);
        Reply { answer: Answer { admitting: true, ..running.answer }, ..running }
    }

    /// A running peer's reply, its state from file 7, that has member `id` a learner: replaced,
    /// or, `added`, added at run time.
    fn has_learner(id: u64, added: bool) -> Reply {
        Reply {
            answer: Answer { learner: true, ..from(file(7)).answer },
            added: if added { vec![id] } else { vec![] },
            learners: vec![id],
            ..from(file(7))
        }
    }

    /// review-s69 M2: a first member starting empty beside a restored one is refused (it was to
    /// be restored from the same file), however many empty ones answer, and so is one restored
    /// from another file or with other skipped generations; one restored from the same file,
    /// alike, a replaced member (a learner at a peer) and a member added at run time are not.
    #[test]
    fn a_first_member_beside_one_restored_from_another_file_or_none_is_refused_unless_replaced_or_added() {
        let empty = admitting_from(RestoredFrom::default());
        let counted = Tally::new(3, [1, 2, 3], [], false)
            .count(&BTreeMap::from([(1, from(file(7))), (2, empty.clone())]));
        assert_eq!(
            counted.verdict,
            Verdict::Restored { peer: 1, theirs: file(7), running: true },
            "empty beside a restored member"
        );
        let counted =
            Tally::new(3, [1, 2, 3], [], false).count(&BTreeMap::from([(1, empty.clone()), (2, empty)]));
        assert_eq!(counted.verdict, Verdict::Admit, "a whole new cluster's first start is admitted");
        let mine = Tally::new(3, [1, 2, 3], [], false).restored_from(file(7));
        let counted = mine.clone().count(&BTreeMap::from([(1, from(file(7))), (2, from(file(7)))]));
        assert_eq!(counted.verdict, Verdict::Admit, "restored from the same file as its peers");
        let counted = mine.clone().count(&BTreeMap::from([(1, from(file(7))), (2, from(file(8)))]));
        assert_eq!(
            counted.verdict,
            Verdict::Restored { peer: 2, theirs: file(8), running: true },
            "a peer restored from another file"
        );
        let skipped = RestoredFrom { checksum: 7, skip_generations: 1000 };
        let counted = mine.clone().count(&BTreeMap::from([(1, from(file(7))), (2, from(skipped))]));
        assert_eq!(
            counted.verdict,
            Verdict::Restored { peer: 2, theirs: skipped, running: true },
            "a peer restored from the same file with other generations skipped holds another state"
        );
        let lister = Reply { answer: Answer { lists_me: true, ..from(file(7)).answer }, ..from(file(7)) };
        let counted = mine.clone().count(&BTreeMap::from([(1, lister), (2, from(file(7)))]));
        assert_eq!(
            counted.verdict,
            Verdict::Refuse { peer: 1 },
            "restored again after it ran: its start is recorded"
        );

        let replaced = has_learner(3, false);
        let counted =
            Tally::new(3, [1, 2, 3], [], false).count(&BTreeMap::from([(1, from(file(7))), (2, replaced)]));
        assert_eq!(counted.verdict, Verdict::Admit, "a replaced member takes part as a learner");
        let has_it = has_learner(4, true);
        let counted = Tally::new(4, [1, 2, 3], [], true).count(&BTreeMap::from([
            (1, has_it.clone()),
            (2, has_it),
            (3, from(file(7))),
        ]));
        assert_eq!(counted.verdict, Verdict::Admit, "a member added to the restored cluster is admitted");
        let cases = [
            (RestoredFrom::default(), file(7), "restore this member from the same file"),
            (file(9), file(7), "checksum 0000000000000007"),
            (file(7), RestoredFrom::default(), "stop every member, restore each from the same file"),
        ];
        for (mine, theirs, says) in cases {
            let because = RefusedBecause::Restored { mine, theirs, running: true };
            let text = Refused { member: 3, peer: 1, data_dir: PathBuf::from("/d"), because }.to_string();
            assert!(text.contains(says), "the refusal should say {says:?}: {text}");
        }
    }

    /// review-s69-3 R1: with 4 or more first members, empty ones may admit each other before a
    /// restored one answers, and run a cluster of their own; the restored one, started later,
    /// is refused beside them rather than take their entries onto the file's state. Beside
    /// empty ones still admitting, it waits: they are refused once they hear it.
    #[test]
    fn a_restored_member_is_refused_beside_empty_ones_that_run_and_does_not_count_those_admitting() {
        let mine = Tally::new(1, [1, 2, 3, 4, 5], [], false).restored_from(file(7));
        let running = from(RestoredFrom::default());
        let counted = mine.clone().count(&BTreeMap::from([
            (2, running.clone()),
            (3, running.clone()),
            (4, running.clone()),
            (5, running),
        ]));
        assert_eq!(
            counted.verdict,
            Verdict::Restored { peer: 2, theirs: RestoredFrom::default(), running: true },
            "empty members that run a cluster of their own"
        );
        let empty = admitting_from(RestoredFrom::default());
        let restored = admitting_from(file(7));
        let counted = mine.clone().count(&BTreeMap::from([
            (2, empty.clone()),
            (3, empty.clone()),
            (4, empty),
            (5, restored),
        ]));
        assert_eq!(
            counted.verdict,
            Verdict::Wait { answered: 1, needed: 3 },
            "empty members still admitting do not count toward those needed"
        );
        assert_eq!(counted.voters, BTreeSet::from([5]), "only the one restored alike counts");
    }

    /// review-s70 H1: a running peer whose state descends from no backup is a member replaced
    /// or added that waits for the leader's snapshot when it is a learner, or when a running
    /// peer descends from this member's backup: a restored member slow to start is admitted
    /// beside it, not told to restore every member again.
    #[test]
    fn a_restored_member_is_admitted_beside_a_learner_or_a_peer_not_sent_the_state_yet() {
        let mine = Tally::new(5, [1, 2, 3, 4, 5], [], false).restored_from(file(7));
        let catching_up = from(RestoredFrom::default());
        let with_learner = Reply { learners: vec![3], ..from(file(7)) };
        let counted = mine.clone().count(&BTreeMap::from([
            (1, with_learner.clone()),
            (2, with_learner),
            (3, catching_up.clone()),
            (4, from(file(7))),
        ]));
        assert_eq!(counted.verdict, Verdict::Admit, "a learner that has no state yet");
        let counted = mine.clone().count(&BTreeMap::from([
            (1, from(file(7))),
            (2, from(file(7))),
            (3, catching_up.clone()),
            (4, from(file(7))),
        ]));
        assert_eq!(
            counted.verdict,
            Verdict::Admit,
            "an empty state beside running members restored alike is one of theirs, not sent the state yet"
        );
        let admitting = admitting_from(file(7));
        // review-s70-2 M1: a round too short to admit (after a power cut, the member catching
        // up came back first) tells nothing of what runs: asked again.
        let counted = mine.clone().count(&BTreeMap::from([(1, admitting.clone()), (2, catching_up.clone())]));
        assert_eq!(counted.verdict, Verdict::Wait { answered: 2, needed: 3 }, "too few answers to judge");
        let counted = mine.clone().count(&BTreeMap::from([
            (1, admitting.clone()),
            (2, catching_up.clone()),
            (3, catching_up.clone()),
        ]));
        assert_eq!(
            counted.verdict,
            Verdict::Restored { peer: 2, theirs: RestoredFrom::default(), running: true },
            "with as many answers as admit and none of its own running, empty states that run are a cluster of their own"
        );
        // The learner exemption alone: no running peer of its backup answered.
        let mut mine3 = Tally::new(3, [1, 2, 3], [], false).restored_from(file(7));
        let names_learner = Reply { learners: vec![2], ..admitting };
        let counted = mine3.count(&BTreeMap::from([(1, names_learner), (2, catching_up)]));
        assert_eq!(
            counted.verdict,
            Verdict::Wait { answered: 1, needed: 2 },
            "a learner on an empty state is no cluster of its own, nor a voter"
        );
        let empty = admitting_from(RestoredFrom::default());
        let counted = Tally::new(3, [1, 2, 3], [], false)
            .count(&BTreeMap::from([(1, admitting_from(file(7))), (2, empty)]));
        let Verdict::Restored { running: false, .. } = counted.verdict else {
            panic!("beside members still admitting, the refusal knows none runs: {:?}", counted.verdict)
        };
        for (running, offered) in [(false, false), (true, true)] {
            let because =
                RefusedBecause::Restored { mine: RestoredFrom::default(), theirs: file(7), running };
            let text = Refused { member: 3, peer: 1, data_dir: PathBuf::from("/d"), because }.to_string();
            assert_eq!(
                text.contains("latch cluster replace 3"),
                offered,
                "replacing it is offered only when a cluster runs to replace it in: {text}"
            );
        }
        let because = RefusedBecause::Restored { mine: file(9), theirs: file(7), running: true };
        let text = Refused { member: 3, peer: 1, data_dir: PathBuf::from("/d"), because }.to_string();
        assert!(
            text.contains("taken writes since") && text.contains("latch cluster replace 3"),
            "beside a cluster that runs, the advice keeps its writes: {text}"
        );
    }

    /// A peer's status names what its state descends from, file and skipped generations.
    #[test]
    fn a_reply_carries_the_peers_backup_whole() {
        let status =
            MemberStatus { restored_from: 7, restored_skip_generations: 1_000, ..MemberStatus::default() };
        assert_eq!(
            reply_of(3, &status).answer.restored_from,
            RestoredFrom { checksum: 7, skip_generations: 1_000 }
        );
    }

    /// review-s70-3 L3: beside running members of its own backup, a peer still admitting from
    /// another is the odd one out (refused itself once it hears them), not a reason to refuse
    /// this member; a refusal names a running rival's backup before an admitting one's.
    #[test]
    fn a_restored_member_beside_its_own_running_backup_is_not_refused_over_an_odd_admitting_one() {
        let mine = Tally::new(5, [1, 2, 3, 4, 5], [], false).restored_from(file(7));
        let odd = admitting_from(file(8));
        let counted = mine.clone().count(&BTreeMap::from([
            (1, from(file(7))),
            (2, from(file(7))),
            (3, from(file(7))),
            (4, odd.clone()),
        ]));
        assert_eq!(counted.verdict, Verdict::Admit, "the odd admitting member is refused, not this one");
        let counted = mine.clone().count(&BTreeMap::from([(1, odd), (2, from(file(9))), (3, from(file(9)))]));
        assert_eq!(
            counted.verdict,
            Verdict::Restored { peer: 2, theirs: file(9), running: true },
            "the running rival's backup is named, not the admitting one's"
        );
        // review-s70-4 L2: the advice says a cluster of the rival's runs only when the one named does.
        let counted =
            mine.clone().count(&BTreeMap::from([(1, admitting_from(file(9))), (2, admitting_from(file(7)))]));
        assert_eq!(
            counted.verdict,
            Verdict::Restored { peer: 1, theirs: file(9), running: false },
            "no member of the rival's backup runs"
        );
        // review-s70-4 L1: an empty member is refused beside any member restored from a file,
        // admitting or not, whatever runs beside it (an empty state that runs may be catching up).
        let empty = Tally::new(5, [1, 2, 3, 4, 5], [], false);
        let restored = admitting_from(file(8));
        let counted = empty.clone().count(&BTreeMap::from([
            (1, from(RestoredFrom::default())),
            (2, from(RestoredFrom::default())),
            (3, restored),
        ]));
        let Verdict::Restored { peer: 3, .. } = counted.verdict else {
            panic!("an empty first member beside a restored one is refused: {:?}", counted.verdict)
        };
    }

    /// review-s69-3 R2: a member restored from a file that its peers have a learner (replaced,
    /// or added at run time) is refused: it is to start empty and be sent the state, not have
    /// the leader's log replayed onto a file's state that need not be the one it starts from.
    #[test]
    fn a_replaced_or_added_member_restored_from_a_file_is_refused() {
        let replaced = has_learner(3, false);
        let counted = (Tally::new(3, [1, 2, 3], [], false).restored_from(file(7)))
            .count(&BTreeMap::from([(1, from(file(7))), (2, replaced)]));
        assert_eq!(
            counted.verdict,
            Verdict::RestoredNotFirst { peer: 2 },
            "a replaced member restored from a file"
        );
        let has_it = has_learner(4, true);
        let counted = (Tally::new(4, [1, 2, 3], [], true).restored_from(file(7))).count(&BTreeMap::from([
            (1, has_it.clone()),
            (2, has_it),
            (3, from(file(7))),
        ]));
        assert_eq!(
            counted.verdict,
            Verdict::RestoredNotFirst { peer: 1 },
            "an added member restored from a file"
        );
        let because = RefusedBecause::RestoredNotFirst { mine: file(7) };
        let text = Refused { member: 4, peer: 1, data_dir: PathBuf::from("/d"), because }.to_string();
        assert!(text.contains("start the member on an empty one"), "the refusal says what to do: {text}");
    }

    #[test]
    fn a_member_waits_for_enough_answers_then_is_admitted() {
        assert_eq!(verdict(3, &answers(&[])), Verdict::Wait { answered: 0, needed: 2 });
        assert_eq!(verdict(3, &answers(&[(1, false)])), Verdict::Wait { answered: 1, needed: 2 });
        assert_eq!(verdict(3, &answers(&[(1, false), (3, false)])), Verdict::Admit);
        assert_eq!(verdict(5, &answers(&[(1, false), (2, false)])), Verdict::Wait { answered: 2, needed: 3 });
        assert_eq!(verdict(1, &answers(&[])), Verdict::Admit, "a single member is admitted at once");
    }
}
