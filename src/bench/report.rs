//! What a run measured — a [`Tally`] per client task, merged into one [`Report`] — and how a
//! report prints: a short text block for people, one JSON document for programs.
//!
//! JSON: `{"workload", "parameters": {…}, "target", "system": "latch"|"etcd"|"zk", "clients",
//! "connections", "key_size", "value_size", "keyspace", "ops", "outcomes": {name: count},
//! "errors": {kind: count}, "elapsed_s", "throughput", "latency_ms": {"p50", "p90", "p99",
//! "p999", "max", "mean"}}`, every number a JSON number. `ops` counts successful operations;
//! `throughput` is `ops / elapsed_s`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use super::{OpError, Outcome, Settings, System};

/// Highest latency the histogram tells apart, in microseconds (60 s); longer ones count as 60 s.
const MAX_LATENCY_MICROS: u64 = 60_000_000;
/// Significant digits of every latency recorded.
const SIGNIFICANT_DIGITS: u8 = 3;

/// The counts of one client task, or of several merged.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of each successful operation, in microseconds.
    latencies: Histogram<u64>,
    outcomes: BTreeMap<Outcome, u64>,
    errors: BTreeMap<&'static str, ErrorCount>,
}

/// How often one kind of error happened, and one message of that kind to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorCount {
    /// Operations that failed with this kind.
    pub count: u64,
    /// The message of the first of them.
    pub example: String,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

impl Tally {
    /// Nothing counted yet.
    pub fn new() -> Tally {
        let latencies = Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, SIGNIFICANT_DIGITS)
            .expect("constant bounds: 1 < 60 s in microseconds, 3 significant digits");
        Tally { latencies, outcomes: BTreeMap::new(), errors: BTreeMap::new() }
    }

    /// Counts a successful operation that took `latency` and came to `outcome`.
    pub fn record(&mut self, latency: Duration, outcome: Outcome) {
        let micros = latency.as_micros().try_into().unwrap_or(u64::MAX);
        self.latencies.saturating_record(micros);
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    /// Counts a failed operation.
    pub fn record_error(&mut self, error: OpError) {
        self.errors
            .entry(error.kind)
            .and_modify(|e| e.count += 1)
            .or_insert(ErrorCount { count: 1, example: error.message });
    }

    /// Adds another task's counts to these.
    pub fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so every value of one fits the other.
        let _ = self.latencies.add(&other.latencies);
        for (outcome, count) in other.outcomes {
            *self.outcomes.entry(outcome).or_default() += count;
        }
        for (kind, theirs) in other.errors {
            self.errors.entry(kind).and_modify(|e| e.count += theirs.count).or_insert(theirs);
        }
    }

    /// Adds another tally's failed operations to these, and nothing of its successful ones
    /// (e.g. the puts of `watch-latency`, whose report times events, not puts).
    pub fn merge_errors(&mut self, other: Tally) {
        for (kind, theirs) in other.errors {
            self.errors.entry(kind).and_modify(|e| e.count += theirs.count).or_insert(theirs);
        }
    }

    /// Successful operations counted.
    pub fn succeeded(&self) -> u64 {
        self.latencies.len()
    }

    /// The latency percentiles of the successful operations counted.
    pub fn latency(&self) -> Latency {
        Latency::of(&self.latencies)
    }
}

/// Latency percentiles of the successful operations, in microseconds (0 when there were none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency { p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0.0 };
        }
        Latency {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

/// Everything a run measured, with the settings it ran with.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The workload's name.
    pub workload: &'static str,
    /// The workload's own settings.
    pub parameters: Map<String, Value>,
    /// The `--target`, normalised (`latch://H:P,H:P`).
    pub target: String,
    /// Which system was loaded.
    pub system: System,
    /// Client tasks.
    pub clients: usize,
    /// Underlying clients.
    pub connections: usize,
    /// Bytes of every key.
    pub key_size: usize,
    /// Bytes of every written value.
    pub value_size: usize,
    /// Keys in the key space.
    pub keyspace: u64,
    /// Successful operations.
    pub ops: u64,
    /// Successful operations by outcome.
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Failed operations by kind.
    pub errors: BTreeMap<&'static str, ErrorCount>,
    /// Wall time from the start to the end of the last operation.
    pub elapsed: Duration,
    /// Latency of the successful operations.
    pub latency: Latency,
}

impl Report {
    /// The report of a run of `workload` with `settings` that counted `tally` in `elapsed`.
    pub fn new(
        workload: &'static str,
        parameters: Map<String, Value>,
        settings: &Settings,
        tally: Tally,
        elapsed: Duration,
    ) -> Report {
        Report {
            workload,
            parameters,
            target: settings.target.to_string(),
            system: settings.target.system,
            clients: settings.clients,
            connections: settings.connections,
            key_size: settings.keys.key_size(),
            value_size: settings.value_size,
            keyspace: settings.keys.size(),
            ops: tally.succeeded(),
            latency: Latency::of(&tally.latencies),
            outcomes: tally.outcomes,
            errors: tally.errors,
            elapsed,
        }
    }

    /// Successful operations per second.
    pub fn throughput(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ops as f64 / seconds
        } else {
            0.0
        }
    }

    /// Failed operations, of every kind.
    pub fn failed(&self) -> u64 {
        self.errors.values().map(|e| e.count).sum()
    }

    /// The report as one JSON document (see the module doc).
    pub fn to_json(&self) -> Value {
        let errors: Map<String, Value> =
            self.errors.iter().map(|(kind, e)| (kind.to_string(), json!(e.count))).collect();
        json!({
            "workload": self.workload,
            "parameters": self.parameters,
            "target": self.target,
            "system": self.system.name(),
            "clients": self.clients,
            "connections": self.connections,
            "key_size": self.key_size,
            "value_size": self.value_size,
            "keyspace": self.keyspace,
            "ops": self.ops,
            "outcomes": self.outcomes,
            "errors": errors,
            "elapsed_s": round(self.elapsed.as_secs_f64(), 3),
            "throughput": round(self.throughput(), 1),
            "latency_ms": {
                "p50": millis(self.latency.p50),
                "p90": millis(self.latency.p90),
                "p99": millis(self.latency.p99),
                "p999": millis(self.latency.p999),
                "max": millis(self.latency.max),
                "mean": round(self.latency.mean / 1000.0, 3),
            },
        })
    }

    /// The report as a few lines of text, e.g.
    ///
    /// ```text
    /// workload    put  (key 32 B, value 256 B, keyspace 100000)
    /// target      latch://127.0.0.1:7379  (16 clients, 16 connections)
    /// ops         20000 in 10.00 s = 2000.0 ops/s
    /// latency ms  p50 0.512  p90 1.02  p99 3.10  p999 8.20  max 12.0  mean 0.601
    /// outcomes    put 20000
    /// errors      none
    /// ```
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let parameters: String =
            self.parameters.iter().map(|(name, value)| format!(" {name}={}", plain(value))).collect();
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "workload    {}{parameters}  (key {} B, value {} B, keyspace {})",
            self.workload, self.key_size, self.value_size, self.keyspace
        );
        let _ = writeln!(
            text,
            "target      {}  ({} clients, {} connections)",
            self.target, self.clients, self.connections
        );
        let _ = writeln!(
            text,
            "ops         {} in {:.2} s = {:.1} ops/s",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        let l = &self.latency;
        let _ = writeln!(
            text,
            "latency ms  p50 {}  p90 {}  p99 {}  p999 {}  max {}  mean {}",
            ms_text(l.p50),
            ms_text(l.p90),
            ms_text(l.p99),
            ms_text(l.p999),
            ms_text(l.max),
            ms_text(l.mean.round() as u64)
        );
        if !self.outcomes.is_empty() {
            let outcomes: Vec<String> = self.outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
            let _ = writeln!(text, "outcomes    {}", outcomes.join(", "));
        }
        if self.errors.is_empty() {
            text.push_str("errors      none\n");
        } else {
            let _ = writeln!(text, "errors      {}", self.failed());
            for (kind, e) in &self.errors {
                let _ = writeln!(text, "  {kind} {}  (e.g. {})", e.count, e.example);
            }
        }
        text
    }
}

/// Microseconds as milliseconds.
fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Milliseconds with 3 significant digits (at most 3 decimals), for text.
fn ms_text(micros: u64) -> String {
    let ms = millis(micros);
    let decimals = match ms {
        m if m >= 100.0 => 0,
        m if m >= 10.0 => 1,
        m if m >= 1.0 => 2,
        _ => 3,
    };
    format!("{ms:.decimals$}")
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A JSON value as text, strings without their quotes.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{KeySpace, Stop, TargetSpec};

    fn settings() -> Settings {
        Settings {
            target: TargetSpec::parse("latch://127.0.0.1:7379").expect("valid target"),
            clients: 2,
            connections: 1,
            stop: Stop::Ops(10),
            keys: KeySpace::new(100, 16).expect("valid key space"),
            value_size: 8,
            timeout: Duration::from_secs(1),
        }
    }

    fn tally_of(micros: impl IntoIterator<Item = u64>, outcome: Outcome) -> Tally {
        let mut tally = Tally::new();
        for m in micros {
            tally.record(Duration::from_micros(m), outcome);
        }
        tally
    }

    #[test]
    fn percentiles_come_from_every_task_merged() {
        let mut tally = tally_of(1..=500, "committed");
        tally.merge(tally_of(501..=1000, "conflict"));
        let report = Report::new("txn-cas", Map::new(), &settings(), tally, Duration::from_secs(2));
        assert_eq!(report.ops, 1000);
        assert_eq!(report.outcomes, BTreeMap::from([("committed", 500), ("conflict", 500)]));
        let l = report.latency;
        // Three significant digits: within 0.1% of the exact order statistic.
        for (got, exact) in [(l.p50, 500), (l.p90, 900), (l.p99, 990), (l.p999, 999), (l.max, 1000)] {
            assert!(got.abs_diff(exact) <= exact / 1000 + 1, "expected about {exact} µs, got {got}");
        }
        assert_eq!(report.throughput(), 500.0);
    }

    #[test]
    fn latencies_beyond_the_histogram_count_as_its_maximum() {
        let mut tally = Tally::new();
        tally.record(Duration::from_secs(3600), "put");
        let latency = Latency::of(&tally.latencies);
        assert!(latency.max.abs_diff(MAX_LATENCY_MICROS) <= MAX_LATENCY_MICROS / 1000, "{latency:?}");
    }

    #[test]
    fn errors_are_counted_by_kind_keeping_the_first_message() {
        let mut a = Tally::new();
        a.record_error(OpError { kind: "UNAVAILABLE", message: "no leader".into() });
        a.record_error(OpError { kind: "UNAVAILABLE", message: "later".into() });
        let mut b = Tally::new();
        b.record_error(OpError { kind: "DEADLINE_EXCEEDED", message: "slow".into() });
        b.record_error(OpError { kind: "UNAVAILABLE", message: "b's".into() });
        a.merge(b);
        let report = Report::new("put", Map::new(), &settings(), a, Duration::from_secs(1));
        assert_eq!(report.failed(), 4);
        assert_eq!(report.errors["UNAVAILABLE"], ErrorCount { count: 3, example: "no leader".into() });
        assert_eq!(report.to_json()["errors"], json!({"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 3}));
    }

    #[test]
    fn json_has_every_field_as_a_number_and_no_ops_means_zeros() {
        let report = Report::new("put", Map::new(), &settings(), Tally::new(), Duration::ZERO);
        let json = report.to_json();
        assert_eq!(json["workload"], "put");
        assert_eq!(json["system"], "latch");
        assert_eq!(json["target"], "latch://127.0.0.1:7379");
        assert_eq!((json["clients"].as_u64(), json["connections"].as_u64()), (Some(2), Some(1)));
        assert_eq!(json["ops"], 0);
        assert_eq!(json["throughput"], 0.0);
        for p in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert_eq!(json["latency_ms"][p], 0.0, "{p}");
        }
        assert_eq!(json["errors"], json!({}));
    }

    #[test]
    fn text_shows_throughput_percentiles_and_errors() {
        let mut tally = tally_of([1500, 2500], "put");
        tally.record_error(OpError { kind: "UNAVAILABLE", message: "no leader".into() });
        let mut parameters = Map::new();
        parameters.insert("consistency".into(), json!("serializable"));
        let report = Report::new("get", parameters, &settings(), tally, Duration::from_secs(1));
        let text = report.to_text();
        for needle in [
            "workload    get consistency=serializable  (key 16 B, value 8 B, keyspace 100)",
            "target      latch://127.0.0.1:7379  (2 clients, 1 connections)",
            "ops         2 in 1.00 s = 2.0 ops/s",
            "p50 1.50  ",
            "errors      1\n  UNAVAILABLE 1  (e.g. no leader)",
        ] {
            assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn text_latencies_have_three_significant_digits() {
        assert_eq!(ms_text(512), "0.512");
        assert_eq!(ms_text(1_234), "1.23");
        assert_eq!(ms_text(12_345), "12.3");
        assert_eq!(ms_text(123_456), "123");
    }
}
