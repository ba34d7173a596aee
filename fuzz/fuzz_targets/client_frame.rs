//! WebSocket text frames: what the server parses from clients
//! (`ClientFrame`) and what the SDK parses from servers (`ServerFrame`).
//! Whatever parses must serialise and parse back to the same value.
#![no_main]

use chat_core::protocol::{ClientFrame, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = serde_json::from_str::<ClientFrame>(text) {
        let again = serde_json::to_string(&frame).expect("a parsed frame serialises");
        let back: ClientFrame = serde_json::from_str(&again).expect("and parses back");
        assert_eq!(back, frame);
    }
    if let Ok(frame) = serde_json::from_str::<ServerFrame>(text) {
        let again = serde_json::to_string(&frame).expect("a parsed frame serialises");
        let back: ServerFrame = serde_json::from_str(&again).expect("and parses back");
        assert_eq!(back, frame);
    }
});
