//! Every JSON body of the HTTP API (`chat_core::api`), requests the server
//! parses and answers the SDK parses. The first byte picks the type.
#![no_main]

use chat_core::api::*;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: DeserializeOwned + Serialize>(text: &str) {
    if let Ok(value) = serde_json::from_str::<T>(text) {
        let again = serde_json::to_string(&value).expect("a parsed body serialises");
        serde_json::from_str::<T>(&again).expect("and parses back");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match pick % 15 {
        0 => round_trip::<SignupRequest>(text),
        1 => round_trip::<LoginRequest>(text),
        2 => round_trip::<AuthResponse>(text),
        3 => round_trip::<UpdateProfileRequest>(text),
        4 => round_trip::<UserList>(text),
        5 => round_trip::<OpenDirectRequest>(text),
        6 => round_trip::<CreateGroupRequest>(text),
        7 => round_trip::<ChannelList>(text),
        8 => round_trip::<MessagePage>(text),
        9 => round_trip::<RegisterDeviceRequest>(text),
        10 => round_trip::<RouteResponse>(text),
        11 => round_trip::<PresenceList>(text),
        12 => round_trip::<ErrorBody>(text),
        13 => round_trip::<chat_core::User>(text),
        _ => round_trip::<chat_core::Channel>(text),
    }
});
