//! The Registry service: Register, Deregister, Heartbeat, List, Services (see `fsm::registry`
//! for what is replicated, `health` for the leader's probes).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use latch_proto::internal::{self, outcome, Deregister, Heartbeat, InstanceRow, Register};
use latch_proto::v1::health_check::Kind;
use latch_proto::v1::registry_server::{Registry, RegistryServer};
use latch_proto::v1::*;
use redb::ReadableDatabase as _;
use tonic::{Request, Response, Status};

use super::kv::check_request_id;
use super::{ApiError, Context};
use crate::fsm::registry::{self, FieldError};

pub struct RegistryService {
    ctx: Context,
}

impl RegistryService {
    pub fn server(ctx: Context) -> RegistryServer<RegistryService> {
        RegistryServer::new(RegistryService { ctx })
    }

    /// Waits until this member may answer a read as asked.
    async fn ready_to_read(&self, serializable: bool) -> Result<(), ApiError> {
        if serializable {
            self.ctx.node.read_serializable().await?;
        } else {
            self.ctx.node.read_index().await?;
        }
        Ok(())
    }
}

fn invalid((field, problem): FieldError) -> ApiError {
    ApiError::InvalidArgument { field, problem }
}

fn instance_of(i: ServiceInstance) -> internal::Instance {
    internal::Instance {
        service: i.service,
        id: i.id,
        address: i.address,
        port: i.port,
        tags: i.tags,
        meta: i.meta,
        weight: i.weight,
    }
}

/// The port `uri`'s authority spells after its host, if any, as written: `Uri` reads `h:abc` as
/// host h and no port, which the prober would take for 80.
fn spelled_port(uri: &hyper::Uri) -> Option<&str> {
    let authority = uri.authority()?.as_str();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.strip_prefix(uri.host()?)?.strip_prefix(':')
}

fn check_of(c: HealthCheck) -> Result<internal::Check, ApiError> {
    let negative = [
        ("check.ttl_ms", c.ttl_ms),
        ("check.interval_ms", c.interval_ms),
        ("check.timeout_ms", c.timeout_ms),
        ("check.deregister_after_ms", c.deregister_after_ms),
    ];
    if let Some((field, v)) = negative.into_iter().find(|(_, v)| *v < 0) {
        return Err(ApiError::InvalidArgument { field, problem: format!("{v} is negative") });
    }
    // A field the check's kind does not use is a mistake (a kind left unset is SESSION), not
    // something to drop without a word.
    if let Ok(kind) = Kind::try_from(c.kind) {
        let used: &[&str] = match kind {
            Kind::Session => &[],
            Kind::Ttl => &["check.ttl_ms", "check.deregister_after_ms"],
            Kind::Http => {
                &["check.url", "check.interval_ms", "check.timeout_ms", "check.deregister_after_ms"]
            }
            Kind::Tcp => {
                &["check.tcp_address", "check.interval_ms", "check.timeout_ms", "check.deregister_after_ms"]
            }
        };
        let set = [
            ("check.ttl_ms", c.ttl_ms != 0),
            ("check.url", !c.url.is_empty()),
            ("check.tcp_address", !c.tcp_address.is_empty()),
            ("check.interval_ms", c.interval_ms != 0),
            ("check.timeout_ms", c.timeout_ms != 0),
            ("check.deregister_after_ms", c.deregister_after_ms != 0),
        ];
        if let Some((field, _)) = set.into_iter().find(|&(field, set)| set && !used.contains(&field)) {
            return Err(ApiError::InvalidArgument {
                field,
                problem: format!(
                    "does not apply to a {} check (check.kind; unset, it is SESSION)",
                    kind.as_str_name()
                ),
            });
        }
    }
    let check = registry::check_check(&internal::Check {
        kind: c.kind,
        ttl_ms: c.ttl_ms as u64,
        url: c.url,
        tcp_address: c.tcp_address,
        interval_ms: c.interval_ms as u64,
        timeout_ms: c.timeout_ms as u64,
        deregister_after_ms: c.deregister_after_ms as u64,
    })
    .map_err(invalid)?;
    if check.kind == Kind::Http as i32 {
        // What the prober will make of it (`health::http_get`): a URL it cannot read would
        // leave the instance critical at every probe, and reaped, for a typo.
        let url = &check.url;
        let problem = match url.parse::<hyper::Uri>() {
            Err(e) => Some(format!("{url:?}: {e}")),
            Ok(uri) if uri.host().is_none_or(str::is_empty) => Some(format!("{url:?}: names no host")),
            Ok(uri) if spelled_port(&uri).is_some_and(|p| !p.parse::<u16>().is_ok_and(|p| p != 0)) => {
                Some(format!("{url:?}: the port is not a number from 1 to 65535"))
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            return Err(ApiError::InvalidArgument { field: "check.url", problem });
        }
    }
    Ok(check)
}

/// An instance row as the public API shows it.
pub fn instance_info(row: InstanceRow) -> InstanceInfo {
    let i = row.instance.unwrap_or_default();
    let c = row.check.unwrap_or_default();
    InstanceInfo {
        instance: Some(ServiceInstance {
            service: i.service,
            id: i.id,
            address: i.address,
            port: i.port,
            tags: i.tags,
            meta: i.meta,
            weight: i.weight,
        }),
        session: row.session,
        check: Some(HealthCheck {
            kind: c.kind,
            ttl_ms: c.ttl_ms as i64,
            url: c.url,
            tcp_address: c.tcp_address,
            interval_ms: c.interval_ms as i64,
            timeout_ms: c.timeout_ms as i64,
            deregister_after_ms: c.deregister_after_ms as i64,
        }),
        health: row.health,
        output: row.output,
        registered_revision: row.registered_revision,
        mod_revision: row.mod_revision,
        critical_since_revision: row.critical_since,
    }
}

/// Whether an instance carries `tag` (compared without regard to case); any instance for "".
pub fn has_tag(row: &InstanceRow, tag: &str) -> bool {
    tag.is_empty()
        || row.instance.as_ref().is_some_and(|i| i.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
}

fn check_names(service: &str, id: &str) -> Result<(), ApiError> {
    registry::check_label("service", service).map_err(invalid)?;
    registry::check_label("id", id).map_err(invalid)
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_request_id(&req.request_id)?;
            let instance = req.instance.map(instance_of).ok_or_else(|| ApiError::InvalidArgument {
                field: "instance",
                problem: "is missing".into(),
            })?;
            registry::check_instance(&instance)
                .map_err(|(field, problem)| invalid((field_in_instance(field), problem)))?;
            let check = check_of(req.check.unwrap_or_default())?;
            if !req.session.is_empty() {
                crate::fsm::sessions::check_id(req.session.as_bytes())
                    .map_err(|problem| ApiError::InvalidArgument { field: "session", problem })?;
            }
            let body = internal::command::Body::Register(Register {
                instance: Some(instance),
                session: req.session,
                check: Some(check),
            });
            match self.ctx.write(&req.request_id, body).await? {
                (header, outcome::Result::Registry(r)) => Ok(RegisterResponse {
                    header: Some(header),
                    instance: r.instance.map(|row| instance_info(*row)),
                }),
                (_, other) => Err(ApiError::Internal(format!("register: unexpected outcome {other:?}"))),
            }
        };
        self.ctx.answer(run).await
    }

    async fn deregister(
        &self,
        req: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_request_id(&req.request_id)?;
            check_names(&req.service, &req.id)?;
            let body = internal::command::Body::Deregister(Deregister { service: req.service, id: req.id });
            let (header, _) = self.ctx.write(&req.request_id, body).await?;
            Ok(DeregisterResponse { header: Some(header) })
        };
        self.ctx.answer(run).await
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            check_request_id(&req.request_id)?;
            check_names(&req.service, &req.id)?;
            if req.output.len() > registry::MAX_OUTPUT_BYTES {
                return Err(ApiError::InvalidArgument {
                    field: "output",
                    problem: format!(
                        "is {} bytes, at most {} allowed",
                        req.output.len(),
                        registry::MAX_OUTPUT_BYTES
                    ),
                });
            }
            let body = internal::command::Body::Heartbeat(Heartbeat {
                service: req.service,
                id: req.id,
                output: req.output,
            });
            let (header, out) = self.ctx.write(&req.request_id, body).await?;
            let health = match out {
                outcome::Result::Registry(r) => r.instance.map_or(Health::Passing as i32, |i| i.health),
                _ => Health::Passing as i32,
            };
            Ok(HeartbeatResponse { header: Some(header), health })
        };
        self.ctx.answer(run).await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            if !req.service.is_empty() {
                registry::check_label("service", &req.service).map_err(invalid)?;
            }
            if !req.tag.is_empty() {
                registry::check_tag(&req.tag).map_err(|(_, p)| invalid(("tag", p)))?;
            }
            let from = match req.start_after.as_str() {
                "" => registry::Start::First,
                after => {
                    let (service, id) = registry::split_key(after.as_bytes()).ok_or_else(|| {
                        invalid((
                            "start_after",
                            format!(
                                "{after:?} is not service/id (two DNS labels: the last instance of a page)"
                            ),
                        ))
                    })?;
                    registry::Start::AfterInstance(service, id)
                }
            };
            let limit = super::page_limit(req.limit)?;
            self.ready_to_read(req.serializable).await?;
            let txn = self.ctx.node.db().begin_read()?;
            let revision = crate::fsm::applied(&txn)?.revision;
            let budget = self.ctx.limits.max_response_bytes;
            let (mut instances, mut bytes, mut more) = (Vec::new(), 0usize, false);
            registry::visit(&txn, &req.service, from, |row| {
                if !(req.include_critical || registry::is_passing(&row)) || !has_tag(&row, &req.tag) {
                    return ControlFlow::Continue(());
                }
                if instances.len() >= limit {
                    more = true;
                    return ControlFlow::Break(());
                }
                let info = instance_info(row);
                bytes += prost::Message::encoded_len(&info) + 4;
                if bytes > budget && !instances.is_empty() {
                    more = true;
                    return ControlFlow::Break(());
                }
                instances.push(info);
                ControlFlow::Continue(())
            })?;
            Ok(ListResponse { header: Some(self.ctx.header(revision)), instances, more })
        };
        self.ctx.answer(run).await
    }

    async fn services(&self, req: Request<ServicesRequest>) -> Result<Response<ServicesResponse>, Status> {
        let req = req.into_inner();
        let run = async {
            let from = match req.start_after.as_str() {
                "" => registry::Start::First,
                after => {
                    registry::check_label("start_after", after).map_err(invalid)?;
                    registry::Start::AfterService(after)
                }
            };
            let limit = super::page_limit(req.limit)?;
            self.ready_to_read(req.serializable).await?;
            let txn = self.ctx.node.db().begin_read()?;
            let revision = crate::fsm::applied(&txn)?.revision;
            // Services come one after another in key order: each is summed up (its tags as a
            // set), then kept if it fits; the first that does not fit ends the answer.
            let mut page = ServicesPage::new(self.ctx.limits.max_response_bytes, limit);
            registry::visit(&txn, "", from, |row| {
                let Some(i) = row.instance.as_ref() else { return ControlFlow::Continue(()) };
                page.add(&i.service, &i.tags, registry::is_passing(&row))
            })?;
            let (services, more) = page.finish();
            Ok(ServicesResponse { header: Some(self.ctx.header(revision)), services, more })
        };
        self.ctx.answer(run).await
    }
}

/// The summaries of one Services answer, built as the instances go by, within a byte budget
/// and a count.
struct ServicesPage {
    budget: usize,
    limit: usize,
    bytes: usize,
    done: Vec<ServiceSummary>,
    /// The service being summed up: its summary, its tags and about how many bytes they take.
    current: Option<(ServiceSummary, BTreeSet<String>, usize)>,
    more: bool,
}

/// What a summary costs in an answer besides its name and tags (counts, field tags, lengths).
const SUMMARY_OVERHEAD_BYTES: usize = 32;

impl ServicesPage {
    fn new(budget: usize, limit: usize) -> ServicesPage {
        ServicesPage { budget, limit, bytes: 0, done: Vec::new(), current: None, more: false }
    }

    /// One instance of `service`; breaks once a finished service did not fit, or at a
    /// service past the count.
    fn add(&mut self, service: &str, tags: &[String], passing: bool) -> ControlFlow<()> {
        if self.current.as_ref().is_some_and(|(s, _, _)| s.name != service) && self.close().is_break() {
            return ControlFlow::Break(());
        }
        if self.current.is_none() && self.done.len() >= self.limit {
            self.more = true;
            return ControlFlow::Break(());
        }
        let (summary, set, tag_bytes) = self.current.get_or_insert_with(|| {
            (ServiceSummary { name: service.to_string(), ..Default::default() }, BTreeSet::new(), 0)
        });
        summary.instances += 1;
        summary.passing += i64::from(passing);
        for tag in tags {
            if set.insert(tag.clone()) {
                *tag_bytes += tag.len() + 2;
            }
        }
        if self.done.is_empty() {
            // The first service is always answered: its tags are cut to the smallest that fit,
            // so that they never take more than the budget.
            while *tag_bytes > self.budget {
                let Some(largest) = set.pop_last() else { break };
                *tag_bytes -= largest.len() + 2;
                summary.tags_cut = true;
            }
        } else if self.bytes + service.len() + SUMMARY_OVERHEAD_BYTES + *tag_bytes > self.budget {
            // A service whose tags alone cannot fit any more is not summed up to the end.
            self.current = None;
            self.more = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Keeps the service being summed up if it fits (the first always does).
    fn close(&mut self) -> ControlFlow<()> {
        let Some((mut summary, tags, _)) = self.current.take() else { return ControlFlow::Continue(()) };
        summary.tags = tags.into_iter().collect();
        self.bytes += prost::Message::encoded_len(&summary) + 4;
        if self.bytes > self.budget && !self.done.is_empty() {
            self.more = true;
            return ControlFlow::Break(());
        }
        self.done.push(summary);
        ControlFlow::Continue(())
    }

    fn finish(mut self) -> (Vec<ServiceSummary>, bool) {
        if !self.more {
            let _ = self.close();
        }
        (self.done, self.more)
    }
}

/// An instance field's name as the request spells it.
fn field_in_instance(field: &'static str) -> &'static str {
    match field {
        "service" => "instance.service",
        "id" => "instance.id",
        "address" => "instance.address",
        "port" => "instance.port",
        "weight" => "instance.weight",
        "tags" => "instance.tags",
        "meta" => "instance.meta",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(page: &mut ServicesPage, instances: &[(&str, &[&str], bool)]) -> bool {
        for (service, tags, passing) in instances {
            let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
            if page.add(service, &tags, *passing).is_break() {
                return false;
            }
        }
        true
    }

    const INSTANCES: &[(&str, &[&str], bool)] = &[
        ("api", &["v2", "eu"], true),
        ("api", &["eu"], false),
        ("db", &["primary"], true),
        ("web", &["b", "a"], true),
    ];

    #[test]
    fn services_are_summed_up_with_their_tags_as_a_sorted_set() {
        let mut page = ServicesPage::new(usize::MAX, usize::MAX);
        assert!(feed(&mut page, INSTANCES), "nothing stops an unbounded page");
        let (services, more) = page.finish();
        assert!(!more);
        let got: Vec<(&str, i64, i64, Vec<&str>)> = services
            .iter()
            .map(|s| (s.name.as_str(), s.instances, s.passing, s.tags.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("api", 2, 1, vec!["eu", "v2"]),
                ("db", 1, 1, vec!["primary"]),
                ("web", 1, 1, vec!["a", "b"])
            ]
        );
    }

    #[test]
    fn a_services_page_stops_at_the_first_service_that_does_not_fit_and_says_more() {
        let one = ServiceSummary {
            name: "api".into(),
            instances: 2,
            passing: 1,
            tags: vec!["eu".into(), "v2".into()],
            tags_cut: false,
        };
        let budget = prost::Message::encoded_len(&one) + 4;
        let mut page = ServicesPage::new(budget, usize::MAX);
        assert!(!feed(&mut page, INSTANCES), "the walk stops once a finished service does not fit");
        let (services, more) = page.finish();
        assert_eq!(services, vec![one], "only what fits is kept");
        assert!(more, "and the answer says more follow");

        let mut tiny = ServicesPage::new(1, usize::MAX);
        feed(&mut tiny, &INSTANCES[..2]);
        let (services, more) = tiny.finish();
        assert_eq!(
            (services.len(), more),
            (1, false),
            "the first service is always answered, whatever its size"
        );
    }

    #[test]
    fn the_first_services_tags_are_cut_to_the_smallest_that_fit_the_budget() {
        let budget = 2 * ("t01".len() + 2);
        let mut page = ServicesPage::new(budget, usize::MAX);
        let tags = ["t05", "t09", "t01", "t07", "t03"].map(String::from);
        for tag in &tags {
            assert!(page.add("api", std::slice::from_ref(tag), true).is_continue());
        }
        let (services, _) = page.finish();
        assert_eq!(services[0].tags, ["t01", "t03"], "the smallest two of five, whatever their order");
        assert!(services[0].tags_cut, "the summary says its tags were cut");
        assert_eq!(services[0].instances, 5, "every instance is counted");
        let mut roomy = ServicesPage::new(usize::MAX, usize::MAX);
        assert!(roomy.add("api", &tags, true).is_continue());
        assert!(!roomy.finish().0[0].tags_cut, "nothing cut when they fit");
    }

    #[test]
    fn a_services_page_holds_at_most_its_limit_and_says_more_only_when_another_follows() {
        let names = |services: &[ServiceSummary]| services.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let mut two = ServicesPage::new(usize::MAX, 2);
        assert!(!feed(&mut two, INSTANCES), "the walk stops at the third service");
        let (services, more) = two.finish();
        assert_eq!((names(&services), more), (vec!["api".to_string(), "db".to_string()], true));
        assert_eq!(services[0].instances, 2, "a service is summed up whole before the limit counts it");

        let mut three = ServicesPage::new(usize::MAX, 3);
        assert!(feed(&mut three, INSTANCES), "three services fit a limit of three");
        let (services, more) = three.finish();
        assert_eq!((services.len(), more), (3, false), "nothing follows the third");
    }
}
