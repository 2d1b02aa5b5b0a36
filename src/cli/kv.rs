//! `latch kv put | get | del | compact`: the key-value commands.
//!
//! Text output follows etcdctl: `put` prints `OK`, `get` of one key prints its value alone,
//! `get --prefix` prints key and value on alternate lines, `del` prints how many keys went.
//! JSON output is one document per command; keys and values are UTF-8 strings (invalid bytes
//! replaced), since JSON has no bytes. A write under `--if-…` conditions ([`conditions`]) that
//! does not hold writes nothing and exits 1, saying which.

mod conditions;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use latch_client::proto::response_op::Response;
use latch_client::{
    prefix_range, DeleteRangeRequest, KeyValue, Op, PutRequest, RangeRequest, ResponseHeader,
};
use serde_json::json;

use conditions::{Conditions, Outcome};

use super::{print_bytes, print_json, ClientArgs, Output, UsageError};

/// `latch kv`. Where and how to talk to the cluster is the root's [`ClientArgs`].
#[derive(Debug, Args)]
pub struct KvCommand {
    /// The operation.
    #[command(subcommand)]
    pub op: KvOp,
}

/// The key-value operations.
#[derive(Debug, Subcommand)]
pub enum KvOp {
    /// Set KEY to VALUE.
    Put(PutArgs),
    /// Read KEY, or every key starting with it (--prefix).
    Get(GetArgs),
    /// Delete KEY, or every key starting with it (--prefix).
    Del(DelArgs),
    /// Forget the history at and below REV: reads and watches from there are refused.
    Compact(CompactArgs),
}

/// `latch kv compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The revision to compact up to (inclusive).
    #[arg(value_parser = clap::value_parser!(i64).range(1..))]
    pub revision: i64,
}

/// `latch kv put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key (not empty).
    #[arg(value_parser = non_empty_key)]
    pub key: String,
    /// The value (may be empty, or start with '-'). Not given: read from standard input, as is
    /// (any bytes, any size the server allows), as etcdctl does.
    #[arg(allow_hyphen_values = true)]
    pub value: Option<String>,
    /// Also print the key's previous value, if it had one.
    #[arg(long)]
    pub prev_kv: bool,
    /// Bind the key to this session (ephemeral): it goes when the session ends.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// KEY is a prefix: create PREFIX + the next 20-digit number and print the key created.
    #[arg(long)]
    pub sequential: bool,
    #[command(flatten)]
    pub conditions: Conditions,
}

/// `latch kv get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The key; with --prefix, the prefix (empty = every key).
    pub key: String,
    /// Every key starting with KEY, in key order.
    #[arg(long)]
    pub prefix: bool,
    /// Read this member's applied state without asking the leader: faster, possibly stale.
    #[arg(long)]
    pub serializable: bool,
    /// Return at most N keys (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub limit: i64,
    /// Print keys only, no values.
    #[arg(long)]
    pub keys_only: bool,
    /// Print only how many keys match.
    #[arg(long, conflicts_with = "keys_only")]
    pub count_only: bool,
    /// Read the keys as they were at revision N (until compacted; 0 = now).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub rev: i64,
}

/// `latch kv del`.
#[derive(Debug, Args)]
pub struct DelArgs {
    /// The key; with --prefix, the prefix (empty = every key).
    pub key: String,
    /// Every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    #[command(flatten)]
    pub conditions: Conditions,
}

/// A key given on the command line must not be empty: the empty key is no key.
fn non_empty_key(key: &str) -> Result<String, String> {
    if key.is_empty() {
        Err("the key must not be empty".into())
    } else {
        Ok(key.to_string())
    }
}

/// The range selecting `key`, or every key starting with it.
pub(super) fn key_range(key: &str, prefix: bool) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    if prefix {
        return Ok(prefix_range(key.as_bytes()));
    }
    if key.is_empty() {
        return Err(UsageError("the key must not be empty (use --prefix \"\" for every key)".into()).into());
    }
    Ok((key.as_bytes().to_vec(), Vec::new()))
}

/// Runs `latch kv …`.
pub async fn run(command: KvCommand, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let output = client.output;
    match command.op {
        KvOp::Put(args) => put(client, args, output).await,
        KvOp::Get(args) => get(client, args, output).await,
        KvOp::Del(args) => del(client, args, output).await,
        KvOp::Compact(args) => compact(client, args, output).await,
    }
}

/// Most bytes `kv put KEY` reads from standard input: far above any value a member takes
/// (`--max-value-bytes`), so that a pipe that never ends cannot fill this process's memory.
const MAX_STDIN_VALUE_BYTES: u64 = 64 * 1024 * 1024;

/// The value `kv put KEY` reads when none is given: all of standard input, unless it is a
/// terminal (a forgotten VALUE, not a value typed until Ctrl-D) or empty (`< /dev/null`
/// under cron, or an unquoted empty `$VALUE`: a silent empty value would be a lost write).
async fn value_from_stdin() -> anyhow::Result<Vec<u8>> {
    use std::io::IsTerminal;
    use tokio::io::AsyncReadExt;
    if std::io::stdin().is_terminal() {
        return Err(UsageError(
            "a VALUE is required (or give it on standard input: `latch kv put KEY < FILE`)".into(),
        )
        .into());
    }
    let mut value = Vec::new();
    tokio::io::stdin()
        .take(MAX_STDIN_VALUE_BYTES + 1)
        .read_to_end(&mut value)
        .await
        .context("reading the value from standard input")?;
    if value.is_empty() {
        return Err(UsageError(
            "no VALUE given and standard input is empty (give an empty value as '')".into(),
        )
        .into());
    }
    if value.len() as u64 > MAX_STDIN_VALUE_BYTES {
        return Err(UsageError(format!(
            "standard input holds more than {MAX_STDIN_VALUE_BYTES} bytes: no member takes a value that large"
        ))
        .into());
    }
    Ok(value)
}

async fn compact(client: &ClientArgs, args: CompactArgs, output: Output) -> anyhow::Result<ExitCode> {
    let client = client.connect().await?;
    let response = client.compact(args.revision).await?;
    match output {
        Output::Json => print_json(&json!({
            "header": header_json(response.header.as_ref()),
            "compact_revision": response.compact_revision,
        }))?,
        Output::Text => println!("compacted up to revision {}", response.compact_revision),
    }
    Ok(ExitCode::SUCCESS)
}

async fn put(client: &ClientArgs, args: PutArgs, output: Output) -> anyhow::Result<ExitCode> {
    args.conditions.check(args.sequential.then_some("--sequential"))?;
    let value = match args.value {
        Some(value) => value.into_bytes(),
        None => value_from_stdin().await?,
    };
    let client = client.connect().await?;
    let request = PutRequest {
        key: args.key.into_bytes(),
        value,
        prev_kv: args.prev_kv,
        session: args.session.unwrap_or_default(),
        sequential: args.sequential,
        ..Default::default()
    };
    let response = match args.conditions.given() {
        false => client.put_request(request).await?,
        true => match args.conditions.write(&client, &request.key.clone(), Op::from(request)).await? {
            Outcome::Written(Response::Put(response)) => response,
            Outcome::Written(other) => anyhow::bail!("the member answered a put with {other:?}"),
            Outcome::NotWritten { why, kv, header } => return not_written(&why, kv.as_ref(), header, output),
        },
    };
    match output {
        Output::Json => print_json(&json!({
            "header": header_json(response.header.as_ref()),
            "key": String::from_utf8_lossy(&response.key),
            "prev_kv": response.prev_kv.as_ref().map(kv_json),
        }))?,
        Output::Text => {
            let mut text = Vec::new();
            if args.sequential {
                push_line(&mut text, &response.key);
            } else {
                text.extend_from_slice(b"OK\n");
            }
            if let Some(prev) = &response.prev_kv {
                push_line(&mut text, &prev.key);
                push_line(&mut text, &prev.value);
            }
            print_bytes(&text)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(client: &ClientArgs, args: GetArgs, output: Output) -> anyhow::Result<ExitCode> {
    let (key, range_end) = key_range(&args.key, args.prefix)?;
    let client = client.connect().await?;
    let response = client
        .range_all(RangeRequest {
            key,
            range_end,
            limit: args.limit,
            serializable: args.serializable,
            keys_only: args.keys_only,
            count_only: args.count_only,
            revision: args.rev,
        })
        .await?;
    // One key asked for and not there is a failed lookup (exit 1), as `test -e` would say;
    // counting is not a lookup, so a count of 0 is an answer.
    let not_found = !args.prefix && !args.count_only && response.kvs.is_empty();
    match output {
        Output::Json => print_json(&json!({
            "kvs": response.kvs.iter().map(|kv| {
                let mut kv = kv_json(kv);
                if args.keys_only {
                    // The member sent no values: an empty one would read as a value.
                    if let Some(fields) = kv.as_object_mut() {
                        fields.remove("value");
                    }
                }
                kv
            }).collect::<Vec<_>>(),
            "count": response.count,
            "more": response.more,
            "revision": response.header.as_ref().map_or(0, |h| h.revision),
        }))?,
        Output::Text => {
            let mut text = Vec::new();
            if args.count_only {
                text.extend_from_slice(format!("{}\n", response.count).as_bytes());
            } else {
                for kv in &response.kvs {
                    if args.prefix || args.keys_only {
                        push_line(&mut text, &kv.key);
                    }
                    if !args.keys_only {
                        push_line(&mut text, &kv.value);
                    }
                }
            }
            print_bytes(&text)?;
        }
    }
    if not_found {
        eprintln!("key not found: {}", args.key);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn del(client: &ClientArgs, args: DelArgs, output: Output) -> anyhow::Result<ExitCode> {
    let (key, range_end) = key_range(&args.key, args.prefix)?;
    args.conditions.check(args.prefix.then_some("--prefix"))?;
    let client = client.connect().await?;
    let request = DeleteRangeRequest { key, range_end, ..Default::default() };
    let response = match args.conditions.given() {
        false => client.delete_range(request).await?,
        true => match args.conditions.write(&client, &request.key.clone(), Op::from(request)).await? {
            Outcome::Written(Response::DeleteRange(response)) => response,
            Outcome::Written(other) => anyhow::bail!("the member answered a delete with {other:?}"),
            Outcome::NotWritten { why, kv, header } => return not_written(&why, kv.as_ref(), header, output),
        },
    };
    match output {
        Output::Json => print_json(&json!({
            "deleted": response.deleted,
            "revision": response.header.as_ref().map_or(0, |h| h.revision),
        }))?,
        Output::Text => print_bytes(format!("{}\n", response.deleted).as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A write whose conditions did not hold: nothing was written. JSON: `{"written": false,
/// "failed": [why…], "kv": KEY as read (null: absent), "header"}`; text: each reason on stderr.
/// Exits 1, as a failed compare-and-swap.
fn not_written(
    why: &[String],
    kv: Option<&KeyValue>,
    header: Option<ResponseHeader>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match output {
        Output::Json => print_json(&json!({
            "written": false,
            "failed": why,
            "kv": kv.map(kv_json),
            "header": header_json(header.as_ref()),
        }))?,
        Output::Text => {
            for line in why {
                eprintln!("not written: {line}");
            }
        }
    }
    Ok(ExitCode::from(1))
}

/// Appends `bytes` as they are (a value may be binary) and a newline.
fn push_line(text: &mut Vec<u8>, bytes: &[u8]) {
    text.extend_from_slice(bytes);
    text.push(b'\n');
}

pub(super) fn kv_json(kv: &KeyValue) -> serde_json::Value {
    json!({
        "key": String::from_utf8_lossy(&kv.key),
        "value": String::from_utf8_lossy(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "session": kv.session,
    })
}

/// A response's header: the cluster id as `latch cluster status` prints it and `--cluster-id`
/// takes it (16 hex digits: a JSON number that large loses digits in most readers).
pub(super) fn header_json(header: Option<&ResponseHeader>) -> serde_json::Value {
    let header = header.cloned().unwrap_or_default();
    json!({
        "cluster_id": latch_proto::format_cluster_id(header.cluster_id),
        "member_id": header.member_id,
        "revision": header.revision,
        "raft_term": header.raft_term,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn a_headers_cluster_id_is_printed_as_cluster_id_takes_it() {
        let header =
            ResponseHeader { cluster_id: 0xa981_4378_bccd_442d, member_id: 1, revision: 7, raft_term: 2 };
        let printed = header_json(Some(&header));
        assert_eq!(
            printed["cluster_id"], "a9814378bccd442d",
            "16 hex digits, not a number JSON readers round"
        );
        assert_eq!((printed["member_id"].as_u64(), printed["revision"].as_i64()), (Some(1), Some(7)));
    }

    fn parse_kv(args: &[&str]) -> Result<KvOp, clap::Error> {
        let cli = Cli::try_parse_from(["latch", "kv"].into_iter().chain(args.iter().copied()))?;
        match cli.command {
            Command::Kv(kv) => Ok(kv.op),
            other => panic!("kv command expected, got {other:?}"),
        }
    }

    #[test]
    fn put_of_an_empty_key_is_a_usage_error() {
        let e = parse_kv(&["put", "", "v"]).expect_err("empty key");
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("the key must not be empty"), "{e}");
    }

    #[test]
    fn put_accepts_an_empty_value_and_one_starting_with_a_dash() {
        for value in ["", "-1"] {
            match parse_kv(&["put", "k", value]).expect("valid put") {
                KvOp::Put(put) => assert_eq!(put.value.as_deref(), Some(value)),
                other => panic!("put expected, got {other:?}"),
            }
        }
    }

    #[test]
    fn get_of_an_empty_key_needs_prefix() {
        let e = key_range("", false).expect_err("empty key without --prefix");
        assert!(e.downcast_ref::<UsageError>().is_some(), "a usage error: {e}");
        assert_eq!(key_range("", true).expect("every key"), (vec![0], vec![0]));
        assert_eq!(key_range("a/", true).expect("prefix"), (b"a/".to_vec(), b"a0".to_vec()));
        assert_eq!(key_range("k", false).expect("one key"), (b"k".to_vec(), Vec::new()));
    }

    #[test]
    fn get_limit_must_not_be_negative() {
        assert_eq!(parse_kv(&["get", "k", "--limit", "-1"]).expect_err("negative").exit_code(), 2);
    }

    #[test]
    fn json_kvs_show_keys_and_values_as_text() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: vec![b'v', 0xff],
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            session: String::new(),
        };
        assert_eq!(
            kv_json(&kv),
            json!({"key": "k", "value": "v\u{fffd}", "create_revision": 2, "mod_revision": 3, "version": 2, "session": ""})
        );
    }
}
