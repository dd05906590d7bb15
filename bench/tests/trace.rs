//! `placecast-load trace` as a user runs it: the binary writes the same bytes for the same
//! arguments (to a file or stdout), prints its summary on stderr, and refuses bad arguments with
//! exit code 2 and a message naming the option.

use std::process::{Command, Output};

fn trace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_placecast-load")).arg("trace").args(args).output().expect("the binary runs")
}

#[test]
fn trace_writes_the_same_bytes_to_a_file_and_stdout() {
    let dir = std::env::temp_dir().join(format!("placecast-trace-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.csv");
    let common = ["--edits", "5000", "--seed", "42", "--width", "128", "--height", "64", "--colors", "8"];
    let to_file = trace(&[&common[..], &["--out", file.to_str().unwrap()]].concat());
    assert!(to_file.status.success(), "{}", String::from_utf8_lossy(&to_file.stderr));
    let stderr = String::from_utf8_lossy(&to_file.stderr);
    assert!(stderr.contains("5000 edits by 333 users"), "{stderr}");
    let to_stdout = trace(&[&common[..], &["--out", "-"]].concat());
    assert!(to_stdout.status.success());
    let written = std::fs::read(&file).unwrap();
    assert_eq!(written, to_stdout.stdout);
    let text = String::from_utf8(written).unwrap();
    assert!(text.starts_with("timestamp,user_hash,x,y,color,version\n"));
    assert_eq!(text.lines().count(), 5001);
    assert!(text.ends_with(",5000\n"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trace_refuses_bad_arguments() {
    for (args, needle) in [
        (&["--edits", "0"][..], "--edits"),
        (&["--edits", "10", "--width", "20000", "--height", "20000"], "2^27"),
        (&["--edits", "10", "--colors", "40"], "--colors"),
        (&["--edits", "100", "--hours", "1", "--cooldown-s", "3600"], "do not fit"),
    ] {
        let out = trace(&[args, &["--out", "-"]].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
