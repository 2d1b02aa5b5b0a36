//! The string form of a sequencer (`latch.v1.Sequencer.token`): what a lock holder hands to the
//! systems it writes to, so they can check it (`Lock.CheckSequencer`) or compare generations.
//!
//! `latch1:<cluster id, 16 hex digits>:<L|E><X|S>:<generation>:<session>:<name>` — lock or
//! election, exclusive or shared; `%` and `:` in the session are written `%25` and `%3A`; the
//! name comes last and is taken as is, so it may hold any character.

use crate::v1::{LockMode, Sequencer};

const PREFIX: &str = "latch1";

/// Why a string is not a sequencer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a Latch sequencer: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// The string form of `seq` (its `token` field is ignored).
pub fn format(seq: &Sequencer) -> String {
    let space = if seq.election { 'E' } else { 'L' };
    let mode = if seq.mode == LockMode::Shared as i32 { 'S' } else { 'X' };
    let session = seq.session_id.replace('%', "%25").replace(':', "%3A");
    format!("{PREFIX}:{:016x}:{space}{mode}:{}:{session}:{}", seq.cluster_id, seq.generation, seq.name)
}

/// Parses a string form; the sequencer returned carries it as its `token`.
pub fn parse(token: &str) -> Result<Sequencer, ParseError> {
    let bad = |why: &str| ParseError(format!("{why} (expected latch1:CLUSTER:KIND:GENERATION:SESSION:NAME)"));
    let mut parts = token.splitn(6, ':');
    let mut next = |what: &str| parts.next().ok_or_else(|| bad(&format!("no {what}")));
    if next("prefix")? != PREFIX {
        return Err(bad("it does not begin with latch1:"));
    }
    let cluster = next("cluster id")?;
    let cluster_id = u64::from_str_radix(cluster, 16)
        .ok()
        .filter(|_| cluster.len() == 16)
        .ok_or_else(|| bad("the cluster id is not 16 hex digits"))?;
    let (election, mode) = match next("kind")? {
        "LX" => (false, LockMode::Exclusive),
        "LS" => (false, LockMode::Shared),
        "EX" => (true, LockMode::Exclusive),
        "ES" => (true, LockMode::Shared),
        _ => return Err(bad("the kind is not one of LX, LS, EX, ES")),
    };
    let generation = next("generation")?
        .parse::<u64>()
        .ok()
        .filter(|g| *g > 0)
        .ok_or_else(|| bad("the generation is not a positive integer"))?;
    let session = next("session")?;
    if session.is_empty() {
        return Err(bad("the session is empty"));
    }
    let session_id = session.replace("%3A", ":").replace("%25", "%");
    let name = next("name")?;
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    Ok(Sequencer {
        name: name.to_string(),
        mode: mode as i32,
        generation,
        session_id,
        cluster_id,
        election,
        token: token.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(name: &str, session: &str) -> Sequencer {
        Sequencer {
            name: name.into(),
            mode: LockMode::Shared as i32,
            generation: 42,
            session_id: session.into(),
            cluster_id: 0xabc,
            election: true,
            token: String::new(),
        }
    }

    #[test]
    fn a_sequencer_survives_its_string_form_whatever_its_name_and_session_hold() {
        for (name, session) in [("jobs/nightly", "0193-ab"), ("a:b:c", "x:y%z"), ("ü/名前", "s")] {
            let s = seq(name, session);
            let token = format(&s);
            let back = parse(&token).expect("a formatted sequencer parses");
            assert_eq!(back, Sequencer { token: token.clone(), ..s }, "round trip of {token}");
        }
        assert_eq!(format(&seq("n", "s")), "latch1:0000000000000abc:ES:42:s:n");
    }

    #[test]
    fn strings_that_are_not_sequencers_are_refused_saying_why() {
        for (token, says) in [
            ("", "latch1"),
            ("latch2:0000000000000abc:LX:1:s:n", "latch1"),
            ("latch1:abc:LX:1:s:n", "16 hex"),
            ("latch1:0000000000000abc:QX:1:s:n", "kind"),
            ("latch1:0000000000000abc:LX:0:s:n", "generation"),
            ("latch1:0000000000000abc:LX:x:s:n", "generation"),
            ("latch1:0000000000000abc:LX:1::n", "session"),
            ("latch1:0000000000000abc:LX:1:s", "name"),
            ("latch1:0000000000000abc:LX:1:s:", "name"),
        ] {
            let err = parse(token).expect_err(token);
            assert!(err.to_string().contains(says), "{token:?}: expected {says:?} in {err}");
        }
    }
}
