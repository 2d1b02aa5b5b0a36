//! The names Latch answers (DESIGN.md §4), read from a query name: pure, no state.
//!
//! Under the domain `D` (`latch.` by default), the label before `D` chooses the kind:
//! - `<service>.service.D` and `<tag>.<service>.service.D`: a service's healthy instances;
//! - `_<service>._tcp.service.D` (RFC 2782) and `_<service>._<tag>.service.D`: their SRV
//!   records;
//! - `<id>.<service>.instance.D`: one instance (the target of its SRV record);
//! - `<member id>.node.D`: a member of the cluster;
//! - `leader.<election>.election.D`: an election's leader (the election's name may hold dots);
//! - any other name under `D`: a static record written under the KV key `/dns/<name>` (the
//!   name relative to `D`, lowercase).
//!
//! Names compare without regard to case (RFC 4343): the labels here are lowercase.

/// What a query name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// The domain itself.
    Apex,
    Service {
        service: String,
        tag: Option<String>,
    },
    Srv {
        service: String,
        tag: Option<String>,
    },
    Instance {
        service: String,
        id: String,
    },
    Node {
        id: u64,
    },
    Leader {
        election: String,
    },
    /// A static record's name relative to the domain (`www`, `db.internal`).
    Static {
        name: String,
    },
    /// A name of the zone's structure that has names below it but no records of its own
    /// (`service.D`, `_tcp.service.D`, `node.D`): NODATA, never NXDOMAIN (RFC 8020).
    Structure,
    /// `<service>.instance.D`: exists (without records) while the service has an instance to
    /// answer below it.
    InstancesOf {
        service: String,
    },
    /// `<election>.election.D`: exists (without records) while the election has a leader.
    ElectionOf {
        election: String,
    },
    /// A name under one of the reserved kinds that fits none of their forms.
    Nothing,
}

/// The labels reserved for the generated names; no static record lives under them.
pub const RESERVED: [&str; 4] = ["service", "instance", "node", "election"];

/// The KV prefix of static records.
pub const STATIC_PREFIX: &str = "/dns/";

/// What `labels` (the query name's labels, lowercase, root last omitted) ask for under the
/// domain `domain` (its labels, lowercase); `None` when the name is outside the domain.
pub fn parse(labels: &[String], domain: &[String]) -> Option<Question> {
    if labels.len() < domain.len() || labels[labels.len() - domain.len()..] != *domain {
        return None;
    }
    let rel = &labels[..labels.len() - domain.len()];
    let Some((kind, rest)) = rel.split_last() else { return Some(Question::Apex) };
    let q = match (kind.as_str(), rest) {
        (kind, []) if RESERVED.contains(&kind) => Question::Structure,
        ("service", [under]) if under.starts_with('_') => Question::Structure,
        ("instance", [service]) => Question::InstancesOf { service: service.clone() },
        ("service", [service]) if !service.starts_with('_') => {
            Question::Service { service: service.clone(), tag: None }
        }
        ("service", [first, second]) => match (first.strip_prefix('_'), second.strip_prefix('_')) {
            // A bare `_` names no service (nor tag): never every instance of every service.
            (Some(""), _) | (_, Some("")) => Question::Nothing,
            (Some(service), Some(proto)) => Question::Srv {
                service: service.to_string(),
                tag: (proto != "tcp").then(|| proto.to_string()),
            },
            (None, None) => Question::Service { service: second.clone(), tag: Some(first.clone()) },
            _ => Question::Nothing,
        },
        ("instance", [id, service]) => Question::Instance { service: service.clone(), id: id.clone() },
        ("node", [id]) => match id.parse::<u64>() {
            Ok(id) if id > 0 => Question::Node { id },
            _ => Question::Nothing,
        },
        ("election", [leader, election @ ..]) if leader == "leader" && !election.is_empty() => {
            Question::Leader { election: election.join(".") }
        }
        ("election", election) => Question::ElectionOf { election: election.join(".") },
        (kind, _) if RESERVED.contains(&kind) => Question::Nothing,
        _ => Question::Static { name: rel.join(".") },
    };
    Some(q)
}

/// A name's labels as lowercase strings; `None` if one is not ASCII (no name Latch answers
/// has such a label).
pub fn labels_of(name: &hickory_server::proto::rr::Name) -> Option<Vec<String>> {
    name.iter()
        .map(|l| std::str::from_utf8(l).ok().filter(|s| s.is_ascii()).map(|s| s.to_ascii_lowercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(name: &str) -> Option<Question> {
        let labels: Vec<String> =
            name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()).map(str::to_string).collect();
        parse(&labels, &["latch".to_string()])
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn every_name_of_design_4_reads_as_its_question() {
        assert_eq!(ask("latch."), Some(Question::Apex));
        assert_eq!(ask("web.service.latch."), Some(Question::Service { service: s("web"), tag: None }));
        assert_eq!(
            ask("v1.web.service.latch."),
            Some(Question::Service { service: s("web"), tag: Some(s("v1")) })
        );
        assert_eq!(ask("_web._tcp.service.latch."), Some(Question::Srv { service: s("web"), tag: None }));
        for bare in ["_._tcp.service.latch.", "_._v1.service.latch.", "_web._.service.latch."] {
            assert_eq!(ask(bare), Some(Question::Nothing), "{bare} names no service or tag");
        }
        assert_eq!(
            ask("_web._v1.service.latch."),
            Some(Question::Srv { service: s("web"), tag: Some(s("v1")) })
        );
        assert_eq!(
            ask("w1.web.instance.latch."),
            Some(Question::Instance { service: s("web"), id: s("w1") })
        );
        assert_eq!(ask("2.node.latch."), Some(Question::Node { id: 2 }));
        assert_eq!(ask("leader.jobs.election.latch."), Some(Question::Leader { election: s("jobs") }));
        assert_eq!(ask("leader.a.b.election.latch."), Some(Question::Leader { election: s("a.b") }));
        assert_eq!(ask("www.latch."), Some(Question::Static { name: s("www") }));
        assert_eq!(ask("db.internal.latch."), Some(Question::Static { name: s("db.internal") }));
    }

    #[test]
    fn names_outside_the_domain_or_misshapen_under_a_reserved_label_are_told_apart() {
        assert_eq!(ask("example.com."), None, "outside the domain");
        assert_eq!(ask("latch.example.com."), None, "the domain must be the suffix");
        assert_eq!(ask("a.b.c.service.latch."), Some(Question::Nothing));
        assert_eq!(ask("_web.v1.service.latch."), Some(Question::Nothing));
        assert_eq!(ask("0.node.latch."), Some(Question::Nothing));
        assert_eq!(ask("x.node.latch."), Some(Question::Nothing));
        assert_eq!(
            ask("follower.jobs.election.latch."),
            Some(Question::ElectionOf { election: s("follower.jobs") })
        );
    }

    #[test]
    fn names_with_names_below_them_are_told_from_names_that_do_not_exist() {
        for name in [
            "service.latch.",
            "_tcp.service.latch.",
            "_v1.service.latch.",
            "node.latch.",
            "instance.latch.",
            "election.latch.",
        ] {
            assert_eq!(ask(name), Some(Question::Structure), "{name}");
        }
        assert_eq!(ask("web.instance.latch."), Some(Question::InstancesOf { service: s("web") }));
        assert_eq!(ask("jobs.election.latch."), Some(Question::ElectionOf { election: s("jobs") }));
    }
}
