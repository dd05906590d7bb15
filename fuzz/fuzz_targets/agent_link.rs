#![no_main]
//! Any bytes on a load agent's control connection (`placecast-load agent` reads lines from the
//! network): the bounded line reader never holds more than its bound or panics, and every line
//! that parses as a message serializes back to the same message.
use libfuzzer_sys::fuzz_target;
use placecast_load::link::{parse, write_msg, FromAgent, Line, LineReader, ToAgent};

fuzz_target!(|data: &[u8]| {
    let mut reader = LineReader::with_max(data, 4096);
    while let Ok(Line::Msg(line)) = reader.read_line() {
        assert!(line.len() <= 4096);
        if let Ok(msg) = parse::<ToAgent>(&line) {
            let mut out = Vec::new();
            write_msg(&mut out, &msg).expect("a message serializes");
            assert_eq!(parse::<ToAgent>(&out[..out.len() - 1]).ok(), Some(msg));
        }
        let _ = parse::<FromAgent>(&line);
    }
});
