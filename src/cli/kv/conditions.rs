//! The conditions of a write (`latch kv put`, `latch kv del`): `--if-sequencer`, `--if-version`,
//! `--if-mod-rev`. Given any, the write is one transaction — its compares; the write if they all
//! hold; else a read of KEY, to say which did not — so that the check and the write happen at
//! one revision: a write fenced by a lock is never made once the lock was lost, where a check
//! (`latch lock check`) and then a write could be.

use clap::Args;
use latch_client::proto::response_op::Response;
use latch_client::{Client, Compare, CompareResult, KeyValue, Op, ResponseHeader, Txn};

use crate::cli::UsageError;

/// `--if-…`: every one given must hold for the write to be made.
#[derive(Debug, Clone, Default, Args)]
pub struct Conditions {
    /// Write only while SEQ — a lock holder's $LATCH_LOCK_SEQUENCER — still holds its lock: a
    /// write fenced by the lock, refused once its holder lost it.
    #[arg(long, value_name = "SEQ")]
    pub if_sequencer: Option<String>,
    /// Write only if KEY's version (its writes since it was created: 1 once created) is N; 0:
    /// only if KEY does not exist (compare-and-swap).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub if_version: Option<i64>,
    /// Write only if KEY was last written at revision N; 0: only if KEY does not exist (as
    /// Consul's `kv put -cas -modify-index`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub if_mod_rev: Option<i64>,
}

/// What a conditional write did.
#[derive(Debug)]
pub enum Outcome {
    /// Every condition held: the write's own answer.
    Written(Response),
    /// A condition did not hold, and nothing was written: why (a line each), and KEY as the
    /// transaction read it (`None`: it does not exist).
    NotWritten { why: Vec<String>, kv: Option<KeyValue>, header: Option<ResponseHeader> },
}

impl Conditions {
    pub fn given(&self) -> bool {
        self.if_sequencer.is_some() || self.if_version.is_some() || self.if_mod_rev.is_some()
    }

    /// Refuses conditions that cannot apply to the write: KEY's version or revision when KEY
    /// is a prefix (`--prefix`) or a new key's (`--sequential`), a sequencer not in its string
    /// form.
    pub fn check(&self, many: Option<&str>) -> Result<(), UsageError> {
        if let (Some(flag), Some(keys)) = (self.key_condition(), many) {
            return Err(UsageError(format!(
                "{flag} is a condition on KEY itself, and {keys} writes other keys than KEY: give it \
                 without {keys}, or fence the write with --if-sequencer"
            )));
        }
        if let Some(seq) = &self.if_sequencer {
            latch_client::sequencer::parse(seq)
                .map_err(|e| UsageError(format!("--if-sequencer {seq:?}: {e}")))?;
        }
        Ok(())
    }

    /// The flag of a condition on KEY's own version or revision, if one is given.
    fn key_condition(&self) -> Option<&'static str> {
        match (self.if_version, self.if_mod_rev) {
            (Some(_), _) => Some("--if-version"),
            (_, Some(_)) => Some("--if-mod-rev"),
            _ => None,
        }
    }

    fn compares(&self, key: &[u8]) -> Vec<Compare> {
        let mut compares = Vec::new();
        if let Some(seq) = &self.if_sequencer {
            compares.push(Compare::sequencer(seq.clone()));
        }
        if let Some(version) = self.if_version {
            compares.push(Compare::version(key, CompareResult::Equal, version));
        }
        if let Some(revision) = self.if_mod_rev {
            compares.push(Compare::mod_revision(key, CompareResult::Equal, revision));
        }
        compares
    }

    /// Makes `write` (of KEY `key`, or of keys from it) if every condition holds, in one
    /// transaction.
    pub async fn write(&self, client: &Client, key: &[u8], write: Op) -> anyhow::Result<Outcome> {
        let txn = Txn::new().when(self.compares(key)).and_then([write]).or_else([Op::get(key)]);
        let answer = client.txn(txn).await?;
        let first = answer.responses.into_iter().next().and_then(|r| r.response);
        if answer.succeeded {
            let written =
                first.ok_or_else(|| anyhow::anyhow!("the member answered the write with nothing"))?;
            return Ok(Outcome::Written(written));
        }
        let kv = match first {
            Some(Response::Range(read)) => read.kvs.into_iter().next(),
            _ => None,
        };
        let mut why = self.failed_on(key, kv.as_ref());
        if let Some(seq) = &self.if_sequencer {
            // A sequencer that no longer holds never holds again; the member says why.
            match client.check_sequencer(seq).await {
                Ok(check) if !check.valid => why.push(format!("--if-sequencer: {}", check.reason)),
                // KEY's own conditions held, so the sequencer's did not.
                _ if why.is_empty() => {
                    why.push("--if-sequencer: it no longer held its lock when the write was asked".into())
                }
                _ => {}
            }
        }
        Ok(Outcome::NotWritten { why, kv, header: answer.header })
    }

    /// Which of KEY's own conditions `kv` (KEY as read; `None`: it does not exist) fails.
    fn failed_on(&self, key: &[u8], kv: Option<&KeyValue>) -> Vec<String> {
        let key = String::from_utf8_lossy(key);
        let (version, mod_rev) = kv.map_or((0, 0), |kv| (kv.version, kv.mod_revision));
        let mut why = Vec::new();
        let is = |what: &str, n: i64| match kv {
            None => format!("{key:?} does not exist"),
            Some(_) => format!("{key:?}'s {what} is {n}"),
        };
        if let Some(want) = self.if_version.filter(|want| *want != version) {
            why.push(format!("--if-version {want}: {}", is("version", version)));
        }
        if let Some(want) = self.if_mod_rev.filter(|want| *want != mod_rev) {
            why.push(format!("--if-mod-rev {want}: {}", is("last write's revision", mod_rev)));
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: i64, mod_revision: i64) -> KeyValue {
        KeyValue { key: b"k".to_vec(), version, mod_revision, ..Default::default() }
    }

    #[test]
    fn a_failed_condition_on_the_key_is_named_with_what_the_key_is() {
        let c = Conditions { if_version: Some(2), if_mod_rev: Some(9), ..Default::default() };
        assert_eq!(
            c.failed_on(b"k", Some(&at(3, 9))),
            ["--if-version 2: \"k\"'s version is 3"],
            "the revision held, the version did not"
        );
        assert_eq!(
            c.failed_on(b"k", None),
            ["--if-version 2: \"k\" does not exist", "--if-mod-rev 9: \"k\" does not exist"]
        );
        let absent = Conditions { if_version: Some(0), ..Default::default() };
        assert_eq!(absent.failed_on(b"k", Some(&at(1, 4))), ["--if-version 0: \"k\"'s version is 1"]);
        assert!(absent.failed_on(b"k", None).is_empty(), "absent, as asked: the sequencer failed, if any");
    }

    #[test]
    fn a_condition_on_the_key_is_refused_for_a_write_of_other_keys() {
        let c = Conditions { if_mod_rev: Some(4), ..Default::default() };
        let refused = c.check(Some("--prefix")).expect_err("a prefix").0;
        assert!(refused.starts_with("--if-mod-rev is a condition on KEY itself"), "{refused}");
        assert!(c.check(None).is_ok());
        let fenced = Conditions { if_sequencer: Some("not a sequencer".into()), ..Default::default() };
        let refused = fenced.check(Some("--prefix")).expect_err("a bad sequencer").0;
        assert!(refused.starts_with("--if-sequencer \"not a sequencer\": "), "{refused}");
    }
}
