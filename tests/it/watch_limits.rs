//! A member's limits on watches, on real processes (`api::watch`, `api::watch::outbox`;
//! docs/watches.md, "Limits and costs"): streams past `--max-watch-streams` are refused, and
//! creates past `--max-watches` over every stream; a
//! snapshot not read within `--watch-snapshot-deadline` gives its slot back; a create from now
//! on a member cut off is refused alone; a start in the future vouches for nothing past the
//! member's revision; a client that reads nothing is cut at `--watch-stall-deadline` and gives
//! its queue back while other streams go on; a stream cut for `--max-watch-queued-bytes` is
//! resumed by the Rust client with nothing missed; watches the caller does not read never hold
//! up the Rust client's other calls (they are on a connection of their own).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use latch_client::proto::watch_client::WatchClient;
use latch_client::proto::watch_request::Request as Ask;
use latch_client::proto::watch_response::CancelReason;
use latch_client::proto::{WatchCreateRequest, WatchProgressRequest, WatchRequest};
use latch_client::{prefix_range, WatchOptions, WatchUpdate};
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
async fn creates_past_max_watches_over_every_stream_are_refused_alone_until_a_watch_goes() {
    let c = Cluster::start(1, &["--max-watches", "3"]).await;
    let client = c.client().await;
    let addr = c.member(1).client_addr.clone();
    let keys = prefix_range(PREFIX.as_bytes());
    let (a_tx, mut a) = open_stream(&addr, None).await.unwrap();
    for id in [1, 2] {
        a_tx.send(create_of(id, keys.clone(), 0, |_| {})).await.unwrap();
        let created = responses_until(&mut a, |r| r.watch_id == id).await.pop().unwrap();
        assert!(created.created && !created.canceled, "watch {id} of 3 is served: {created:?}");
    }
    let (b_tx, mut b) = open_stream(&addr, None).await.unwrap();
    b_tx.send(create_of(1, keys.clone(), 0, |_| {})).await.unwrap();
    assert!(!responses_until(&mut b, |r| r.watch_id == 1).await.pop().unwrap().canceled, "the third");
    b_tx.send(create_of(2, keys.clone(), 0, |_| {})).await.unwrap();
    let refused = responses_until(&mut b, |r| r.watch_id == 2).await.pop().unwrap();
    assert!(refused.created && refused.canceled, "a fourth, on another stream, is refused: {refused:?}");
    assert_eq!(refused.cancel_reason, CancelReason::ResourceExhausted as i32, "{refused:?}");
    assert!(
        refused.cancel_message.contains("3 watches") && refused.cancel_message.contains("--max-watches"),
        "the refusal names the flag: {}",
        refused.cancel_message
    );
    let put = client.put(format!("{PREFIX}k"), "v").await.unwrap().header.unwrap().revision;
    let got = responses_until(&mut b, |r| r.watch_id == 1 && !r.events.is_empty()).await;
    assert_eq!(got.last().unwrap().header.unwrap().revision, put, "the stream's served watch goes on");

    let cancel = latch_client::proto::WatchCancelRequest { watch_id: 1 };
    a_tx.send(WatchRequest { request: Some(Ask::Cancel(cancel)) }).await.unwrap();
    let gone = responses_until(&mut a, |r| r.watch_id == 1 && r.canceled).await.pop().unwrap();
    assert!(gone.canceled, "the first stream's watch 1 is canceled");
    b_tx.send(create_of(3, keys, 0, |_| {})).await.unwrap();
    let served = responses_until(&mut b, |r| r.watch_id == 3).await.pop().unwrap();
    assert!(served.created && !served.canceled, "its place serves a create on the other stream: {served:?}");
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
    metric_until(&c, "the unread snapshot to take the slot", "latch_watch_snapshots", |n| n == 1.0).await;

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

    metric_until(&c, "the unread snapshot to be given up at its deadline", "latch_watch_snapshots", |n| {
        n == 0.0
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_reports_no_progress_past_the_members_revision_for_a_watch_that_starts_in_the_future()
{
    let c = Cluster::start(1, &["--watch-progress-interval", "1s"]).await;
    let client = c.client().await;
    let head = client.put(format!("{PREFIX}a"), "1").await.unwrap().header.unwrap().revision;
    let mut watch =
        client.watch(WatchOptions::key(format!("{PREFIX}a")).from_revision(head + 100).progress_notify());
    assert_eq!(
        next_update(&mut watch).await,
        WatchUpdate::Started { revision: head },
        "started at the member's revision"
    );
    // The member's idle progress (every second) vouches for its own revision; so must the client.
    assert_eq!(
        next_update(&mut watch).await,
        WatchUpdate::Progress { revision: head },
        "progress names the member's revision {head}, not the watch's start less one ({})",
        head + 99
    );
    // Once the cluster reaches the start, the watch's events come, and progress follows them.
    for i in head + 1..head + 100 {
        client.put(format!("{PREFIX}b"), i.to_string()).await.unwrap();
    }
    let start = client.put(format!("{PREFIX}a"), "2").await.unwrap().header.unwrap().revision;
    assert_eq!(start, head + 100, "the puts brought the cluster to the watch's start");
    loop {
        match next_update(&mut watch).await {
            WatchUpdate::Progress { revision } => {
                assert!(revision <= head + 99, "progress {revision} before revision {start}'s events came")
            }
            WatchUpdate::Events { revision, events } => {
                assert_eq!((revision, events.len()), (start, 1), "the watch's first event is at its start");
                break;
            }
            other => panic!("expected progress or revision {start}'s events, got {other:?}"),
        }
    }
    match next_update(&mut watch).await {
        WatchUpdate::Progress { revision } => {
            assert_eq!(revision, start, "after revision {start} was delivered, progress names it")
        }
        other => panic!("expected the idle watch's progress, got {other:?}"),
    }
}

/// The watch's next update (within 30 s).
async fn next_update(
    watch: &mut (impl futures::Stream<Item = Result<WatchUpdate, latch_client::Error>> + Unpin),
) -> WatchUpdate {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("an update within 30 s")
        .expect("the watch goes on")
        .expect("the watch has no error")
}

/// The sum of `series` over the live members of `c`, once `ok` holds of it (within 30 s).
async fn metric_until(c: &Cluster, what: &str, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    eventually(what, Duration::from_secs(30), || async {
        let n = total(c, series).await;
        if ok(n) {
            Ok(n)
        } else {
            Err(format!("{series} = {n}"))
        }
    })
    .await
}

/// Waits (at most `timeout`) until the revisions in `read` are exactly `written`; a watch that
/// ended (`error` set) fails at once: it should have resumed.
async fn received_all(
    read: &Mutex<Vec<i64>>,
    written: &[i64],
    error: Option<&Mutex<Option<String>>>,
    what: &str,
    timeout: Duration,
) {
    eventually(what, timeout, || async {
        if let Some(e) = error.and_then(|e| e.lock().unwrap().clone()) {
            panic!("the watch should resume, not end: {e}");
        }
        let got = read.lock().unwrap().clone();
        if got == written {
            Ok(())
        } else {
            Err(format!("{} of {} revisions, the last {:?}", got.len(), written.len(), got.last()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_reads_nothing_is_cut_at_the_stall_deadline_while_another_stream_goes_on() {
    let c = Cluster::start(1, &["--watch-stall-deadline", "2s"]).await;
    let client = c.client().await;
    let addr = c.member(1).client_addr.clone();
    let watched = prefix_range(PREFIX.as_bytes());

    // One client reads nothing (its HTTP/2 windows hold 1 KiB); another reads all along.
    let (silent_tx, mut silent) = open_stream(&addr, Some(1024)).await.unwrap();
    silent_tx.send(create_of(1, watched.clone(), 0, |_| {})).await.unwrap();
    let created = responses_until(&mut silent, |r| r.created).await.pop().unwrap();
    assert!(!created.canceled, "the silent watch is created: {created:?}");
    let (reader_tx, mut reader) = open_stream(&addr, None).await.unwrap();
    reader_tx.send(create_of(1, watched, 0, |_| {})).await.unwrap();
    let created = responses_until(&mut reader, |r| r.created).await.pop().unwrap();
    assert!(!created.canceled, "the reading watch is created: {created:?}");
    let read = Arc::new(Mutex::new(Vec::new()));
    let reading = {
        let read = read.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = reader.message().await {
                if !r.events.is_empty() {
                    read.lock().unwrap().push(r.header.unwrap().revision);
                }
            }
        })
    };

    // 100 revisions: more than the silent stream's queue holds (64 responses).
    let mut written = Vec::new();
    for i in 0..100 {
        let put = client.put(format!("{PREFIX}{i:03}"), vec![b'v'; 1024]).await.unwrap();
        written.push(put.header.unwrap().revision);
    }
    metric_until(
        &c,
        "the silent stream to be cut as stalled",
        "latch_watch_streams_cut_total{reason=\"stalled\"}",
        |n| n == 1.0,
    )
    .await;
    metric_until(&c, "the silent stream's queue to be given back", "latch_watch_queued_bytes", |n| n == 0.0)
        .await;
    metric_until(&c, "the reading stream alone to be served", "latch_watch_streams", |n| n == 1.0).await;

    let after = client.put(format!("{PREFIX}after"), "a").await.unwrap().header.unwrap().revision;
    written.push(after);
    received_all(
        &read,
        &written,
        None,
        "the reading stream to receive every revision",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        total(&c, "latch_watch_streams_cut_total{reason=\"stalled\"}").await,
        1.0,
        "the reading stream was never cut"
    );

    // The silent client, reading at last, gets what HTTP/2 held for it, then the end: its
    // queue was dropped.
    let mut got = Vec::new();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), silent.message()).await {
            Ok(Ok(Some(r))) => got.push(r.header.unwrap().revision),
            Ok(Ok(None)) => panic!("the silent stream should end with a status, not cleanly"),
            Ok(Err(status)) => break status,
            Err(_) => {
                panic!("the silent stream should end at once when read; it got {} responses", got.len())
            }
        }
    };
    assert_eq!(end.code(), tonic::Code::Unavailable, "the stalled stream ends UNAVAILABLE: {end:?}");
    assert!(end.message().contains("--watch-stall-deadline"), "the end names the flag: {}", end.message());
    assert!(end.message().contains("resume"), "the end says to resume the watches: {}", end.message());
    assert!(
        got.len() < 64,
        "the silent client gets no more than HTTP/2 held, not its dropped queue: {}",
        got.len()
    );
    assert_eq!(got, written[..got.len()], "what it got is the first revisions, in order");
    reading.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cut_for_the_members_queued_bytes_is_resumed_by_the_client_with_nothing_missed() {
    let c = Cluster::start(1, &["--max-watch-queued-bytes", "100000", "--watch-stall-deadline", "8s"]).await;
    let client = c.client().await;
    let addr = c.member(1).client_addr.clone();

    // A client that reads nothing holds its whole queue (64 responses of about 1 KiB) of the
    // member's 100,000 bytes.
    let (silent_tx, mut silent) = open_stream(&addr, Some(1024)).await.unwrap();
    silent_tx.send(create_of(1, prefix_range(PREFIX.as_bytes()), 0, |_| {})).await.unwrap();
    responses_until(&mut silent, |r| r.created).await;
    let updates = client.watch(WatchOptions::prefix(PREFIX));
    let (read, error) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(None)));
    let (r, e) = (read.clone(), error.clone());
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let reading = tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        tokio::pin!(updates);
        while let Some(update) = updates.next().await {
            match update {
                Ok(WatchUpdate::Started { .. }) => {
                    if let Some(tx) = started_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(WatchUpdate::Events { revision, .. }) => r.lock().unwrap().push(revision),
                Ok(other) => *e.lock().unwrap() = Some(format!("unexpected {other:?}")),
                Err(err) => {
                    *e.lock().unwrap() = Some(err.to_string());
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), started).await.unwrap().unwrap();

    let mut written = Vec::new();
    for i in 0..70 {
        let put = client.put(format!("{PREFIX}{i:03}"), vec![b'v'; 1024]).await.unwrap();
        written.push(put.header.unwrap().revision);
    }
    metric_until(&c, "the silent stream to fill its queue", "latch_watch_queued_bytes", |n| n >= 60_000.0)
        .await;
    // 40 KB more does not fit beside it: the reading client's stream is cut, and resumes.
    let big = client.put(format!("{PREFIX}big"), vec![b'b'; 40_000]).await.unwrap();
    written.push(big.header.unwrap().revision);
    received_all(
        &read,
        &written,
        Some(&error),
        "the reading client to receive every revision",
        Duration::from_secs(30),
    )
    .await;
    let cut = total(&c, "latch_watch_streams_cut_total{reason=\"queued_bytes\"}").await;
    assert!(
        cut >= 1.0,
        "the reading client's stream was cut for the member's queued bytes at least once: {cut}"
    );
    assert_eq!(
        total(&c, "latch_watch_streams_cut_total{reason=\"stalled\"}").await,
        1.0,
        "the silent stream was cut at its stall deadline, which let the big revision through"
    );
    reading.abort();
}

/// A stream catching up from the history holds the step it read (about 1 MiB of rows, those
/// its watch selects, encoded) while it waits on its client. That step is held inside
/// `--max-watch-queued-bytes`, not beside it: a second silent stream finds no room for its own
/// step and is cut, where before each silent stream held a step outside the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_catching_up_holds_its_step_of_history_inside_the_members_queued_bytes() {
    // A window of one revision: a watch from revision 1 catches up from the history.
    let c = Cluster::start(
        1,
        &[
            "--watch-window-revisions",
            "1",
            "--max-watch-queued-bytes",
            "2000000",
            "--watch-stall-deadline",
            "120s",
        ],
    )
    .await;
    let client = c.client().await;
    let addr = c.member(1).client_addr.clone();

    // 200 revisions of 1 KiB are more than a silent client takes (its queue holds 64
    // responses, and tonic and HTTP/2 take about 60 more); after them, 10 of 400 KB. The first
    // step of history (1 MiB of rows or more) is the 200 and the first large ones.
    let small = format!("{PREFIX}small");
    let first = client.put(small.as_str(), vec![b's'; 1024]).await.unwrap().header.unwrap().revision;
    for _ in 1..200 {
        client.put(small.as_str(), vec![b's'; 1024]).await.unwrap();
    }
    for i in 0..10 {
        client.put(format!("{PREFIX}large/{i}"), vec![b'l'; 400_000]).await.unwrap();
    }
    let watched = prefix_range(PREFIX.as_bytes());

    let (a_tx, mut a) = open_stream(&addr, Some(1024)).await.unwrap();
    a_tx.send(create_of(1, watched.clone(), first, |_| {})).await.unwrap();
    let created = responses_until(&mut a, |r| r.created).await.pop().unwrap();
    assert!(!created.canceled, "the first silent watch is created: {created:?}");
    // Its queue holds 64 responses of 1 KiB; the step it waits on, two or more of 400 KB too.
    metric_until(
        &c,
        "the first silent stream's queue and step to be counted",
        "latch_watch_queued_bytes",
        |n| n >= 1_200_000.0,
    )
    .await;
    assert_eq!(
        total(&c, "latch_watch_streams_cut_total{reason=\"queued_bytes\"}").await,
        0.0,
        "one silent stream alone fits the member's bytes"
    );

    // A second one: its first step (as large) does not fit beside the first in the member's 2 MB.
    let (b_tx, mut b) = open_stream(&addr, None).await.unwrap();
    b_tx.send(create_of(1, watched, first, |_| {})).await.unwrap();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), b.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the second stream should end with a status, not cleanly"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the second stream should be cut for the member's bytes within 30 s"),
        }
    };
    assert_eq!(end.code(), tonic::Code::ResourceExhausted, "cut for the member's bytes: {end:?}");
    assert!(end.message().contains("--max-watch-queued-bytes"), "the end names the flag: {}", end.message());
    assert_eq!(
        total(&c, "latch_watch_streams_cut_total{reason=\"queued_bytes\"}").await,
        1.0,
        "the second stream was cut for the member's queued bytes"
    );
    drop(a_tx);
}

/// A stream whose queue fills while it serves a turn of the window lets go of the rest of the
/// turn while its client makes room: it does not keep revisions the window has dropped since.
/// So a silent watch 500 revisions behind, once the window moves past them, is canceled SLOW
/// right after what its queue (and HTTP/2) held; it is not sent the rest of its turn first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_queue_fills_keeps_none_of_its_turn_of_the_window_while_its_client_makes_room() {
    let c = Cluster::start(1, &["--watch-window-revisions", "1000", "--watch-stall-deadline", "120s"]).await;
    let client = c.client().await;
    let addr = c.member(1).client_addr.clone();
    let put = |i: usize| client.put(format!("{PREFIX}{i:05}"), vec![b'v'; 1024]);

    // 500 revisions in the window: a watch from the first has them in its first turn, more
    // than its client takes (a queue of 64 responses, and what tonic and HTTP/2 take).
    let first = put(0).await.unwrap().header.unwrap().revision;
    for i in 1..500 {
        put(i).await.unwrap();
    }
    let (a_tx, mut a) = open_stream(&addr, Some(1024)).await.unwrap();
    a_tx.send(create_of(1, prefix_range(PREFIX.as_bytes()), first, |_| {})).await.unwrap();
    let created = responses_until(&mut a, |r| r.created).await.pop().unwrap();
    assert!(!created.canceled, "the silent watch is created: {created:?}");
    metric_until(&c, "the silent stream's queue to fill", "latch_watch_queued_bytes", |n| n >= 60_000.0)
        .await;

    // 1,500 more: the window (1,000 revisions) moves past the 500.
    for i in 500..2000 {
        put(i).await.unwrap();
    }
    let got = responses_until(&mut a, |r| r.canceled).await;
    let cancel = got.last().unwrap();
    assert_eq!(
        cancel.cancel_reason,
        CancelReason::Slow as i32,
        "the watch fell behind the window: {cancel:?}"
    );
    let revisions: Vec<i64> =
        got.iter().filter(|r| !r.events.is_empty()).map(|r| r.header.unwrap().revision).collect();
    assert_eq!(
        revisions,
        (first..first + revisions.len() as i64).collect::<Vec<_>>(),
        "the revisions it got are the first ones, in order"
    );
    assert!(
        revisions.len() < 300,
        "it got what its queue and HTTP/2 held, not the rest of its turn of 500: {}",
        revisions.len()
    );
    assert_eq!(
        cancel.header.unwrap().revision,
        first + revisions.len() as i64 - 1,
        "it resumes right after the last revision it got"
    );
    drop(a_tx);
}

/// A stream whose queue is nearly full waits for room only for what its watches select:
/// revisions it does not watch pass it by, however large, so other keys' writes do not get it
/// cut as stalled, and its client, reading late, gets every revision it watches and the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_a_nearly_full_queue_is_not_held_up_by_revisions_it_does_not_watch() {
    let c = Cluster::start(1, &["--watch-stall-deadline", "2s"]).await;
    let client = c.client().await;
    let addr = c.member(1).client_addr.clone();
    let watched = format!("{PREFIX}watched/");

    let (a_tx, mut a) = open_stream(&addr, Some(1024)).await.unwrap();
    a_tx.send(create_of(1, prefix_range(watched.as_bytes()), 0, |_| {})).await.unwrap();
    responses_until(&mut a, |r| r.created).await;
    // 36 watched revisions of 100 KB: all of them fit in its queue (64 responses, 4 MiB), which
    // then has less than 1 MB of room.
    let mut written = Vec::new();
    for i in 0..36 {
        let put = client.put(format!("{watched}{i:03}"), vec![b'w'; 100_000]).await.unwrap();
        written.push(put.header.unwrap().revision);
    }
    metric_until(&c, "the silent stream's queue to fill", "latch_watch_queued_bytes", |n| n >= 3_300_000.0)
        .await;
    // Revisions of 1 MB it does not watch, then twice the stall deadline: a stream that waited
    // for room for them would be cut as stalled meanwhile.
    for i in 0..5 {
        client.put(format!("{PREFIX}other/{i}"), vec![b'o'; 1_000_000]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        total(&c, "latch_watch_streams_cut_total{reason=\"stalled\"}").await,
        0.0,
        "the stream had nothing to wait for room for"
    );
    let mut got = Vec::new();
    while got.len() < written.len() {
        let r = tokio::time::timeout(Duration::from_secs(10), a.message())
            .await
            .expect("a response within 10 s")
            .expect("the stream goes on, not cut")
            .expect("the stream is open");
        if !r.events.is_empty() {
            got.push(r.header.unwrap().revision);
        }
    }
    assert_eq!(got, written, "every watched revision, in order");
    let next = client.put(format!("{watched}next"), "n").await.unwrap().header.unwrap().revision;
    let more = responses_until(&mut a, |r| !r.events.is_empty()).await;
    assert_eq!(more.last().unwrap().header.unwrap().revision, next, "and the next one");
    drop(a_tx);
}

/// Watches the caller stops reading hold the HTTP/2 window of the connection they are on; the
/// Rust client opens them on a connection of their own per member, with the largest connection
/// window, so its other calls — puts, a session's keepalives — and its other watches go on. (On
/// a connection with hyper's 5 MiB window, three unread watches of 2 MiB stream windows fill
/// it, and every other answer on it waits behind them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_a_caller_does_not_read_never_hold_up_the_clients_other_calls() {
    let c = Cluster::start(1, &[]).await;
    let client = c.client().await;
    let writer = c.client().await;
    let mut unread = Vec::new();
    for _ in 0..3 {
        let mut watch = client.watch(WatchOptions::prefix(PREFIX));
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(Ok(WatchUpdate::Started { .. }))) => {}
            other => panic!("expected the watch to start, got {other:?}"),
        }
        unread.push(watch);
    }
    // A watch of the same client that is read (its service cache, say), on another prefix.
    let mut read = client.watch(WatchOptions::prefix("elsewhere/"));
    match tokio::time::timeout(Duration::from_secs(10), read.next()).await {
        Ok(Some(Ok(WatchUpdate::Started { .. }))) => {}
        other => panic!("expected the read watch to start, got {other:?}"),
    }
    // 8 MiB of events for each watch, none of it read; the member sends each as much as its
    // windows take (2 MiB a stream).
    let value = vec![b'v'; 256 * 1024];
    for i in 0..32 {
        writer.put(format!("{PREFIX}{i}"), value.clone()).await.unwrap();
    }
    metric_until(
        &c,
        "the member to send the unread watches what their windows take",
        "latch_watch_events_sent_total",
        |n| n >= 60.0,
    )
    .await;
    let put = tokio::time::timeout(Duration::from_secs(5), client.put("elsewhere/x", "x")).await;
    assert!(
        matches!(put, Ok(Ok(_))),
        "the client's put should be answered while its watches go unread: {put:?}"
    );
    let event = tokio::time::timeout(Duration::from_secs(5), read.next()).await;
    assert!(
        matches!(event, Ok(Some(Ok(WatchUpdate::Events { .. })))),
        "the client's watch that is read should get its event while the others go unread: {event:?}"
    );
    drop(unread);
}
