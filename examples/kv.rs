//! The smallest Latch program: write a key, read it back, and update it with a
//! compare-and-swap.
//!
//! Start a server (`cargo run --release -- server --dev`), then:
//!
//! ```text
//! cargo run --example kv
//! LATCH_ENDPOINTS=127.0.0.1:7379,127.0.0.1:7479 cargo run --example kv
//! ```

use latch_client::{Client, Compare, CompareResult, Op, Txn};

#[tokio::main]
async fn main() -> Result<(), latch_client::Error> {
    let endpoints = std::env::var("LATCH_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7379".into());
    let client = Client::connect(endpoints.split(',')).await?;

    // A put is acknowledged once a majority of the cluster has it on disk.
    let put = client.put("example/greeting", "hello").await?;
    println!("put at revision {}", put.header.map_or(0, |h| h.revision));

    // A get is linearizable: it sees every write acknowledged before it started.
    let Some(kv) = client.get("example/greeting").await? else {
        println!("example/greeting vanished: someone deleted it");
        return Ok(());
    };
    println!("get: {} (version {})", String::from_utf8_lossy(&kv.value), kv.version);

    // Compare-and-swap: replace the value only if nobody wrote the key since we read it.
    let txn = Txn::new()
        .when([Compare::version("example/greeting", CompareResult::Equal, kv.version)])
        .and_then([Op::put("example/greeting", "hello again")])
        .or_else([Op::get("example/greeting")]);
    let swapped = client.txn(txn).await?.succeeded;
    println!(
        "compare-and-swap on version {}: {}",
        kv.version,
        if swapped { "swapped" } else { "lost the race" }
    );

    if let Some(kv) = client.get("example/greeting").await? {
        println!("now: {} (version {})", String::from_utf8_lossy(&kv.value), kv.version);
    }
    Ok(())
}
