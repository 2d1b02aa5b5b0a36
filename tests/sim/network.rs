//! The simulated network between raft members: seeded loss, duplication, delay (hence
//! reordering) and partitions.
//!
//! What it models: every raft message handed to [`Network::send`] becomes zero, one or two
//! deliveries, each at `now + delay` with a delay drawn from the seed (a few of them much
//! later than the rest, so messages overtake each other). A partition is a set of blocked
//! directed links; it is consulted at delivery time, so messages in flight when a partition
//! starts are lost too. Links heal when the simulator says so.
//!
//! Invariants: every decision (drop, duplicate, delay) comes from the simulator's seeded rng,
//! in the order messages are sent; blocked links are kept in a `BTreeSet`, so nothing depends
//! on hash order. The network never alters a message.

use std::collections::BTreeSet;
use std::sync::Arc;

use raft::eraftpb::Message;
use rand::rngs::SmallRng;
use rand::Rng;

/// Per-run network behaviour, drawn from the seed.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Usual one-way delay, microseconds (uniform in this range).
    pub delay_us: (u64, u64),
    /// Probability of a much longer delay (up to `long_delay_us`), which reorders.
    pub long_delay: f64,
    pub long_delay_us: u64,
}

impl NetConfig {
    pub fn draw(rng: &mut SmallRng) -> NetConfig {
        NetConfig {
            drop: [0.0, 0.01, 0.03, 0.08][rng.gen_range(0..4)],
            duplicate: [0.0, 0.01, 0.03][rng.gen_range(0..3)],
            delay_us: (100, rng.gen_range(500..4_000)),
            long_delay: [0.0, 0.02, 0.05][rng.gen_range(0..3)],
            long_delay_us: rng.gen_range(10_000..60_000),
        }
    }
}

/// A message on its way: delivered at `at` unless its link is blocked by then. A snapshot
/// message travels with its stream, read from the sender when it was sent (as the peer
/// transport streams it from the sender's prepared read transaction).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub from: u64,
    pub to: u64,
    pub msg: Message,
    pub stream: Option<Arc<Vec<u8>>>,
}

#[derive(Debug)]
pub struct Network {
    pub config: NetConfig,
    blocked: BTreeSet<(u64, u64)>,
    /// When true, messages are neither dropped nor duplicated (the settle phase).
    calm: bool,
}

impl Network {
    pub fn new(config: NetConfig) -> Network {
        Network { config, blocked: BTreeSet::new(), calm: false }
    }

    /// The deliveries (with their delays) that sending `msg` from `from` produces: none when
    /// the message is lost on the wire, two when it is duplicated.
    pub fn send(
        &self,
        rng: &mut SmallRng,
        from: u64,
        msg: Message,
        stream: Option<Arc<Vec<u8>>>,
    ) -> Vec<(u64, Delivery)> {
        let c = self.config;
        if !self.calm && rng.gen_bool(c.drop) {
            return Vec::new();
        }
        let copies = if !self.calm && rng.gen_bool(c.duplicate) { 2 } else { 1 };
        let mut out = Vec::with_capacity(copies);
        for _ in 0..copies {
            let delay = if !self.calm && rng.gen_bool(c.long_delay) {
                rng.gen_range(c.delay_us.1..=c.long_delay_us)
            } else {
                rng.gen_range(c.delay_us.0..=c.delay_us.1)
            };
            out.push((delay, Delivery { from, to: msg.to, msg: msg.clone(), stream: stream.clone() }));
        }
        out
    }

    /// Whether `from` can reach `to` now.
    pub fn connected(&self, from: u64, to: u64) -> bool {
        !self.blocked.contains(&(from, to))
    }

    /// Blocks both directions between `a` and every member of `b`.
    pub fn split(&mut self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                self.blocked.insert((y, x));
            }
        }
    }

    /// Blocks one direction only (`from` → `to`): an asymmetric link.
    pub fn block_one_way(&mut self, from: u64, to: u64) {
        self.blocked.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    pub fn set_calm(&mut self, calm: bool) {
        self.calm = calm;
    }

    pub fn describe(&self) -> String {
        let links: Vec<String> = self.blocked.iter().map(|(a, b)| format!("{a}->{b}")).collect();
        links.join(" ")
    }
}
