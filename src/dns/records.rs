//! Static records: what a KV key under `/dns/` holds, answered as-is by every member's DNS port
//! (docs/dns.md). The key is `/dns/` and the name relative to the domain, lowercase (`/dns/www`
//! is `www.latch.`); the value is JSON, one record or an array of them:
//!
//! ```json
//! [{"type": "A", "address": "10.0.0.7", "ttl": 60},
//!  {"type": "AAAA", "address": "fd00::7"},
//!  {"type": "TXT", "text": "v=spf1 -all"},
//!  {"type": "MX", "preference": 10, "exchange": "mail.example.com."},
//!  {"type": "SRV", "priority": 1, "weight": 5, "port": 443, "target": "web.example.com."}]
//! {"type": "CNAME", "target": "web.service.latch."}
//! ```
//!
//! `ttl` (seconds) is optional: the member's `--dns-ttl` by default. A CNAME stands alone
//! (RFC 1034 §3.6.2). A value that is not such JSON makes its name answer SERVFAIL, and
//! `latch dns records` names the problem.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record};
use serde::Deserialize;

/// One static record as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type")]
pub enum StaticRecord {
    A { address: Ipv4Addr, ttl: Option<u32> },
    AAAA { address: Ipv6Addr, ttl: Option<u32> },
    CNAME { target: String, ttl: Option<u32> },
    TXT { text: String, ttl: Option<u32> },
    SRV { priority: u16, weight: u16, port: u16, target: String, ttl: Option<u32> },
    MX { preference: u16, exchange: String, ttl: Option<u32> },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(StaticRecord),
    Many(Vec<StaticRecord>),
}

/// Most bytes of a TXT record's text (split into strings of 255 on the wire).
pub const MAX_TXT_BYTES: usize = 4096;

/// Reads a `/dns/` value as the records of `name`; the error says what is wrong with it.
pub fn parse(name: &Name, value: &[u8], default_ttl: u32) -> Result<Vec<Record>, String> {
    let written = match serde_json::from_slice::<OneOrMany>(value) {
        Ok(OneOrMany::One(r)) => vec![r],
        Ok(OneOrMany::Many(rs)) => rs,
        Err(e) => {
            // The untagged error says nothing useful: try the forms one by one for the reason.
            let why = serde_json::from_slice::<StaticRecord>(value)
                .err()
                .or_else(|| serde_json::from_slice::<Vec<StaticRecord>>(value).err())
                .map_or(e.to_string(), |e| e.to_string());
            return Err(format!(
                "not a record or an array of records (type A, AAAA, CNAME, TXT, SRV or MX): {why}"
            ));
        }
    };
    if written.is_empty() {
        return Err("an empty array: no records".into());
    }
    let cnames = written.iter().filter(|r| matches!(r, StaticRecord::CNAME { .. })).count();
    if cnames > 0 && written.len() > 1 {
        return Err("a CNAME must be the name's only record".into());
    }
    let target = |field: &str, t: &str| -> Result<Name, String> {
        let mut n = Name::from_ascii(t).map_err(|e| format!("{field} {t:?} is not a domain name: {e}"))?;
        n.set_fqdn(true);
        Ok(n)
    };
    let mut out = Vec::with_capacity(written.len());
    for r in written {
        let (ttl, rdata) = match r {
            StaticRecord::A { address, ttl } => (ttl, RData::A(A(address))),
            StaticRecord::AAAA { address, ttl } => (ttl, RData::AAAA(AAAA(address))),
            StaticRecord::CNAME { target: t, ttl } => (ttl, RData::CNAME(CNAME(target("target", &t)?))),
            StaticRecord::TXT { text, ttl } => {
                if text.len() > MAX_TXT_BYTES {
                    return Err(format!("a TXT text of {} bytes, over {MAX_TXT_BYTES}", text.len()));
                }
                (ttl, RData::TXT(TXT::new(txt_strings(text.as_bytes()))))
            }
            StaticRecord::SRV { priority, weight, port, target: t, ttl } => {
                (ttl, RData::SRV(SRV::new(priority, weight, port, target("target", &t)?)))
            }
            StaticRecord::MX { preference, exchange, ttl } => {
                (ttl, RData::MX(MX::new(preference, target("exchange", &exchange)?)))
            }
        };
        out.push(Record::from_rdata(name.clone(), ttl.unwrap_or(default_ttl), rdata));
    }
    Ok(out)
}

/// Bytes as TXT character-strings of at most 255 bytes each (split at char boundaries).
pub fn txt_strings(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while !rest.is_empty() {
        let mut at = rest.len().min(255);
        while !rest.is_char_boundary(at) {
            at -= 1;
        }
        out.push(rest[..at].to_string());
        rest = &rest[at..];
    }
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::rr::RecordType;

    fn name() -> Name {
        Name::from_ascii("www.latch.").expect("a name")
    }

    #[test]
    fn every_documented_record_type_reads_with_its_ttl_or_the_default() {
        let value = br#"[{"type":"A","address":"10.0.0.7","ttl":60},{"type":"AAAA","address":"fd00::7"},
            {"type":"TXT","text":"hello"},{"type":"MX","preference":10,"exchange":"mail.example.com"},
            {"type":"SRV","priority":1,"weight":5,"port":443,"target":"web.example.com."}]"#;
        let rs = parse(&name(), value, 5).expect("a valid value");
        let types: Vec<_> = rs.iter().map(|r| (r.record_type(), r.ttl)).collect();
        assert_eq!(
            types,
            [
                (RecordType::A, 60),
                (RecordType::AAAA, 5),
                (RecordType::TXT, 5),
                (RecordType::MX, 5),
                (RecordType::SRV, 5)
            ]
        );
        let one = parse(&name(), br#"{"type":"CNAME","target":"web.service.latch"}"#, 5).expect("one record");
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn a_bad_value_is_refused_saying_why() {
        for (value, says) in [
            (&br#"not json"#[..], "not a record"),
            (br#"{"type":"A","address":"300.1.1.1"}"#, "not a record"),
            (br#"{"type":"PTR","target":"x."}"#, "not a record"),
            (br#"[]"#, "empty"),
            (br#"[{"type":"CNAME","target":"a."},{"type":"A","address":"1.1.1.1"}]"#, "only record"),
            (br#"{"type":"MX","preference":1,"exchange":"bad name!"}"#, "exchange"),
        ] {
            let err = parse(&name(), value, 5).expect_err("a bad value is refused");
            assert!(err.contains(says), "{} should say {says:?}: {err}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn long_txt_is_split_into_255_byte_strings() {
        let s = txt_strings(&[b'x'; 600]);
        assert_eq!(s.iter().map(String::len).collect::<Vec<_>>(), [255, 255, 90]);
    }
}
