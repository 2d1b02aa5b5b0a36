//! Leader election: three candidates campaign for one election, an observer prints every
//! leader, the leader publishes a new value, then resigns and the next candidate takes over.
//!
//! Start a server (`cargo run --release -- server --dev`), then `cargo run --example leader_election`.

use std::time::Duration;

use futures::StreamExt;
use latch_client::{Client, SessionOptions};

#[tokio::main]
async fn main() -> Result<(), latch_client::Error> {
    let endpoints = std::env::var("LATCH_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7379".into());
    let client = Client::connect(endpoints.split(',')).await?;
    let election = client.election("example/primary");

    // The observer: the leader now, then every change.
    let observer = {
        let leaders = election.observe();
        tokio::spawn(async move {
            let mut leaders = Box::pin(leaders.take(5));
            while let Some(leader) = leaders.next().await {
                match leader {
                    Some(l) => println!(
                        "observer: leader is {} (fencing token {})",
                        String::from_utf8_lossy(&l.value),
                        l.sequencer.map_or(0, |s| s.generation)
                    ),
                    None => println!("observer: nobody leads"),
                }
            }
        })
    };

    // Three candidates, each with its own session; the first to ask leads, the others queue.
    let mut sessions = Vec::new();
    for name in ["10.0.0.1:5432", "10.0.0.2:5432", "10.0.0.3:5432"] {
        sessions.push((name, client.session(SessionOptions::new(Duration::from_secs(5))).await?));
    }
    let mut campaigns = Vec::new();
    for (name, session) in &sessions {
        let (election, id, name) = (election.clone(), session.id().to_string(), name.to_string());
        campaigns.push(tokio::spawn(async move { election.campaign(&id, name).await }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = campaigns.remove(0).await.expect("the campaign task runs")?;
    println!("elected: {}", String::from_utf8_lossy(&first.value));
    election.proclaim(&first, "10.0.0.1:6432").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    election.resign(&first).await?;
    let second = campaigns.remove(0).await.expect("the campaign task runs")?;
    println!("elected after the resignation: {}", String::from_utf8_lossy(&second.value));
    election.resign(&second).await?;
    let third = campaigns.remove(0).await.expect("the campaign task runs")?;
    election.resign(&third).await?;
    observer.await.expect("the observer task runs");
    for (_, session) in sessions {
        session.close().await?;
    }
    Ok(())
}
