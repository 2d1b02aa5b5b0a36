//! `latch cluster status`: the leader, the term, and every member as the answering member
//! sees it; `latch cluster replace ID`: a member that lost its data comes back as a learner;
//! `latch cluster add ID PEER_ADDR`: a new member joins; `latch cluster remove ID`: a member
//! leaves the cluster for good.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use latch_client::{Member, StatusResponse};
use latch_proto::format_cluster_id;
use serde_json::json;

use super::{print_bytes, print_json, ClientArgs, Output};

/// `latch cluster`. Where and how to talk to the cluster is the root's [`ClientArgs`].
#[derive(Debug, Args)]
pub struct ClusterCommand {
    /// The operation.
    #[command(subcommand)]
    pub op: ClusterOp,
}

/// The cluster operations.
#[derive(Debug, Subcommand)]
pub enum ClusterOp {
    /// Leader, term, and each member's id, addresses, role, applied index, build and cluster version.
    Status,
    /// Replace a member that lost its data dir: the leader makes it a learner, so that it may
    /// start again on an empty data dir under its id; it catches up from a snapshot and votes
    /// again once it has. Run it against the running members, with the member itself stopped
    /// (a member the leader heard from lately is refused as running).
    Replace {
        /// The member's id (a voter's; not the leader).
        member: u64,
    },
    /// Add a new member: the leader makes it a learner at PEER_ADDR, and prints how to start
    /// it (with the cluster's --initial-cluster, its id and --peer-addr, on an empty data dir;
    /// and --peers, the members now, once they are not the first ones).
    /// It catches up, from a snapshot once the log was compacted, and votes once it has. One
    /// member at a time: not while another learner is still catching up.
    Add {
        /// The new member's id: one the cluster never had (a removed member's id is not used
        /// again).
        member: u64,
        /// Where it listens for its peers, HOST:PORT, as they dial it.
        peer_addr: String,
    },
    /// Remove a member from the cluster for good, running or not: its votes and
    /// acknowledgements count no longer, its peers drop its messages, and it stops (leaving a
    /// REMOVED mark in its data dir). The voters left running must be a quorum of those left.
    /// The leader hands leadership over first when it is the one removed. Removing a learner
    /// gives up its replacement.
    Remove {
        /// The member's id (a first member's or an added one's).
        member: u64,
    },
}

/// Runs `latch cluster …`.
pub async fn run(command: ClusterCommand, client_args: &ClientArgs) -> anyhow::Result<ExitCode> {
    match command.op {
        ClusterOp::Status => {
            let client = client_args.connect().await?;
            let status = client.cluster_status().await?;
            match client_args.output {
                Output::Json => print_json(&status_json(&status))?,
                Output::Text => print_bytes(status_text(&status).as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterOp::Replace { member } => {
            let client = client_args.connect().await?;
            let index = client.replace_member(member).await?.index;
            match client_args.output {
                Output::Json => print_json(&json!({ "member": member, "index": index }))?,
                Output::Text => print_bytes(replaced_text(member, index).as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterOp::Add { member, peer_addr } => {
            let client = client_args.connect().await?;
            let added = client.add_member(member, &peer_addr).await?;
            match client_args.output {
                Output::Json => print_json(&json!({
                    "member": member,
                    "peer_addr": peer_addr,
                    "index": added.index,
                    "initial_cluster": added.initial_cluster,
                    "initial_cluster_token": added.initial_cluster_token,
                    "peers": added.peers,
                }))?,
                Output::Text => print_bytes(added_text(member, &peer_addr, &added).as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterOp::Remove { member } => {
            let client = client_args.connect().await?;
            let index = client.remove_member(member).await?.index;
            match client_args.output {
                Output::Json => print_json(&json!({ "member": member, "index": index }))?,
                Output::Text => print_bytes(removed_text(member, index).as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn added_text(member: u64, peer_addr: &str, added: &latch_client::AddMemberResponse) -> String {
    let what = match added.index {
        0 => format!("member {member} was added already, at {peer_addr}"),
        index => format!("member {member} is added at {peer_addr} (raft log index {index})"),
    };
    let token = match added.initial_cluster_token.as_str() {
        "" => String::new(),
        token => format!(" --initial-cluster-token {token}"),
    };
    let peers = match added.peers.as_str() {
        "" => String::new(),
        peers => format!(" --peers {peers}"),
    };
    format!(
        "{what}: start it on an empty data dir with\n  latch server --id {member} --peer-addr {peer_addr} \
         --initial-cluster {}{token}{peers} --data-dir DIR\nand, on a machine where another member \
         holds the defaults, --client-addr, --http-addr and --dns-addr of its own. It catches up and \
         votes once it has (`latch cluster status` shows it a follower then).\n",
        added.initial_cluster
    )
}

fn removed_text(member: u64, index: u64) -> String {
    match index {
        0 => format!("member {member} was removed already\n"),
        index => format!(
            "member {member} is removed (raft log index {index}): it stops once it hears, and does not \
             start again on its data dir\n"
        ),
    }
}

fn replaced_text(member: u64, index: u64) -> String {
    let what = match index {
        0 => format!("member {member} was a learner already"),
        index => format!("member {member} is a learner now (raft log index {index})"),
    };
    format!(
        "{what}: start it on an empty data dir; it catches up from a snapshot and votes again once \
         it has (`latch cluster status` shows it a follower then)\n"
    )
}

/// `{"cluster_id", "leader", "term", "members": [{"id", "peer_addr", "client_addr", "role",
/// "applied_index", "commit_index", "term", "error", "snapshots_installed", "command_version",
/// "cluster_version"}]}`: the newest command version each member's build applies, and the
/// version its state says the cluster runs (docs/architecture.md, "Upgrades");
/// `leader` is 0 when no leader is known; `cluster_id` is the 16 hex digits `--cluster-id` takes.
fn status_json(status: &StatusResponse) -> serde_json::Value {
    let members: Vec<_> = status
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "peer_addr": m.peer_addr,
                "client_addr": m.client_addr,
                "role": m.role,
                "applied_index": m.applied_index,
                "commit_index": m.commit_index,
                "term": m.term,
                "error": m.error,
                "snapshots_installed": m.snapshots_installed,
                "command_version": m.command_version,
                "cluster_version": m.cluster_version,
                "dns_addr": m.dns_addr,
            })
        })
        .collect();
    json!({
        "cluster_id": cluster_id(status),
        "leader": status.leader,
        "term": status.term,
        "members": members,
    })
}

/// The answering member's cluster, as `--cluster-id` takes it.
fn cluster_id(status: &StatusResponse) -> String {
    format_cluster_id(status.header.as_ref().map_or(0, |h| h.cluster_id))
}

/// A header line, then a table with one row per member, then why any member was unreachable.
fn status_text(status: &StatusResponse) -> String {
    let leader = match status.leader {
        0 => "none".to_string(),
        id => id.to_string(),
    };
    let mut text = format!("leader: {leader}  term: {}  cluster: {}\n", status.term, cluster_id(status));
    let header = ["ID", "PEER ADDR", "CLIENT ADDR", "ROLE", "APPLIED", "COMMIT", "TERM", "VERSION"];
    let rows: Vec<[String; 8]> = status.members.iter().map(member_row).collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let header = header.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> =
            row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    for m in status.members.iter().filter(|m| !m.error.is_empty()) {
        text.push_str(&format!("member {}: {}\n", m.id, m.error));
    }
    text
}

/// VERSION is the member's build and, after a slash, the cluster version its state holds ("-"
/// from a build before it).
fn member_row(m: &Member) -> [String; 8] {
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    let unreachable = m.role == "unreachable";
    let number = |n: u64| if unreachable { "-".to_string() } else { n.to_string() };
    [
        m.id.to_string(),
        or_dash(&m.peer_addr),
        or_dash(&m.client_addr),
        or_dash(&m.role),
        number(m.applied_index),
        number(m.commit_index),
        number(m.term),
        match (unreachable, m.command_version) {
            (true, _) | (false, 0) => "-".to_string(),
            // A build before the cluster version does not say it.
            (false, build) if m.cluster_version == 0 => format!("{build}/-"),
            (false, build) => format!("{build}/{}", m.cluster_version),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_members() -> StatusResponse {
        let member = |id: u64, role: &str| Member {
            id,
            peer_addr: format!("127.0.0.1:7{id}80"),
            client_addr: format!("127.0.0.1:7{id}79"),
            role: role.into(),
            applied_index: 42,
            commit_index: 42,
            term: 3,
            command_version: 12,
            cluster_version: 11,
            ..Default::default()
        };
        let mut down = member(3, "unreachable");
        down.client_addr.clear();
        down.error = "connection refused".into();
        StatusResponse {
            header: Some(latch_client::ResponseHeader { cluster_id: 0xab, ..Default::default() }),
            leader: 1,
            term: 3,
            members: vec![member(1, "leader"), member(2, "follower"), down],
        }
    }

    #[test]
    fn json_status_has_leader_term_and_members() {
        let v = status_json(&three_members());
        assert_eq!(v["cluster_id"], "00000000000000ab", "the cluster as --cluster-id takes it");
        assert_eq!(v["leader"], 1);
        assert_eq!(v["term"], 3);
        let m = &v["members"][0];
        assert_eq!(
            (&m["id"], &m["peer_addr"], &m["client_addr"], &m["role"], &m["applied_index"]),
            (&json!(1), &json!("127.0.0.1:7180"), &json!("127.0.0.1:7179"), &json!("leader"), &json!(42))
        );
        assert_eq!(v["members"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn text_status_is_a_table_with_a_row_per_member() {
        let text = status_text(&three_members());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "leader: 1  term: 3  cluster: 00000000000000ab");
        assert!(lines[1].starts_with("ID  PEER ADDR"), "{text}");
        assert!(lines[2].starts_with("1   127.0.0.1:7180  127.0.0.1:7179  leader"), "{text}");
        assert!(lines[2].ends_with("  12/11"), "the build, then the cluster version: {text}");
        assert!(lines[4].contains("unreachable") && lines[4].ends_with("  -"), "{text}");
        assert_eq!(lines[5], "member 3: connection refused");
    }
}
