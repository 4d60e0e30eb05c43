//! The `referee-capture` binary: bad arguments and unreadable files give clear errors and a
//! non-zero exit code (no daemon needed: all of these fail before connecting).

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_referee-capture"))
        .args(args)
        .env_remove("REFEREE_CAPTURE_TOKEN")
        .output()
        .expect("the binary runs")
}

fn fails_with(args: &[&str], needles: &[&str]) -> i32 {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} must fail; stderr: {stderr}"
    );
    for n in needles {
        assert!(
            stderr.to_lowercase().contains(&n.to_lowercase()),
            "{args:?}: stderr lacks {n:?}:\n{stderr}"
        );
    }
    out.status.code().unwrap_or(-1)
}

#[test]
fn missing_source_or_trust_is_a_usage_error() {
    let code = fails_with(
        &["127.0.0.1:4433", "--insecure-loopback"],
        &["--video", "--synthetic"],
    );
    assert_eq!(code, 2);
    let code = fails_with(
        &["127.0.0.1:4433", "--synthetic", "3"],
        &["--ca", "--server-fingerprint", "--insecure-loopback"],
    );
    assert_eq!(code, 2);
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--images",
            "/tmp",
            "--insecure-loopback",
        ],
        &["cannot be used with"],
    );
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--insecure-loopback",
            "--encoding",
            "gif",
        ],
        &["gif", "jpeg"],
    );
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--insecure-loopback",
            "--jpeg-quality",
            "0",
        ],
        &["jpeg-quality"],
    );
    fails_with(
        &["127.0.0.1:4433", "--synthetic", "x", "--insecure-loopback"],
        &["--synthetic"],
    );
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--insecure-loopback",
            "--size",
            "big",
        ],
        &["--size", "WIDTHxHEIGHT"],
    );
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--insecure-loopback",
            "--output",
            "/tmp/x.json",
        ],
        &["--output needs --signal"],
    );
}

#[test]
fn unreadable_files_are_named() {
    let code = fails_with(
        &[
            "127.0.0.1:4433",
            "--video",
            "/nonexistent/clip.mp4",
            "--insecure-loopback",
        ],
        &["/nonexistent/clip.mp4", "not found"],
    );
    assert_eq!(code, 2);
    fails_with(
        &[
            "127.0.0.1:4433",
            "--images",
            "/nonexistent/frames",
            "--insecure-loopback",
        ],
        &["/nonexistent/frames"],
    );
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--insecure-loopback",
            "--signal",
            "/nonexistent/signal.txt",
        ],
        &["/nonexistent/signal.txt"],
    );
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--insecure-loopback",
            "--signal-dir",
            "/nonexistent/logs",
        ],
        &["/nonexistent/logs"],
    );
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--ca",
            "/nonexistent/ca.pem",
        ],
        &["/nonexistent/ca.pem"],
    );
    fails_with(
        &[
            "127.0.0.1:4433",
            "--synthetic",
            "3",
            "--server-fingerprint",
            "/nonexistent/identity.sha256",
        ],
        &["--server-fingerprint", "identity.sha256"],
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    fails_with(
        &[
            "127.0.0.1:4433",
            "--video",
            empty.to_str().unwrap(),
            "--insecure-loopback",
        ],
        &["empty"],
    );
}

#[test]
fn insecure_trust_is_refused_for_remote_servers() {
    let code = fails_with(
        &["192.0.2.10:4433", "--synthetic", "3", "--insecure-loopback"],
        &["loopback", "--server-fingerprint"],
    );
    assert_ne!(code, 0);
    fails_with(
        &[
            "not a host:99999",
            "--synthetic",
            "3",
            "--insecure-loopback",
        ],
        &["resolve"],
    );
}

#[test]
fn help_lists_the_main_options() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--video",
        "--camera",
        "--images",
        "--synthetic",
        "--signal",
        "--signal-dir",
        "--server-fingerprint",
        "--insecure-loopback",
        "--token",
        "--output",
        "--realtime",
        "--fast",
    ] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // Nothing listens on the discard port: the agent logs its start, then keeps retrying.
    let mut child = Command::new(env!("CARGO_BIN_EXE_referee-capture"))
        .args(["127.0.0.1:9", "--synthetic", "3", "--insecure-loopback"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let mut first = String::new();
    let stderr = child.stderr.take().expect("piped stderr");
    BufReader::new(stderr)
        .read_line(&mut first)
        .expect("a log line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("INFO"), "{first:?}");
    assert!(
        !first.contains('\u{1b}'),
        "ANSI escapes in a pipe: {first:?}"
    );
}
