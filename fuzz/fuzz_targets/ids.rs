//! Ids and cursors as they arrive in paths, queries and JSON: parse from
//! text and deserialise from JSON; whatever parses prints and parses back.
#![no_main]

use std::fmt::Display;
use std::str::FromStr;

use chat_core::{ChannelId, ClientMsgId, DeviceId, MessageId, UserId};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn text<T: FromStr + Display + PartialEq + std::fmt::Debug>(s: &str) {
    if let Ok(id) = s.parse::<T>() {
        let back: T = id
            .to_string()
            .parse()
            .unwrap_or_else(|_| panic!("{id:?} prints as something that does not parse"));
        assert_eq!(back, id);
    }
}

fn json<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(s: &str) {
    if let Ok(id) = serde_json::from_str::<T>(s) {
        let back: T = serde_json::from_str(&serde_json::to_string(&id).expect("serialises"))
            .expect("parses back");
        assert_eq!(back, id);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    text::<UserId>(s);
    text::<ChannelId>(s);
    text::<DeviceId>(s);
    text::<MessageId>(s);
    json::<UserId>(s);
    json::<ChannelId>(s);
    json::<DeviceId>(s);
    json::<MessageId>(s);
    json::<ClientMsgId>(s);
    if let Ok(id) = ClientMsgId::new(s) {
        assert!(!id.as_str().is_empty() && id.as_str().len() <= ClientMsgId::MAX_LEN);
    }
});
