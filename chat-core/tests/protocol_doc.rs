//! Every example frame in docs/protocol.md parses as the type it claims to be.

use chat_core::api::{AuthResponse, SignupRequest};
use chat_core::protocol::{ClientFrame, ServerFrame};

const DOC: &str = include_str!("../../docs/protocol.md");

fn blocks(tag: &str) -> Vec<&'static str> {
    let fence = format!("```json {tag}\n");
    DOC.split(fence.as_str())
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or("").trim())
        .collect()
}

#[test]
fn client_examples_parse_and_round_trip() {
    let examples = blocks("client");
    assert!(examples.len() >= 6, "found {}", examples.len());
    for ex in examples {
        let frame: ClientFrame = serde_json::from_str(ex).unwrap_or_else(|e| panic!("{ex}: {e}"));
        let again: ClientFrame =
            serde_json::from_str(&serde_json::to_string(&frame).unwrap()).unwrap();
        assert_eq!(again, frame);
    }
}

#[test]
fn server_examples_parse_and_serialize_identically() {
    let examples = blocks("server");
    assert!(examples.len() >= 10, "found {}", examples.len());
    for ex in examples {
        let frame: ServerFrame = serde_json::from_str(ex).unwrap_or_else(|e| panic!("{ex}: {e}"));
        let ours: serde_json::Value = serde_json::to_value(&frame).unwrap();
        let doc: serde_json::Value = serde_json::from_str(ex).unwrap();
        assert_eq!(ours, doc, "the server would write this frame differently");
    }
}

#[test]
fn http_examples_parse() {
    let examples = blocks("http");
    assert_eq!(examples.len(), 2);
    serde_json::from_str::<SignupRequest>(examples[0]).unwrap();
    serde_json::from_str::<AuthResponse>(examples[1]).unwrap();
}

/// Blocks fenced as `json api TYPE`: HTTP bodies of the named type.
fn api_blocks() -> Vec<(&'static str, &'static str)> {
    DOC.split("```json api ")
        .skip(1)
        .map(|rest| {
            let (name, body) = rest.split_once('\n').unwrap_or((rest, ""));
            (name.trim(), body.split("```").next().unwrap_or("").trim())
        })
        .collect()
}

#[test]
fn api_examples_parse_as_their_types_and_serialize_identically() {
    use chat_core::api::{ChannelList, GroupChange, RouteResponse};
    use chat_core::Privacy;
    fn same<T: serde::Serialize + serde::de::DeserializeOwned>(ex: &str) {
        let value: T = serde_json::from_str(ex).unwrap_or_else(|e| panic!("{ex}: {e}"));
        let doc: serde_json::Value = serde_json::from_str(ex).unwrap();
        assert_eq!(serde_json::to_value(&value).unwrap(), doc, "{ex}");
    }
    let blocks = api_blocks();
    assert!(blocks.len() >= 3, "found {}", blocks.len());
    for (name, ex) in blocks {
        match name {
            "RouteResponse" => same::<RouteResponse>(ex),
            "Privacy" => same::<Privacy>(ex),
            "GroupChange" => same::<GroupChange>(ex),
            "ChannelList" => same::<ChannelList>(ex),
            "Attachment" => same::<chat_core::Attachment>(ex),
            "SearchPage" => same::<chat_core::search::SearchPage>(ex),
            other => panic!("no check for api example type {other}"),
        }
    }
}
