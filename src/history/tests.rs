use super::*;
use crate::canvas::RPLACE_2017_PALETTE;

fn geometry() -> Geometry {
    Geometry::new(20, 10, RPLACE_2017_PALETTE.to_vec()).unwrap()
}

fn setup<'a>(dir: &'a Path, head: u64, id: &'a str) -> HistorySetup<'a> {
    HistorySetup {
        data_dir: dir,
        geometry: geometry(),
        log_id: id,
        log_head: head,
        keyframe_every: 4096,
        lookup: Lookup::Names,
        secret: b"k",
    }
}

/// A deterministic edit for version v: clustered on a few pixels so pixels get long histories.
fn edit(v: u64) -> Edit {
    let mut z = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z ^= z >> 29;
    Edit {
        x: (z % 5) as u16,
        y: ((z >> 8) % 3) as u16,
        color: ((z >> 16) % 16) as u8,
        user: 1 + z % 7,
        ts_ms: 1_000 + v * 10,
        ext: 0,
        aux: 0,
    }
}

/// Applies versions `from+1..=to` as the applier does (every 13th rejected) and records them.
fn apply(w: &mut HistoryWriter, canvas: &mut Canvas, from: u64, to: u64) {
    let g = geometry();
    for v in from + 1..=to {
        let e = edit(v);
        let target = (!v.is_multiple_of(13)).then(|| g.index(e.x as i64, e.y as i64).unwrap());
        if let Some(i) = target {
            canvas.set(i, e.color);
        }
        w.record(v, &e, target, canvas);
        if v.is_multiple_of(1000) {
            w.flush();
        }
    }
    w.flush();
}

fn replay(to: u64) -> Canvas {
    let g = geometry();
    let mut c = Canvas::new(g.clone());
    for v in 1..=to {
        let e = edit(v);
        if !v.is_multiple_of(13) {
            c.set(g.index(e.x as i64, e.y as i64).unwrap(), e.color);
        }
    }
    c
}

fn wait_keyframes(r: &HistoryReader, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while r.keyframe_count() < n {
        assert!(std::time::Instant::now() < deadline, "keyframes were not written");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn records_round_trip_and_damage_is_seen() {
    let r = Rec { version: 9, x: 3, y: 4, color: 5, applied: true, user: 77, ts_ms: 123, prev: 2 };
    let mut b = [0u8; RECORD];
    encode_rec(&r, &mut b);
    assert_eq!(decode_rec(9, &b), Some(r));
    assert_eq!(decode_rec(10, &b), None, "the check binds the version");
    b[20] ^= 1;
    assert_eq!(decode_rec(9, &b), None);
    assert_eq!(decode_rec(1, &[0u8; RECORD]), None, "a hole of zeros is not a record");
}

#[test]
fn pixel_history_canvas_at_and_time_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    {
        let mut w = HistoryWriter::open(setup(dir.path(), 0, "log")).unwrap();
        let mut c = Canvas::new(geometry());
        w.begin(0, &c).unwrap();
        apply(&mut w, &mut c, 0, n);
        wait_keyframes(&w.reader(), 2);
    }
    // Reopened against a longer log: everything it held is there, nothing is rewritten.
    let w = HistoryWriter::open(setup(dir.path(), n + 50, "log")).unwrap();
    assert_eq!(w.span(), (0, n));
    let r = w.reader();
    assert_eq!(r.version(), n);
    // The pixel's edits, newest first, are exactly the applied edits of that pixel.
    let e = edit(n - 1);
    let got = r.pixel(e.x as u32, e.y as u32, 100).unwrap().unwrap();
    let want: Vec<u64> =
        (1..=n).rev().filter(|&v| !v.is_multiple_of(13) && (edit(v).x, edit(v).y) == (e.x, e.y)).take(100).collect();
    assert_eq!(got.iter().map(|r| r.version).collect::<Vec<_>>(), want);
    assert_eq!(got[0].user, edit(want[0]).user);
    assert!(r.pixel(20, 0, 1).is_none(), "outside the canvas");
    assert_eq!(r.pixel(19, 9, 5).unwrap().unwrap(), vec![], "a pixel nobody edited");
    for v in [0, 1, 12, 13, 4095, 4096, 4097, 8192, 9999, n] {
        assert_eq!(r.canvas_at(v).unwrap().pixels(), replay(v).pixels(), "canvas at {v}");
    }
    assert_eq!(r.canvas_at(n + 1).err(), Some(HistoryError::NotYet { asked: n + 1, head: n }));
    // Time: edit v is stamped 1000 + 10 v.
    assert_eq!(r.version_at(999).unwrap(), 0);
    assert_eq!(r.version_at(1_010).unwrap(), 1);
    assert_eq!(r.version_at(1_000 + 10 * 5_000 + 5).unwrap(), 5_000);
    assert_eq!(r.version_at(u64::MAX).unwrap(), n);
    assert_eq!((r.first_ts_ms(), r.last_ts_ms()), (1_010, 1_000 + 10 * n));
    let body = r.stream(4096, 8192, 4).unwrap();
    let b = crate::protocol::BatchView::parse(&body).unwrap();
    assert_eq!(b.count as usize, (4097u64..=8192).filter(|v| !v.is_multiple_of(13)).count());
}

#[test]
fn a_resize_grows_heads_canvases_and_keyframes_and_survives_reopen() {
    use crate::control::Control;
    use crate::protocol::StreamMessage;
    let dir = tempfile::tempdir().unwrap();
    let (small, big) = (geometry(), Geometry::new(30, 12, RPLACE_2017_PALETTE.to_vec()).unwrap());
    let (resize_at, n) = (5_000u64, 9_000u64);
    // Edits before the resize stay in the 20x10 canvas; after it, some land in the new area.
    let edit_at = |v: u64| {
        let e = edit(v);
        if v > resize_at {
            Edit { x: e.x + 25, y: e.y + 9, ..e }
        } else {
            e
        }
    };
    let mut model = Canvas::new(small.clone());
    let mut models = vec![model.pixels().to_vec()];
    {
        let mut w = HistoryWriter::open(setup(dir.path(), 0, "log")).unwrap();
        let mut c = Canvas::new(small.clone());
        w.begin(0, &c).unwrap();
        for v in 1..=n {
            let e = if v == resize_at { Control::Resize { width: 30, height: 12 }.to_edit(0) } else { edit_at(v) };
            let target = if v == resize_at {
                c.grow(big.clone());
                model.grow(big.clone());
                None
            } else {
                let i = c.geometry.index(e.x as i64, e.y as i64).unwrap();
                c.set(i, e.color);
                model.set(i, e.color);
                Some(i)
            };
            w.record(v, &e, target, &c);
            models.push(model.pixels().to_vec());
        }
        w.flush();
        wait_keyframes(&w.reader(), 2);
        let r = w.reader();
        assert_eq!(
            r.pixel(27, 11, 1).unwrap().unwrap()[0].version,
            (resize_at + 1..=n).rev().find(|&v| (edit_at(v).x, edit_at(v).y) == (27, 11)).unwrap()
        );
    }
    let w = HistoryWriter::open(setup(dir.path(), n, "log")).unwrap();
    let r = w.reader();
    assert_eq!((r.geometry_at(resize_at - 1).width, r.geometry_at(resize_at).width), (20, 30));
    for v in [0, 4095, 4096, resize_at - 1, resize_at, resize_at + 1, 8192, n] {
        let c = r.canvas_at(v).unwrap();
        assert_eq!(c.pixels(), &models[v as usize][..], "canvas at {v}");
        let want = if v >= resize_at { (30, 12) } else { (20, 10) };
        assert_eq!((c.geometry.width, c.geometry.height), want);
    }
    // After reopening, the heads are of the grown size and a new-area pixel has its edits.
    let last = (resize_at + 1..=n).rev().find(|&v| (edit_at(v).x, edit_at(v).y) == (27, 11)).unwrap();
    assert_eq!(r.pixel(27, 11, 1).unwrap().unwrap()[0].version, last);
    assert_eq!(
        r.pixel(3, 1, 1).unwrap().unwrap()[0].version,
        (1..resize_at).rev().find(|&v| (edit(v).x, edit(v).y) == (3, 1)).unwrap()
    );
    // The stream across the resize is a batch, the resize, a batch; indexes use each width.
    let body = r.stream(4096, n, 4).unwrap();
    let (mut at, mut spans, mut indexes) = (0, Vec::new(), Vec::new());
    while at < body.len() {
        let (m, len) = StreamMessage::parse_prefix(&body[at..]).unwrap();
        spans.push(m.span());
        if let StreamMessage::Batch(b) = &m {
            indexes.push(b.iter().map(|(i, _)| i).max().unwrap());
        }
        at += len;
    }
    assert_eq!(spans, vec![(4096, resize_at - 1), (resize_at - 1, resize_at), (resize_at, n)]);
    assert!(indexes[0] < 200 && indexes[1] >= 9 * 30 + 25, "{indexes:?}");
}

#[test]
fn cut_at_the_log_head_and_at_a_torn_record_then_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Canvas::new(geometry());
    {
        let mut w = HistoryWriter::open(setup(dir.path(), 0, "log")).unwrap();
        w.begin(0, &c).unwrap();
        apply(&mut w, &mut c, 0, 300);
    }
    // A repaired log keeps 200 versions: the history follows it.
    {
        let w = HistoryWriter::open(setup(dir.path(), 200, "log")).unwrap();
        assert_eq!(w.span(), (0, 200));
    }
    // A torn last record is cut.
    let path = dir.path().join(HISTORY_DIR).join(FILE);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xAA; 7], (HEADER + 199 * RECORD + 3) as u64).unwrap();
    drop(f);
    let mut w = HistoryWriter::open(setup(dir.path(), 1_000, "log")).unwrap();
    assert_eq!(w.span(), (0, 199));
    // The applier replays from 0: versions it holds are skipped, the rest recorded.
    let mut c = Canvas::new(geometry());
    w.begin(0, &c).unwrap();
    apply(&mut w, &mut c, 0, 400);
    assert_eq!(w.reader().canvas_at(400).unwrap().pixels(), replay(400).pixels());
    assert_eq!(w.reader().canvas_at(150).unwrap().pixels(), replay(150).pixels());
}

#[test]
fn another_log_or_a_checkpoint_past_the_history_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Canvas::new(geometry());
    {
        let mut w = HistoryWriter::open(setup(dir.path(), 0, "log")).unwrap();
        w.begin(0, &c).unwrap();
        apply(&mut w, &mut c, 0, 100);
    }
    let w = HistoryWriter::open(setup(dir.path(), 100, "another log")).unwrap();
    assert_eq!(w.span(), (0, 0), "a history of another log is discarded");
    drop(w);
    // Starting at 5,000 (a checkpoint) with a history that ends at 0: it starts at 5,000.
    let mut w = HistoryWriter::open(setup(dir.path(), 10_000, "another log")).unwrap();
    let c = replay(5_000);
    w.begin(5_000, &c).unwrap();
    let r = w.reader();
    assert_eq!(r.base(), 5_000);
    assert!(matches!(r.canvas_at(4_999).err(), Some(HistoryError::Unavailable { base: 5_000 })));
    wait_keyframes(&r, 1);
    let mut c = c;
    apply(&mut w, &mut c, 5_000, 5_100);
    assert_eq!(r.canvas_at(5_100).unwrap().pixels(), replay(5_100).pixels());
    assert_eq!(r.canvas_at(5_000).unwrap().pixels(), replay(5_000).pixels());
    drop(w);
    let w = HistoryWriter::open(setup(dir.path(), 10_000, "another log")).unwrap();
    assert_eq!(w.span(), (5_000, 5_100));
    assert!(w.continues_at(5_050) && !w.continues_at(4_000));
}

#[test]
fn a_history_begun_on_an_empty_log_is_kept_when_the_log_has_its_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let empty = crate::edit_log::file::EMPTY_IDENTITY;
    let mut canvas = Canvas::new(geometry());
    {
        let mut w = HistoryWriter::open(setup(dir.path(), 0, empty)).unwrap();
        w.begin(0, &canvas).unwrap();
        apply(&mut w, &mut canvas, 0, 50);
    }
    // The log's identity now: its first record, as the embedded log encodes it.
    let mut first = [0u8; crate::edit_log::file::RECORD];
    crate::edit_log::file::encode(1, &edit(1), &mut first);
    let id = crate::edit_log::file::identity_of(&first);
    let w = HistoryWriter::open(setup(dir.path(), 50, &id)).unwrap();
    assert_eq!(w.span(), (0, 50), "kept, not started again");
    assert_eq!(w.reader().canvas_at(50).unwrap().pixels(), replay(50).pixels());
    drop(w);
    // Another log's first record: started again.
    let mut other = [0u8; crate::edit_log::file::RECORD];
    crate::edit_log::file::encode(1, &edit(2), &mut other);
    let dir2 = tempfile::tempdir().unwrap();
    {
        let mut c = Canvas::new(geometry());
        let mut w = HistoryWriter::open(setup(dir2.path(), 0, empty)).unwrap();
        w.begin(0, &c).unwrap();
        apply(&mut w, &mut c, 0, 50);
    }
    assert_ne!(crate::edit_log::file::identity_of(&other), id, "two logs, two identities");
    let w = HistoryWriter::open(setup(dir2.path(), 50, &crate::edit_log::file::identity_of(&other))).unwrap();
    assert_eq!(w.span(), (0, 0));
}
