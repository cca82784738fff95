//! The fuzz runs: each target driven with proptest for
//! `TIDINGS_FUZZ_CASES` cases (a million unless told). Ignored, so that
//! `make test` leaves them out; `make fuzz` runs them. An input that fails
//! one becomes a named test in `regressions.rs`.

use std::time::Instant;

use proptest::test_runner::{Config, TestRunner};
use tidings_fuzz::inputs::{client_text, cluster_bytes, expected_texts, ws_bytes};
use tidings_fuzz::{client_frame, ClusterDecoders, WsReader, MAX_FRAME};

fn cases() -> u32 {
    std::env::var("TIDINGS_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

/// A runner for `cases()` cases that keeps no files: what fails is shrunk,
/// reported, and made a regression test by hand.
fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 10_000,
        ..Config::default()
    })
}

fn report(target: &str, started: Instant) {
    println!(
        "fuzz {target}: {} cases in {:.0?}, none failed",
        cases(),
        started.elapsed()
    );
}

#[test]
#[ignore = "run by make fuzz"]
fn fuzz_client_frames() {
    let started = Instant::now();
    runner()
        .run(&client_text(), |text| {
            client_frame(&text);
            Ok(())
        })
        .unwrap();
    report("client frames", started);
}

#[test]
#[ignore = "run by make fuzz"]
fn fuzz_websocket_reader() {
    let started = Instant::now();
    let reader = WsReader::new();
    runner()
        .run(&ws_bytes(), |(bytes, frames)| {
            let texts = reader.read(&bytes);
            if let Some(frames) = frames {
                // Whole frames: the reader hands on exactly the texts
                // before the first frame it stops at.
                let expected = expected_texts(&frames, MAX_FRAME);
                proptest::prop_assert!(
                    texts.starts_with(&expected),
                    "handed on {texts:?}, expected at least {expected:?}"
                );
                // Frames that say their true length and are not split: no
                // more either.
                if frames.iter().all(|f| f.fin && f.claimed.is_none()) {
                    proptest::prop_assert_eq!(texts, expected);
                }
            }
            Ok(())
        })
        .unwrap();
    report("websocket reader", started);
}

#[test]
#[ignore = "run by make fuzz"]
fn fuzz_cluster_messages() {
    let started = Instant::now();
    let decoders = ClusterDecoders::new();
    runner()
        .run(&cluster_bytes(), |bytes| {
            decoders.feed(&bytes);
            Ok(())
        })
        .unwrap();
    report("cluster messages", started);
}
