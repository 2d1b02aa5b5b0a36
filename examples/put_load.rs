//! A small put load against a running cluster: N concurrent clients, each putting in a loop;
//! prints throughput and latency percentiles. A measuring tool, not a test (`latch bench`
//! replaces it). Usage:
//!
//! ```text
//! cargo run --release --example put_load -- ENDPOINTS CLIENTS OPS_PER_CLIENT [VALUE_BYTES]
//! cargo run --release --example put_load -- 127.0.0.1:7379,127.0.0.1:7479 64 500
//! ```

use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: put_load ENDPOINTS CLIENTS OPS_PER_CLIENT [VALUE_BYTES]");
        std::process::exit(2);
    }
    let endpoints: Vec<String> = args[0].split(',').map(str::to_string).collect();
    let clients: usize = args[1].parse()?;
    let ops: usize = args[2].parse()?;
    let value_bytes: usize = args.get(3).map(|v| v.parse()).transpose()?.unwrap_or(256);
    let value = vec![b'v'; value_bytes];

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        // Each simulated client has its own connection, spread over the endpoints.
        let mut mine = endpoints.clone();
        mine.rotate_left(c % endpoints.len());
        let client = latch_client::Client::connect(mine).await?;
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(ops);
            let mut errors = 0usize;
            for i in 0..ops {
                let key = format!("load/{c}/{i}");
                let t = Instant::now();
                match client.put(key, value.clone()).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort();
    println!(
        "clients={clients} puts={} errors={errors} elapsed={:.2}s throughput={:.0}/s p50={:.3}ms p99={:.3}ms max={:.3}ms",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}
