//! A member's limits on watches, on real processes (`api::watch`; docs/watches.md, "Limits and
//! costs"): streams past `--max-watch-streams` are refused; a snapshot not read within
//! `--watch-snapshot-deadline` gives its slot back; a create from now on a member cut off is
//! refused alone; a start in the future vouches for nothing past the member's revision.

use std::time::Duration;

use latch_client::prefix_range;
use latch_client::proto::watch_client::WatchClient;
use latch_client::proto::watch_request::Request as Ask;
use latch_client::proto::watch_response::CancelReason;
use latch_client::proto::{WatchCreateRequest, WatchProgressRequest, WatchRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::harness::{eventually, Cluster};
use crate::watches::{responses_until, total, PREFIX};

/// A raw watch stream to `addr`, its HTTP/2 windows `window` bytes when given (a client that
/// reads nothing then takes no more than that), fed by the returned sender.
async fn open_stream(
    addr: &str,
    window: Option<u32>,
) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<latch_client::proto::WatchResponse>), tonic::Status>
{
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    let stream = WatchClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .watch(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, stream))
}

/// A create of watch `watch_id` on `key`/`range_end` from `start_revision`, changed by `f`.
fn create_of(
    watch_id: i64,
    (key, range_end): (Vec<u8>, Vec<u8>),
    start_revision: i64,
    f: impl FnOnce(&mut WatchCreateRequest),
) -> WatchRequest {
    let mut c = WatchCreateRequest { key, range_end, watch_id, start_revision, ..Default::default() };
    f(&mut c);
    WatchRequest { request: Some(Ask::Create(c)) }
}

fn progress_request() -> WatchRequest {
    WatchRequest { request: Some(Ask::Progress(WatchProgressRequest {})) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_past_max_watch_streams_are_refused_naming_the_flag_until_one_ends() {
    let c = Cluster::start(1, &["--max-watch-streams", "2"]).await;
    let addr = c.member(1).client_addr.clone();
    let first = open_stream(&addr, None).await.expect("the first stream is served");
    let _second = open_stream(&addr, None).await.expect("the second stream is served");
    let Err(refused) = open_stream(&addr, None).await else { panic!("a third stream should be refused") };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("2 watch streams") && refused.message().contains("--max-watch-streams")
    );
    drop(first);
    eventually("a stream to be served once another ended", Duration::from_secs(10), || async {
        open_stream(&addr, None).await.map_err(|e| e.to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_not_read_within_its_deadline_is_canceled_and_frees_the_members_only_snapshot_slot() {
    use latch_client::proto::watch_create_request::OnCompacted;
    let c = Cluster::start(1, &["--max-watch-snapshots", "1", "--watch-snapshot-deadline", "4s"]).await;
    let client = c.client().await;
    let addr = c.member(1).client_addr.clone();
    // 16 values of 1 MB: 8 snapshot pages of 2 MB, more than a stream queues (4 MiB) and its
    // client's HTTP/2 windows take.
    let big = vec![b'x'; 1_000_000];
    for i in 0..16 {
        client.put(format!("{PREFIX}big/{i:02}"), big.clone()).await.unwrap();
    }
    let head = client.put(format!("{PREFIX}small"), "s").await.unwrap().header.unwrap().revision;
    client.compact(head).await.unwrap();
    let snapshot = |c: &mut WatchCreateRequest| c.on_compacted = OnCompacted::Snapshot as i32;

    let (a_tx, mut a) = open_stream(&addr, Some(64 * 1024)).await.unwrap();
    a_tx.send(create_of(1, prefix_range(format!("{PREFIX}big/").as_bytes()), 1, snapshot)).await.unwrap();
    eventually("the unread snapshot to take the slot", Duration::from_secs(10), || async {
        let n = total(&c, "latch_watch_snapshots").await;
        if n == 1.0 {
            Ok(())
        } else {
            Err(format!("{n} snapshots in progress"))
        }
    })
    .await;

    let small = (format!("{PREFIX}small").into_bytes(), Vec::new());
    let (b_tx, mut b) = open_stream(&addr, None).await.unwrap();
    b_tx.send(create_of(1, prefix_range(PREFIX.as_bytes()), 0, |_| {})).await.unwrap();
    b_tx.send(create_of(2, small.clone(), 1, snapshot)).await.unwrap();
    let refused = responses_until(&mut b, |r| r.watch_id == 2).await.pop().unwrap();
    assert!(refused.created && refused.canceled, "the create is refused: {refused:?}");
    assert_eq!(refused.cancel_reason, CancelReason::ResourceExhausted as i32, "{refused:?}");
    assert!(refused.cancel_message.contains("--max-watch-snapshots"), "{}", refused.cancel_message);
    let after = client.put(format!("{PREFIX}other"), "o").await.unwrap().header.unwrap().revision;
    let got = responses_until(&mut b, |r| r.watch_id == 1 && !r.events.is_empty()).await;
    assert_eq!(got.last().unwrap().header.unwrap().revision, after, "the stream's other watch goes on");

    eventually("the unread snapshot to be given up at its deadline", Duration::from_secs(20), || async {
        let n = total(&c, "latch_watch_snapshots").await;
        if n == 0.0 {
            Ok(())
        } else {
            Err(format!("{n} snapshots in progress"))
        }
    })
    .await;
    b_tx.send(create_of(3, small, 1, snapshot)).await.unwrap();
    let got = responses_until(&mut b, |r| r.watch_id == 3 && r.snapshot).await;
    let page = got.last().unwrap();
    assert!(!page.fragment, "one page");
    assert_eq!(page.header.unwrap().revision, after, "the slot is free again: the snapshot is served");
    assert_eq!(page.snapshot_kvs.iter().map(|kv| kv.value.clone()).collect::<Vec<_>>(), [b"s".to_vec()]);

    // The client that did not read gets what was queued for it, then the cancel: it resumes.
    let a_got = responses_until(&mut a, |r| r.canceled).await;
    let pages: Vec<_> = a_got.iter().filter(|r| r.snapshot).collect();
    assert!(!pages.is_empty() && pages.len() < 8, "some of the 8 pages went out: {}", pages.len());
    assert!(pages.iter().all(|p| p.fragment), "none of them the last");
    let cancel = a_got.last().unwrap();
    assert_eq!(cancel.cancel_reason, CancelReason::Slow as i32, "{cancel:?}");
    assert!(cancel.cancel_message.contains("--watch-snapshot-deadline"), "{}", cancel.cancel_message);
    assert_eq!(cancel.header.unwrap().revision, 0, "resume from revision 1, as asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_from_now_on_a_member_cut_off_is_refused_alone_and_the_stream_goes_on() {
    let c = Cluster::start(3, &["--fault-injection"]).await;
    let leader = c.leader().await;
    let cut = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != cut).collect();
    let writer = c.client_of_many(&others).await;
    let first = writer.put(format!("{PREFIX}a"), "1").await.unwrap().header.unwrap().revision;
    let (tx, mut stream) = open_stream(&c.member(cut).client_addr, None).await.unwrap();
    tx.send(create_of(1, prefix_range(PREFIX.as_bytes()), first, |_| {})).await.unwrap();
    let got = responses_until(&mut stream, |r| r.watch_id == 1 && !r.events.is_empty()).await;
    assert_eq!(got.last().unwrap().header.unwrap().revision, first, "watch 1 delivers revision {first}");

    c.isolate(cut).await;
    tx.send(create_of(2, prefix_range(PREFIX.as_bytes()), 0, |_| {})).await.unwrap();
    let refused = responses_until(&mut stream, |r| r.watch_id == 2).await.pop().unwrap();
    assert!(refused.created && refused.canceled, "the create from now is refused: {refused:?}");
    assert_eq!(refused.cancel_reason, CancelReason::Unavailable as i32, "{refused:?}");
    assert!(refused.cancel_message.contains("create it again"), "{}", refused.cancel_message);
    tx.send(progress_request()).await.unwrap();
    let progress = responses_until(&mut stream, |r| r.progress).await.pop().unwrap();
    assert_eq!(
        (progress.watch_id, progress.header.unwrap().revision),
        (-1, first),
        "the stream goes on, with watch 1 alone on it"
    );
    c.heal_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_starts_in_the_future_vouches_for_no_revision_past_the_members() {
    let c = Cluster::start(1, &["--watch-progress-interval", "1s"]).await;
    let client = c.client().await;
    let head = client.put(format!("{PREFIX}a"), "1").await.unwrap().header.unwrap().revision;
    let (tx, mut stream) = open_stream(&c.member(1).client_addr, None).await.unwrap();
    tx.send(create_of(1, prefix_range(PREFIX.as_bytes()), head + 100, |w| w.progress_notify = true))
        .await
        .unwrap();
    let created = responses_until(&mut stream, |r| r.created).await.pop().unwrap();
    assert!(!created.canceled, "{created:?}");
    assert_eq!(created.header.unwrap().revision, head, "created: the member's revision, not {}", head + 99);
    tx.send(progress_request()).await.unwrap();
    let asked = responses_until(&mut stream, |r| r.progress && r.watch_id == -1).await.pop().unwrap();
    assert_eq!(asked.header.unwrap().revision, head, "the progress asked for");
    let idle = responses_until(&mut stream, |r| r.progress && r.watch_id == 1).await.pop().unwrap();
    assert_eq!(idle.header.unwrap().revision, head, "the idle watch's own progress");
}
