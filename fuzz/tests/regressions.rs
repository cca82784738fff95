//! Every input that ever made a fuzz target fail, named after what it
//! guards. These run in `make test`.

use tidings_fuzz::{client_frame, ClusterDecoders, WsReader};

#[test]
fn a_cluster_message_claiming_an_exabyte_string_is_refused_not_allocated() {
    // A heartbeat whose node name claims 2^60 bytes: bincode allocated the
    // claimed length before reading, and the allocation aborted the node.
    let mut bytes = vec![1, 0xFD];
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    ClusterDecoders::new().feed(&bytes);
}

#[test]
fn a_client_frame_with_an_over_long_req_is_refused_without_echoing_it() {
    // Found by the client frame target: a frame that is valid JSON with a
    // `req` over 64 characters was refused with the whole `req` echoed.
    let req = "\u{a1} 0\u{a1}".repeat(30);
    client_frame(&serde_json::json!({"req": req, "type": "sync"}).to_string());
}

#[test]
fn the_fuzz_targets_take_their_simplest_inputs() {
    // Not a crash: keeps the harness itself compiling and running in
    // `make test`, so `make fuzz` never finds it broken.
    client_frame(r#"{"type":"ping"}"#);
    ClusterDecoders::new().feed(b"");
    let reader = WsReader::new();
    // A masked text frame "hi".
    let texts = reader.read(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    assert_eq!(texts, ["hi"]);
}
