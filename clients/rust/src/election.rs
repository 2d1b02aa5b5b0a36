//! Elections: [`Election`] campaigns, proclaims, resigns, and observes who leads. An election
//! is an exclusive lock whose holder publishes a value; the leadership's [`Sequencer`] fences
//! what the leader writes, as a lock's does.

use std::time::Duration;

use futures::{Stream, StreamExt};
use latch_proto::v1::election_client::ElectionClient;
use latch_proto::v1::{
    CampaignRequest, DescribeElectionRequest, ElectionInfo, LeaderRequest, Leadership, ListElectionsRequest,
    ObserveRequest, ProclaimRequest, ResignRequest, WithdrawCandidacyRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::client::every_page;
use crate::lock::{Granted, Queue, Unsettled};
use crate::{Client, Error};

/// One election, by name.
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    name: String,
    lock_delay: Option<Duration>,
}

impl Client {
    pub fn election(&self, name: impl Into<String>) -> Election {
        Election { client: self.clone(), name: name.into(), lock_delay: None }
    }

    /// The elections whose names begin with `prefix`, in name order, each with its leader,
    /// candidates and lock-delay: every page of them (each read at its own revision).
    pub async fn list_elections(&self, prefix: &str) -> Result<Vec<ElectionInfo>, Error> {
        let page = |start_after: String| async move {
            let request = ListElectionsRequest { prefix: prefix.to_string(), start_after };
            let r = self
                .call("List", |channel| {
                    let request = request.clone();
                    // A page is as large as the member's --max-response-bytes allows.
                    async move {
                        ElectionClient::new(channel).max_decoding_message_size(usize::MAX).list(request).await
                    }
                })
                .await?;
            Ok((r.elections, r.more))
        };
        every_page(page, |e: &ElectionInfo| e.name.clone()).await
    }

    /// Gives up the campaign sent under `request_id` (Election.Withdraw): its place among the
    /// candidates, or its chance to be one; `Some` when it had won first (the session leads).
    pub(crate) async fn withdraw_candidacy(
        &self,
        name: &str,
        request_id: &str,
    ) -> Result<Option<Leadership>, Error> {
        let request = WithdrawCandidacyRequest { name: name.to_string(), request_id: request_id.to_string() };
        let r = self
            .write("Withdraw", |channel| {
                let request = request.clone();
                async move { ElectionClient::new(channel).withdraw(request).await }
            })
            .await?;
        Ok(r.leader)
    }
}

impl Election {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long nobody else leads after this candidate's session expires while it leads
    /// (0 … 60 s; 5 s by default), as a lock's lock-delay.
    pub fn lock_delay(mut self, delay: Duration) -> Election {
        self.lock_delay = Some(delay);
        self
    }

    /// Waits until `session` leads, publishing `value`; answers the leadership. Dropping the
    /// future (or an error after the candidacy may have been queued) withdraws a candidacy still
    /// waiting, in the background; a leadership granted just as it was dropped
    /// stays the session's until resigned or the session ends (campaign again with the session
    /// to get it back). A session that leads already gets its leadership back.
    pub async fn campaign(&self, session: &str, value: impl Into<Vec<u8>>) -> Result<Leadership, Error> {
        let request = CampaignRequest {
            name: self.name.clone(),
            session_id: session.to_string(),
            value: value.into(),
            lock_delay_ms: self.lock_delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            request_id: uuid::Uuid::now_v7().to_string(),
        };
        let mut unsettled = Unsettled::new(&self.client, Queue::Election, &self.name, &request.request_id);
        let r = self
            .client
            .write_waiting("Campaign", None, |channel| {
                let request = request.clone();
                async move { ElectionClient::new(channel).campaign(request).await }
            })
            .await;
        if let Some(Granted::Election(leadership)) = unsettled.settle_on(&r).await {
            return Ok(leadership);
        }
        r?.leader.ok_or_else(|| Error::from(tonic::Status::internal("the answer carries no leadership")))
    }

    /// Publishes a new value as leader; FAILED_PRECONDITION once it no longer leads.
    pub async fn proclaim(&self, leadership: &Leadership, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        let request = ProclaimRequest {
            sequencer: token(leadership),
            value: value.into(),
            request_id: uuid::Uuid::now_v7().to_string(),
        };
        self.client
            .write("Proclaim", |channel| {
                let request = request.clone();
                async move { ElectionClient::new(channel).proclaim(request).await }
            })
            .await?;
        Ok(())
    }

    /// The leader now (linearizable); `None` when nobody leads.
    pub async fn leader(&self) -> Result<Option<Leadership>, Error> {
        let request = LeaderRequest { name: self.name.clone() };
        let r = self
            .client
            .call("Leader", |channel| {
                let request = request.clone();
                async move { ElectionClient::new(channel).leader(request).await }
            })
            .await;
        match r {
            Ok(r) => Ok(r.leader),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The leader, the candidates waiting in order (the head leads next) and the lock-delay
    /// (linearizable); `None` when nobody leads, campaigns or delays.
    pub async fn describe(&self) -> Result<Option<ElectionInfo>, Error> {
        let request = DescribeElectionRequest { name: self.name.clone() };
        let r = self
            .client
            .call("Describe", |channel| {
                let request = request.clone();
                // A row of 1,000 candidates with 4 KiB values is over tonic's 4 MiB default.
                async move {
                    ElectionClient::new(channel).max_decoding_message_size(usize::MAX).describe(request).await
                }
            })
            .await?;
        Ok(r.election)
    }

    /// Gives up leadership.
    pub async fn resign(&self, leadership: &Leadership) -> Result<(), Error> {
        let request =
            ResignRequest { sequencer: token(leadership), request_id: uuid::Uuid::now_v7().to_string() };
        self.client
            .write("Resign", |channel| {
                let request = request.clone();
                async move { ElectionClient::new(channel).resign(request).await }
            })
            .await?;
        Ok(())
    }

    /// The leader now, then every change (`None`: nobody leads). The stream moves to another
    /// member by itself when one fails, and never repeats a leader it just reported. It ends
    /// only if the members refuse the observation itself (a name over 1 KiB, say): see
    /// [`observe_or_fail`](Election::observe_or_fail) for the error.
    pub fn observe(&self) -> impl Stream<Item = Option<Leadership>> + Send + 'static {
        self.observe_or_fail()
            .take_while(|item| std::future::ready(item.is_ok()))
            .filter_map(|item| std::future::ready(item.ok()))
    }

    /// [`observe`](Election::observe), with the refusal that ends it as its last item: an
    /// error no member would answer otherwise (INVALID_ARGUMENT, FAILED_PRECONDITION), which
    /// retrying cannot mend. Failures of members are retried on the others, as by `observe`.
    pub fn observe_or_fail(&self) -> impl Stream<Item = Result<Option<Leadership>, Error>> + Send + 'static {
        let (tx, rx) = mpsc::channel(16);
        let (client, name) = (self.client.clone(), self.name.clone());
        tokio::spawn(async move {
            let mut last: Option<Option<(u64, Vec<u8>)>> = None;
            let mut backoff = Duration::from_millis(50);
            loop {
                let request = ObserveRequest { name: name.clone() };
                let opened = client
                    .open_stream("Observe", |channel| {
                        let request = request.clone();
                        async move { ElectionClient::new(channel).observe(request).await }
                    })
                    .await;
                let mut stream = match opened {
                    Ok(stream) => Some(stream),
                    Err(e) if matches!(e.code(), Code::InvalidArgument | Code::FailedPrecondition) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Err(_) => None,
                };
                if let Some(stream) = stream.as_mut() {
                    backoff = Duration::from_millis(50);
                    loop {
                        // Ends with its consumer, not only at the next change it would send.
                        let answer = tokio::select! {
                            answer = stream.message() => answer,
                            () = tx.closed() => return,
                        };
                        let Ok(Some(answer)) = answer else { break };
                        let seen = answer.leader.as_ref().map(|l| (generation(l), l.value.clone()));
                        if last.as_ref() == Some(&seen) {
                            continue;
                        }
                        last = Some(seen);
                        if tx.send(Ok(answer.leader)).await.is_err() {
                            return;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                if stream.is_some() {
                    // The stream broke (its member stopped answering its pings, say): opened
                    // again elsewhere first, not back on the member that broke it.
                    client.move_on();
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
        ReceiverStream::new(rx)
    }
}

fn token(l: &Leadership) -> String {
    l.sequencer.as_ref().map(|s| s.token.clone()).unwrap_or_default()
}

fn generation(l: &Leadership) -> u64 {
    l.sequencer.as_ref().map_or(0, |s| s.generation)
}
