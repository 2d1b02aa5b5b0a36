//! The DNS request path: any datagram, through decoding, the question, the answer from a zone
//! with a service, a static record that does not parse, and a member, and the encoded response
//! (`latch::dns::answer_datagram`). Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use latch::dns::zone::{Snapshot, Zone};
use libfuzzer_sys::fuzz_target;

fn zone() -> &'static (Snapshot, Zone) {
    static ZONE: OnceLock<(Snapshot, Zone)> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut snap = Snapshot { revision: 9, ..Default::default() };
        snap.statics.insert("www".into(), br#"{"type":"A","address":"10.7.7.7"}"#.to_vec());
        snap.statics.insert("bad".into(), b"{".to_vec());
        snap.members.insert(1, "127.0.0.1:7379".into());
        snap.leaders.insert("jobs".into(), b"not an address".to_vec());
        let zone = Zone::new("latch.", 5, 5).expect("latch. is a domain");
        (snap, zone)
    })
}

fuzz_target!(|data: &[u8]| {
    let (snap, zone) = zone();
    let _ = latch::dns::answer_datagram(snap, zone, data);
});
