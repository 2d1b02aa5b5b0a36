//! Fewer raft messages per Ready: what raft-rs produced for one peer between two Readies is
//! joined before it leaves.
//!
//! raft-rs sends an append per proposal (each `propose` broadcasts its entry) and another, empty
//! one each time the commit index moves; a follower answers each append it takes. Under load a
//! leader's Ready held about two appends per entry per follower, and every one costs a frame,
//! a wake-up of the follower's raft thread and an answer. Joined, a Ready sends a follower one
//! append carrying every new entry and the newest commit index, and a follower answers it once.
//! (raft-rs's own `batch_append` does the first half, but without any bound on the joined
//! message's size.)
//!
//! Invariants (what makes a joined message one raft-rs could have sent itself):
//! - Only messages of one `send` are joined: nothing moves across the leader's fsync.
//! - An append joins the last message kept for its peer only if that one is an append of the
//!   same term and sender, and the later one continues it exactly: its previous entry
//!   (`index`, `log_term`) is the earlier one's last entry (or its previous entry, when it has
//!   none). The joined append carries the entries of both, in order, and the larger commit
//!   index; a follower takes it as it would have taken the two in turn.
//! - A joined append stays within [`MAX_MESSAGE_BYTES`] of entries (their data and context,
//!   plus a generous [`ENTRY_OVERHEAD_BYTES`] each), about the bound raft-rs keeps its own
//!   appends to (`max_size_per_msg`, by its encoded size); past it a new message starts. So a
//!   peer never gets a larger append than raft-rs alone would send it (one entry over the bound
//!   goes alone), and the member's `--max-peer-queue-bytes` holds any of them.
//! - An accepting append answer (not a rejection) is dropped when a later one to the same peer,
//!   of the same term, acknowledges an index at least as high: the later one says everything
//!   the earlier did. Rejections, and every other message, leave as raft-rs made them, in order
//!   per peer (raft tolerates reordering and loss, but nothing here relies on that).

use raft::eraftpb::{Message, MessageType};

use super::MAX_MESSAGE_BYTES;

/// What an entry costs the size bound besides its data and context (index, term, type,
/// framing).
const ENTRY_OVERHEAD_BYTES: u64 = 32;

/// `msgs` with the appends to each peer joined and superseded append answers dropped (see the
/// module doc).
pub fn coalesce(msgs: Vec<Message>) -> Vec<Message> {
    if msgs.len() < 2 {
        return msgs;
    }
    let mut out: Vec<Message> = Vec::with_capacity(msgs.len());
    // Per peer: where in `out` its last kept message is, if it is one a later message may
    // join (an append) or replace (an accepting append answer), and that message's entry
    // bytes. Clusters are small: a list.
    let mut open: Vec<Open> = Vec::new();
    for m in msgs {
        let slot = open.iter().position(|o| o.to == m.to);
        let append = m.get_msg_type() == MessageType::MsgAppend;
        let answer = m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject;
        if !append && !answer {
            // Anything else to this peer ends what may be joined before it.
            if let Some(s) = slot {
                open.swap_remove(s);
            }
            out.push(m);
            continue;
        }
        let bytes = entry_bytes(&m);
        if let Some(s) = slot {
            let (at, joined) = (open[s].at, open[s].bytes + bytes);
            if append && joins(&out[at], &m, joined) {
                join(&mut out[at], m);
                open[s].bytes = joined;
                continue;
            }
            if answer && supersedes(&m, &out[at]) {
                out[at] = m;
                continue;
            }
        }
        let kept = Open { to: m.to, at: out.len(), bytes };
        match slot {
            Some(s) => open[s] = kept,
            None => open.push(kept),
        }
        out.push(m);
    }
    out
}

/// A peer's last kept message, while later ones may join or replace it.
struct Open {
    to: u64,
    /// Its place in the output.
    at: usize,
    /// Its entry bytes ([`entry_bytes`]).
    bytes: u64,
}

/// Whether append `b` may be joined to `a`, the last message kept for the same peer, giving
/// `joined_bytes` of entries.
fn joins(a: &Message, b: &Message, joined_bytes: u64) -> bool {
    let next = a.index + a.entries.len() as u64;
    let last_term = a.entries.last().map_or(a.log_term, |e| e.term);
    a.get_msg_type() == MessageType::MsgAppend
        && a.term == b.term
        && a.from == b.from
        && b.index == next
        && b.log_term == last_term
        && joined_bytes <= MAX_MESSAGE_BYTES
}

fn join(a: &mut Message, b: Message) {
    let Message { entries, commit, .. } = b;
    let mut joined = a.take_entries().into_vec();
    joined.extend(entries.into_vec());
    a.set_entries(joined.into());
    a.commit = a.commit.max(commit);
}

/// Whether accepting answer `later` says all that `earlier`, the last message kept for the same
/// peer, said.
fn supersedes(later: &Message, earlier: &Message) -> bool {
    earlier.get_msg_type() == MessageType::MsgAppendResponse
        && !earlier.reject
        && earlier.term == later.term
        && earlier.from == later.from
        && later.index >= earlier.index
        && later.commit >= earlier.commit
}

fn entry_bytes(m: &Message) -> u64 {
    m.entries.iter().map(|e| (e.data.len() + e.context.len()) as u64 + ENTRY_OVERHEAD_BYTES).sum()
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::Entry;

    use super::*;

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        Entry { index, term, data: vec![7; bytes].into(), ..Default::default() }
    }

    /// An append from 1 to `to` in `term`: after (`index`, `log_term`), `entries` (index,
    /// entry term), commit `commit`.
    fn append(
        to: u64,
        term: u64,
        (index, log_term): (u64, u64),
        entries: &[(u64, u64)],
        commit: u64,
    ) -> Message {
        let mut m = Message { to, from: 1, term, index, log_term, commit, ..Default::default() };
        m.set_msg_type(MessageType::MsgAppend);
        m.set_entries(entries.iter().map(|&(i, t)| entry(i, t, 10)).collect::<Vec<_>>().into());
        m
    }

    fn answer(to: u64, term: u64, index: u64, commit: u64, reject: bool) -> Message {
        let mut m = Message { to, from: 2, term, index, commit, reject, ..Default::default() };
        m.set_msg_type(MessageType::MsgAppendResponse);
        m
    }

    fn indexes(m: &Message) -> Vec<u64> {
        m.entries.iter().map(|e| e.index).collect()
    }

    #[test]
    fn appends_to_a_peer_are_joined_with_the_newest_commit() {
        let msgs = vec![
            append(2, 3, (10, 3), &[(11, 3)], 9),
            append(3, 3, (10, 3), &[(11, 3)], 9),
            append(2, 3, (11, 3), &[(12, 3), (13, 3)], 9),
            // The commit broadcast: empty, after the last entry sent.
            append(2, 3, (13, 3), &[], 11),
            append(3, 3, (11, 3), &[(12, 3), (13, 3)], 9),
        ];
        let out = coalesce(msgs);
        assert_eq!(out.len(), 2, "one append per peer, got {out:?}");
        assert_eq!(
            (out[0].to, out[0].index, out[0].log_term),
            (2, 10, 3),
            "the first append's position is kept"
        );
        assert_eq!(indexes(&out[0]), vec![11, 12, 13], "every entry to peer 2, in order");
        assert_eq!(out[0].commit, 11, "the newest commit index goes with them");
        assert_eq!((out[1].to, indexes(&out[1]), out[1].commit), (3, vec![11, 12, 13], 9));
    }

    #[test]
    fn appends_that_do_not_continue_each_other_stay_apart() {
        // A gap, a step back (a resend after a rejection), another term, a mismatched log term.
        let cases = [
            append(2, 3, (12, 3), &[(13, 3)], 9),
            append(2, 3, (10, 3), &[(11, 3)], 9),
            append(2, 4, (11, 3), &[(12, 4)], 9),
            append(2, 3, (11, 2), &[(12, 3)], 9),
        ];
        for later in cases {
            let out = coalesce(vec![append(2, 3, (10, 3), &[(11, 3)], 9), later.clone()]);
            assert_eq!(out.len(), 2, "{later:?} must not join an append ending at 11 (term 3)");
            assert_eq!(out[1], later, "it leaves as raft-rs made it");
        }
    }

    #[test]
    fn an_empty_append_continues_from_its_own_position() {
        let out = coalesce(vec![append(2, 3, (10, 3), &[], 9), append(2, 3, (10, 3), &[(11, 3)], 10)]);
        assert_eq!(out.len(), 1, "an empty append ends where it starts: {out:?}");
        assert_eq!((indexes(&out[0]), out[0].commit), (vec![11], 10));
    }

    #[test]
    fn a_joined_append_stays_within_the_message_bound() {
        let big = (MAX_MESSAGE_BYTES as usize) / 2;
        let mut a = append(2, 3, (10, 3), &[], 9);
        a.set_entries(vec![entry(11, 3, big)].into());
        let mut b = append(2, 3, (11, 3), &[], 9);
        b.set_entries(vec![entry(12, 3, big)].into());
        let c = append(2, 3, (12, 3), &[(13, 3)], 9);
        let out = coalesce(vec![a, b, c]);
        assert_eq!(out.len(), 2, "two halves of the bound do not fit in one message, with their framing");
        assert_eq!(
            (indexes(&out[0]), indexes(&out[1])),
            (vec![11], vec![12, 13]),
            "the next one starts a new message"
        );
    }

    #[test]
    fn another_message_to_the_peer_ends_the_join() {
        let mut beat = Message { to: 2, from: 1, term: 3, commit: 9, ..Default::default() };
        beat.set_msg_type(MessageType::MsgHeartbeat);
        let out = coalesce(vec![
            append(2, 3, (10, 3), &[(11, 3)], 9),
            beat.clone(),
            append(2, 3, (11, 3), &[(12, 3)], 9),
        ]);
        assert_eq!(out.len(), 3, "order per peer is kept around other messages: {out:?}");
        assert_eq!(out[1], beat);
    }

    #[test]
    fn a_later_answer_replaces_the_earlier_one_but_rejections_stay() {
        let out = coalesce(vec![answer(1, 3, 11, 9, false), answer(1, 3, 13, 10, false)]);
        assert_eq!(out, vec![answer(1, 3, 13, 10, false)], "the later answer says all the earlier did");

        let rejected = coalesce(vec![answer(1, 3, 11, 9, true), answer(1, 3, 13, 10, false)]);
        assert_eq!(rejected.len(), 2, "a rejection always leaves: {rejected:?}");
        let then_rejected = coalesce(vec![answer(1, 3, 11, 9, false), answer(1, 3, 8, 9, true)]);
        assert_eq!(then_rejected.len(), 2, "a rejection replaces nothing: {then_rejected:?}");
        let lower = coalesce(vec![answer(1, 3, 13, 9, false), answer(1, 3, 11, 9, false)]);
        assert_eq!(lower.len(), 2, "an answer for a lower index does not replace a higher one");
        let newer_term = coalesce(vec![answer(1, 3, 11, 9, false), answer(1, 4, 13, 10, false)]);
        assert_eq!(newer_term.len(), 2, "answers of different terms both leave");
    }
}
