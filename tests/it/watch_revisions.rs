//! A revision larger than a member holds at once (`api::watch::recent::OVERSIZED_REVISION_BYTES`,
//! 8 MiB of history rows): a delete of a range of large values. Every watch — live from the
//! window, catching up from the history, with and without previous values — gets all of its
//! events, as fragments of that one revision, the last unmarked; and what follows it.

use futures::StreamExt;
use latch_client::proto::event::EventType;
use latch_client::proto::watch_client::WatchClient;
use latch_client::proto::watch_request::Request as Ask;
use latch_client::proto::{WatchCreateRequest, WatchRequest};
use latch_client::{prefix_range, Client, WatchOptions, WatchUpdate};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::harness::{sample, Cluster};

const PREFIX: &str = "big/";
/// Keys written, each with a value of [`VALUE_BYTES`]: their delete's history rows hold every
/// previous value, 9 MiB in all.
const KEYS: usize = 90;
const VALUE_BYTES: usize = 100 * 1024;

/// The next update that carries events, skipping `Started` and progress.
async fn next_events(
    watch: &mut (impl futures::Stream<Item = Result<WatchUpdate, latch_client::Error>> + Unpin),
    what: &str,
) -> (i64, Vec<latch_client::Event>) {
    loop {
        let update = tokio::time::timeout(std::time::Duration::from_secs(30), watch.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no update within 30 s"))
            .unwrap_or_else(|| panic!("{what}: the watch ended"))
            .unwrap_or_else(|e| panic!("{what}: the watch failed: {e}"));
        match update {
            WatchUpdate::Events { revision, events } => return (revision, events),
            WatchUpdate::Started { .. } | WatchUpdate::Progress { .. } => {}
            WatchUpdate::Snapshot { .. } => panic!("{what}: a snapshot, where nothing was compacted"),
        }
    }
}

/// Puts the [`KEYS`] large keys, one revision each; the first one's revision.
async fn write_large_keys(client: &Client) -> i64 {
    let value = vec![b'v'; VALUE_BYTES];
    let first =
        client.put(format!("{PREFIX}{:03}", 0), value.clone()).await.unwrap().header.unwrap().revision;
    for i in 1..KEYS {
        client.put(format!("{PREFIX}{i:03}"), value.clone()).await.unwrap();
    }
    first
}

/// A raw Watch stream to member 1 carrying the requests of `rx`, taking responses of any size.
async fn raw_stream(
    c: &Cluster,
    rx: mpsc::Receiver<WatchRequest>,
) -> tonic::Streaming<latch_client::proto::WatchResponse> {
    WatchClient::connect(format!("http://{}", c.member(1).client_addr))
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX)
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner()
}

/// The bytes the member's window of recent revisions holds (it has read every revision
/// applied: the test's watches received them first).
async fn window_bytes(c: &Cluster) -> f64 {
    let metrics = c.metrics_of(1).await.expect("metrics");
    sample(&metrics, "latch_watch_window_bytes").expect("the window's bytes are a metric")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_larger_than_a_member_holds_reaches_every_watch_whole_in_fragments() {
    let c = Cluster::start(1, &[]).await;
    let client: Client = c.client().await;
    let first = write_large_keys(&client).await;
    // Live watches, served from the member's window: with previous values, and without.
    let mut with_prev = client.watch(WatchOptions::prefix(PREFIX).prev_kv());
    let mut plain = client.watch(WatchOptions::prefix(PREFIX));
    // A raw stream, to see the fragments themselves.
    let (tx, rx) = mpsc::channel(4);
    let mut raw = raw_stream(&c, rx).await;
    let (key, range_end) = prefix_range(PREFIX.as_bytes());
    let create = WatchCreateRequest { key, range_end, watch_id: 1, prev_kv: true, ..Default::default() };
    tx.send(WatchRequest { request: Some(Ask::Create(create)) }).await.unwrap();
    let created = raw.message().await.unwrap().expect("the raw watch is created");
    assert!(created.created && !created.canceled, "{created:?}");
    // Both client watches are open (they open when first polled) before a put they both see.
    for (watch, what) in [(&mut with_prev, "with prev_kv"), (&mut plain, "plain")] {
        match tokio::time::timeout(std::time::Duration::from_secs(30), watch.next()).await {
            Ok(Some(Ok(WatchUpdate::Started { .. }))) => {}
            other => panic!("{what}: expected the watch to start, got {other:?}"),
        }
    }
    let marker = client.put(format!("{PREFIX}marker"), "m").await.unwrap().header.unwrap().revision;
    assert_eq!(next_events(&mut with_prev, "with prev_kv").await.0, marker);
    assert_eq!(next_events(&mut plain, "plain").await.0, marker);

    let window_before = window_bytes(&c).await;
    let deleted = client.delete_prefix(format!("{PREFIX}0")).await.unwrap();
    assert_eq!(deleted, KEYS as i64, "the delete removed every large key in one revision");
    let after = client.put(format!("{PREFIX}after"), "a").await.unwrap().header.unwrap().revision;
    let delete_revision = after - 1;

    let check = |what: &str, revision: i64, events: &[latch_client::Event], prev: bool| {
        assert_eq!(revision, delete_revision, "{what}: the delete's revision comes next");
        assert_eq!(events.len(), KEYS, "{what}: every one of the revision's {KEYS} events, once");
        for (i, e) in events.iter().enumerate() {
            let kv = e.kv.as_ref().expect("an event has its kv");
            assert_eq!(e.r#type, EventType::Delete as i32, "{what}: event {i} is a delete");
            assert_eq!(kv.key, format!("{PREFIX}{i:03}").into_bytes(), "{what}: event {i} in key order");
            let held = e.prev_kv.as_ref().map(|p| p.value.len());
            assert_eq!(held, prev.then_some(VALUE_BYTES), "{what}: event {i}'s previous value");
        }
    };
    let (revision, events) = next_events(&mut with_prev, "with prev_kv").await;
    check("live, prev_kv", revision, &events, true);
    assert_eq!(next_events(&mut with_prev, "with prev_kv").await.0, after, "then the put after it");
    let (revision, events) = next_events(&mut plain, "plain").await;
    check("live", revision, &events, false);
    assert_eq!(next_events(&mut plain, "plain").await.0, after);

    // The raw stream: the marker's put, then the delete as fragments of its revision, each over
    // no response bound, the last one unmarked; then the put after it.
    let mut fragments = Vec::new();
    loop {
        let r = raw.message().await.unwrap().expect("the raw stream goes on");
        let revision = r.header.unwrap().revision;
        if revision == marker {
            continue;
        }
        assert_eq!(revision, delete_revision, "no other revision between the fragments: {r:?}");
        fragments.push((r.fragment, r.events.len()));
        if !r.fragment {
            break;
        }
    }
    assert!(fragments.len() >= 9, "9 MiB of events with previous values come in fragments: {fragments:?}");
    assert_eq!(fragments.iter().map(|f| f.1).sum::<usize>(), KEYS, "every event once: {fragments:?}");
    let next = raw.message().await.unwrap().expect("the raw stream goes on");
    assert_eq!(next.header.unwrap().revision, after, "then the put after the delete");

    // The member's window never held the delete: it grew by the small puts around it, not by
    // the delete's 9 MiB of previous values.
    let window_after = window_bytes(&c).await;
    assert!(
        window_after - window_before < VALUE_BYTES as f64,
        "the window grew from {window_before} to {window_after} bytes: the oversized revision went into it whole"
    );

    // Catching up from the history, from the first put: every revision in order, the delete whole.
    let mut catch_up = client.watch(WatchOptions::prefix(PREFIX).prev_kv().from_revision(first));
    for i in 0..KEYS as i64 {
        let (revision, events) = next_events(&mut catch_up, "catching up").await;
        assert_eq!((revision, events.len()), (first + i, 1), "catching up: put {i}");
    }
    assert_eq!(next_events(&mut catch_up, "catching up").await.0, marker);
    let (revision, events) = next_events(&mut catch_up, "catching up").await;
    check("catching up", revision, &events, true);
    assert_eq!(next_events(&mut catch_up, "catching up").await.0, after);
}

/// Watches of one stream that take shared responses, selecting alike and starting together
/// behind the window: the member reads each step of the history once for all of them, and
/// the oversized revision's fragments once, so every response names the whole group — from
/// the first put, through the delete's fragments, to the put after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_group_behind_the_window_gets_the_history_and_an_oversized_revision_in_shared_responses() {
    // A window of 4 revisions: the group starts 90 revisions behind it.
    let c = Cluster::start(1, &["--watch-window-revisions", "4"]).await;
    let client: Client = c.client().await;
    let first = write_large_keys(&client).await;
    let deleted = client.delete_prefix(format!("{PREFIX}0")).await.unwrap();
    assert_eq!(deleted, KEYS as i64, "the delete removed every large key in one revision");
    let after = client.put(format!("{PREFIX}after"), "a").await.unwrap().header.unwrap().revision;
    let delete_revision = after - 1;

    // The three creates are queued before the stream opens, so they reach the member together
    // and it handles them before its first turn.
    let (tx, rx) = mpsc::channel(4);
    let (key, range_end) = prefix_range(PREFIX.as_bytes());
    for watch_id in 1..=3 {
        let create = WatchCreateRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            watch_id,
            start_revision: first,
            prev_kv: true,
            shared_responses: true,
            ..Default::default()
        };
        tx.send(WatchRequest { request: Some(Ask::Create(create)) }).await.unwrap();
    }
    let mut raw = raw_stream(&c, rx).await;
    // Per revision: its number, its events, and the responses that carried them.
    let mut revisions: Vec<(i64, usize, usize)> = Vec::new();
    let mut responses = 0;
    loop {
        let r = tokio::time::timeout(std::time::Duration::from_secs(30), raw.message())
            .await
            .expect("a response within 30 s")
            .unwrap()
            .expect("the stream goes on");
        assert!(!r.canceled, "no watch of the group ends: {}", r.cancel_message);
        if r.created || r.events.is_empty() {
            continue;
        }
        responses += 1;
        let revision = r.header.unwrap().revision;
        assert_eq!(
            (r.watch_id, r.also_watch_ids.as_slice()),
            (1, [2, 3].as_slice()),
            "revision {revision}: a response for the whole group"
        );
        match revisions.last_mut() {
            Some((at, events, _)) if *at == revision => *events += r.events.len(),
            _ => revisions.push((revision, r.events.len(), 0)),
        }
        if let Some(last) = revisions.last_mut() {
            last.2 += 1;
        }
        if revision == after && !r.fragment {
            break;
        }
    }
    let puts: Vec<(i64, usize)> = (0..KEYS as i64).map(|i| (first + i, 1)).collect();
    let got_puts: Vec<(i64, usize)> = revisions[..KEYS].iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got_puts, puts, "catching up: each put once, in order, one response each");
    let (revision, events, parts) = revisions[KEYS];
    assert_eq!((revision, events), (delete_revision, KEYS), "then the delete, every event once");
    assert!(parts >= 9, "9 MiB of events with previous values come in fragments, got {parts}");
    assert_eq!(
        revisions[KEYS + 1..].iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![after],
        "then the put after it"
    );
    assert_eq!(responses, KEYS + parts + 1, "no response for one watch alone");
}
