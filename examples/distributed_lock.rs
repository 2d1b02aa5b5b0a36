//! Two workers and one lock, and a resource that fences them: what makes Latch's locks safe
//! where a lock alone is not (a paused ex-holder wakes up believing it still holds the lock).
//!
//! Worker A takes the lock and then stalls — it stops keeping its session alive, as a process
//! in a long GC pause or SIGSTOPped would. Its session expires, the lock-delay passes, and
//! worker B is granted the lock with a larger fencing token. A wakes up and writes with its old
//! token: the resource, which remembers the largest token it accepted, rejects it. Latch can
//! check the token too (`CheckSequencer`), and fence its own keys with it (a txn compare).
//!
//! Start a server (`cargo run --release -- server --dev`), then `cargo run --example distributed_lock`.

use std::time::Duration;

use latch_client::{Client, Compare, LockOptions, Op, SessionOptions, Txn};

/// A downstream resource (a file store, a database) that accepts a write only with a fencing
/// token at least as large as every one it accepted before.
#[derive(Default)]
struct Resource {
    largest_token: u64,
    contents: Vec<String>,
}

impl Resource {
    fn write(&mut self, token: u64, what: &str) -> Result<(), String> {
        if token < self.largest_token {
            return Err(format!("token {token} is stale: {} was already used", self.largest_token));
        }
        self.largest_token = token;
        self.contents.push(what.to_string());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), latch_client::Error> {
    let endpoints = std::env::var("LATCH_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7379".into());
    let client = Client::connect(endpoints.split(',')).await?;
    let mut resource = Resource::default();
    let lock = "example/report-writer";
    // A short lock-delay, so the example does not wait the default 5 s.
    let options = LockOptions::exclusive().lock_delay(Duration::from_millis(500));

    // Worker A: a session nobody keeps alive once the lock is taken (A will "stall").
    let (a_session, _) = client.create_session(Duration::from_secs(1), "worker A").await?;
    let a =
        client.acquire(&a_session, lock, options).await?.expect("an acquire that waits forever is granted");
    println!("A holds {lock} with fencing token {}", a.generation);
    resource.write(a.generation, "A: part 1").expect("A's first write is accepted");

    // Worker B: a session kept alive in the background; it waits for the lock.
    let b_session = client.session(SessionOptions::new(Duration::from_secs(5)).name("worker B")).await?;
    println!("A stalls; B waits for the lock…");
    let waited = tokio::time::Instant::now();
    let b = b_session.lock(lock, options).await?.expect("B waits as long as it takes");
    println!(
        "B holds {lock} with fencing token {} after {:.1?} (A's TTL, then the lock-delay)",
        b.generation(),
        waited.elapsed()
    );
    resource.write(b.generation(), "B: the whole report").expect("B's write is accepted");

    // A wakes up, still believing it holds the lock.
    match resource.write(a.generation, "A: part 2") {
        Ok(()) => panic!("the resource accepted a stale token"),
        Err(why) => println!("the resource rejects A: {why}"),
    }
    let check = client.check_sequencer(&a.token).await?;
    println!("CheckSequencer(A): valid={} ({})", check.valid, check.reason);
    // Writes inside Latch can be fenced the same way.
    let fenced =
        Txn::new().when([Compare::sequencer(a.token.clone())]).and_then([Op::put("example/report", "A")]);
    println!("A's fenced txn succeeded: {}", client.txn(fenced).await?.succeeded);
    let fenced = Txn::new().when([Compare::sequencer(b.token())]).and_then([Op::put("example/report", "B")]);
    println!("B's fenced txn succeeded: {}", client.txn(fenced).await?.succeeded);

    println!("resource: {:?}", resource.contents);
    b.release().await?;
    b_session.close().await?;
    Ok(())
}
