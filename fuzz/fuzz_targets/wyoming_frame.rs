//! Feeds arbitrary bytes to the Wyoming event decoder, as any client on the network could,
//! split in two pieces at a point the input chooses. It must never panic, never hold more
//! than one partial event within the limits, and every event it returns must encode into
//! bytes that decode to the same type, data keys and payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sotad::wyoming::frame::{Decoder, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { header: 256, data: 256, payload: 256 };
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut decoder = Decoder::new(limits);
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let mut failed = false;
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(error) => {
                    assert!(!error.to_string().is_empty());
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
        assert!(buf.len() <= limits.header + 1 + limits.data + limits.payload);
    }
    if !failed {
        let _ = decoder.at_end(&buf);
    }
    let roomy = Limits { header: 1 << 20, data: 1 << 20, payload: 1 << 20 };
    for event in events {
        let mut bytes = event.encode();
        let again = Decoder::new(roomy)
            .decode(&mut bytes)
            .expect("an encoded event decodes")
            .expect("an encoded event is whole");
        assert!(bytes.is_empty());
        assert_eq!(again.kind, event.kind);
        assert_eq!(again.payload, event.payload);
        assert!(again.data.keys().eq(event.data.keys()));
    }
});
