//! `latch dns records`: every record a member's DNS port answers, fetched from that port as a
//! zone transfer (AXFR over TCP) — so what it prints is what resolvers get, by construction —
//! and, on stderr, each static record under `/dns/` whose value does not parse (read through
//! the KV API: a transfer leaves such names out).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, Record, RecordType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{print_bytes, print_json, ClientArgs, Output, UsageError};
use crate::config::DEFAULT_DNS_DOMAIN;
use latch_client::Client;

/// `latch dns`.
#[derive(Debug, Args)]
pub struct DnsCommand {
    #[command(subcommand)]
    pub op: DnsOp,
}

#[derive(Debug, Subcommand)]
pub enum DnsOp {
    /// Every record the member's DNS port answers (its zone, by transfer): name, TTL, type,
    /// data.
    Records {
        /// The member's DNS port (its --dns-addr) [default: where the first member of --endpoints
        /// to answer says its DNS port listens; behind NAT or a port mapping, give it].
        #[arg(long, env = "LATCH_DNS_ADDR")]
        dns_addr: Option<String>,
        /// The domain it answers for (its --dns-domain).
        #[arg(long, default_value = DEFAULT_DNS_DOMAIN)]
        domain: String,
    },
}

/// How long the transfer may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(command: DnsCommand, client_args: &ClientArgs) -> anyhow::Result<ExitCode> {
    match command.op {
        DnsOp::Records { dns_addr, domain } => {
            let mut name = Name::from_ascii(&domain)
                .map_err(|e| UsageError(format!("--domain {domain:?} is not a domain name: {e}")))?;
            name.set_fqdn(true);
            let client = client_args.connect().await?;
            let dns_addr = match dns_addr {
                Some(addr) => addr,
                None => member_dns_addr(&client).await?,
            };
            let records = tokio::time::timeout(TIMEOUT, transfer(&dns_addr, name.clone()))
                .await
                .map_err(|_| anyhow!("the zone transfer from {dns_addr} took longer than {TIMEOUT:?}"))??;
            let problems = static_problems(&client, &name).await?;
            for p in &problems {
                eprintln!("{p}");
            }
            match client_args.output {
                Output::Json => {
                    let all: Vec<_> = records
                        .iter()
                        .map(|r| {
                            json!({
                                "name": r.name.to_ascii(),
                                "ttl": r.ttl,
                                "type": r.record_type().to_string(),
                                "data": r.data.to_string(),
                            })
                        })
                        .collect();
                    print_json(&json!({ "records": all }))?
                }
                Output::Text => {
                    let mut out = String::new();
                    for r in &records {
                        out.push_str(&format!("{} {} IN {} {}\n", r.name, r.ttl, r.record_type(), r.data));
                    }
                    print_bytes(out.as_bytes())?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Where the DNS port of the member that answers `client` listens, as the member says: a
/// wildcard host (it listens on every address) is reached at its client address's host.
async fn member_dns_addr(client: &Client) -> anyhow::Result<String> {
    let status = client.cluster_status().await?;
    let me = status.header.map_or(0, |h| h.member_id);
    let member = status
        .members
        .iter()
        .find(|m| m.id == me)
        .ok_or_else(|| anyhow!("member {me} did not list itself in its status"))?;
    if member.dns_addr.is_empty() {
        bail!(
            "member {me} does not say where its DNS port listens (a build from before members said so): \
             give --dns-addr, the member's --dns-addr"
        );
    }
    let addr = reachable_at(&member.dns_addr, &member.client_addr);
    if addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified()) {
        bail!(
            "member {me} listens for DNS on every address ({addr}) and names no address clients reach it \
             at (--advertise-client-addr): give --dns-addr"
        );
    }
    Ok(addr)
}

/// `dns_addr`, with a wildcard host (0.0.0.0, [::]) replaced by the host of `client_addr`.
fn reachable_at(dns_addr: &str, client_addr: &str) -> String {
    match (dns_addr.parse::<std::net::SocketAddr>(), client_addr.rsplit_once(':')) {
        (Ok(addr), Some((host, _))) if addr.ip().is_unspecified() => format!("{host}:{}", addr.port()),
        _ => dns_addr.to_string(),
    }
}

/// The static records under `/dns/` whose values do not parse, each named with why.
async fn static_problems(client: &Client, domain: &Name) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for kv in client.get_prefix(crate::dns::names::STATIC_PREFIX).await? {
        let relative =
            String::from_utf8_lossy(&kv.key[crate::dns::names::STATIC_PREFIX.len()..]).into_owned();
        let name = Name::from_ascii(&relative).and_then(|n| n.append_domain(domain));
        let why = match name {
            Err(e) => Some(format!("{relative:?} makes no domain name: {e}")),
            Ok(name) => crate::dns::records::parse(&name, &kv.value, 1).err(),
        };
        if let Some(why) = why {
            out.push(format!(
                "static record {}: {why} (its name answers SERVFAIL)",
                String::from_utf8_lossy(&kv.key)
            ));
        }
    }
    Ok(out)
}

/// Asks `addr` for the zone `domain` over TCP; the records without the closing SOA.
async fn transfer(addr: &str, domain: Name) -> anyhow::Result<Vec<Record>> {
    let mut stream =
        TcpStream::connect(addr).await.with_context(|| format!("connecting to the DNS port {addr}"))?;
    let mut query = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    query.add_query(Query::query(domain.clone(), RecordType::AXFR));
    let bytes = query.to_vec().context("encoding the query")?;
    let len = u16::try_from(bytes.len()).context("query length")?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    let mut records: Vec<Record> = Vec::new();
    let mut soas = 0;
    while soas < 2 {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.context("the member closed the transfer early")?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.context("reading the transfer")?;
        let message = Message::from_vec(&buf).with_context(|| {
            format!("decoding the transfer (is {addr} a member's DNS port, its --dns-addr?)")
        })?;
        if message.metadata.truncation {
            bail!(
                "the DNS port at {addr} sent a truncated transfer message: the listing would be incomplete"
            );
        }
        if message.metadata.response_code != ResponseCode::NoError {
            bail!(
                "the DNS port at {addr} answered {} for a transfer of {domain} (is --domain its --dns-domain?)",
                message.metadata.response_code
            );
        }
        for r in message.answers {
            if r.record_type() == RecordType::SOA {
                soas += 1;
                if soas == 2 {
                    break;
                }
            }
            records.push(r);
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::reachable_at;

    #[test]
    fn a_dns_port_on_every_address_is_reached_at_the_client_address_host() {
        assert_eq!(reachable_at("0.0.0.0:8600", "10.0.0.7:7379"), "10.0.0.7:8600");
        assert_eq!(reachable_at("[::]:8600", "[fd00::7]:7379"), "[fd00::7]:8600");
        assert_eq!(reachable_at("0.0.0.0:8600", "db-1.example:7379"), "db-1.example:8600");
        assert_eq!(reachable_at("127.0.0.1:8700", "10.0.0.7:7379"), "127.0.0.1:8700", "a bound host stays");
    }
}
