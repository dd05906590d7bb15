//! The CSV form of an event's log, as Reddit published r/place 2017's (one row per placement):
//! `timestamp,user_hash,x,y,color,version`, e.g.
//! `2017-04-03 17:38:20.921 UTC,9f3c2a1b4d5e6f70,12,34,5,1`.
//!
//! - `timestamp`: UTC, `YYYY-MM-DD HH:MM:SS[.mmm] UTC` (the 2017 dataset's form).
//! - `user_hash`: 16 lowercase hex digits, the user's 64-bit key (or a keyed hash of it,
//!   `export --anonymize-users`). On import any other string (Reddit's base64 hashes) is hashed
//!   to a key, so one user stays one user.
//! - `x`, `y`; `color`: the palette index (import also takes `#rrggbb`, matched to the palette).
//! - `version`: the log version (export); optional on import.
//!
//! Import reads columns by their header names, so Reddit's own files work too: `ts` or
//! `timestamp`; `user_hash`, `user_id` or `user`; `x`/`x_coordinate`, `y`/`y_coordinate`, or
//! one quoted `coordinate` `"x,y"` (2022); `color` or `pixel_color`. Rows are RFC 4180 (quoted
//! fields, doubled quotes). Every parse error names the line and the field; nothing here panics
//! on input (fuzz target `fuzz/fuzz_targets/csv_row.rs`).

use thiserror::Error;

pub const HEADER: &str = "timestamp,user_hash,x,y,color,version";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CsvError {
    #[error("the header has no {0} column (columns: timestamp|ts, user_hash|user_id|user, x|x_coordinate, y|y_coordinate or coordinate, color|pixel_color, version)")]
    MissingColumn(&'static str),
    #[error("{0} fields, the header has {1}")]
    FieldCount(usize, usize),
    #[error("bad {field}: {value:?} ({why})")]
    Field { field: &'static str, value: String, why: &'static str },
    #[error("an unterminated quoted field")]
    Quote,
}

/// One row as a tool reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub ts_ms: u64,
    pub user: u64,
    pub x: u32,
    pub y: u32,
    /// A palette index, or a color to match to the palette.
    pub color: Color,
    pub version: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Index(u32),
    Rgb(u32),
}

/// Where each field is, from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    count: usize,
    ts: usize,
    user: usize,
    xy: Xy,
    color: usize,
    version: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Xy {
    Apart(usize, usize),
    Together(usize),
}

/// Splits one line into fields (RFC 4180 quoting).
pub fn fields(line: &str) -> Result<Vec<String>, CsvError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.trim_end_matches(['\r', '\n']).chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (false, ',') => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
                continue;
            }
            (_, c) => cur.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err(CsvError::Quote);
    }
    out.push(cur);
    Ok(out)
}

impl Columns {
    pub fn from_header(line: &str) -> Result<Columns, CsvError> {
        let names: Vec<String> =
            fields(line.trim_start_matches('\u{feff}'))?.into_iter().map(|f| f.trim().to_ascii_lowercase()).collect();
        let find = |alts: &[&str]| names.iter().position(|n| alts.contains(&n.as_str()));
        let xy = match (find(&["x", "x_coordinate"]), find(&["y", "y_coordinate"]), find(&["coordinate"])) {
            (Some(x), Some(y), _) => Xy::Apart(x, y),
            (_, _, Some(c)) => Xy::Together(c),
            _ => return Err(CsvError::MissingColumn("x and y")),
        };
        Ok(Columns {
            count: names.len(),
            ts: find(&["timestamp", "ts"]).ok_or(CsvError::MissingColumn("timestamp"))?,
            user: find(&["user_hash", "user_id", "user"]).ok_or(CsvError::MissingColumn("user_hash"))?,
            xy,
            color: find(&["color", "pixel_color"]).ok_or(CsvError::MissingColumn("color"))?,
            version: find(&["version"]),
        })
    }
}

fn bad(field: &'static str, value: &str, why: &'static str) -> CsvError {
    CsvError::Field { field, value: value.chars().take(80).collect(), why }
}

fn int(field: &'static str, v: &str) -> Result<u64, CsvError> {
    let v = v.trim();
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(field, v, "not a decimal number"));
    }
    v.parse().map_err(|_| bad(field, v, "too large"))
}

/// Parses one data row with the header's `cols`.
pub fn parse_row(cols: &Columns, line: &str) -> Result<Row, CsvError> {
    let f = fields(line)?;
    if f.len() != cols.count {
        return Err(CsvError::FieldCount(f.len(), cols.count));
    }
    let (x, y) = match cols.xy {
        Xy::Apart(x, y) => (int("x", &f[x])?, int("y", &f[y])?),
        Xy::Together(c) => {
            let (x, y) = f[c].split_once(',').ok_or_else(|| bad("coordinate", &f[c], "expected \"x,y\""))?;
            (int("x", x)?, int("y", y)?)
        }
    };
    if x > u16::MAX as u64 || y > u16::MAX as u64 {
        return Err(bad("x and y", &format!("{x},{y}"), "beyond any canvas"));
    }
    let color = parse_color(&f[cols.color])?;
    let version = cols.version.map(|i| int("version", &f[i])).transpose()?;
    Ok(Row {
        ts_ms: parse_time(&f[cols.ts])?,
        user: user_key(f[cols.user].trim()),
        x: x as u32,
        y: y as u32,
        color,
        version,
    })
}

fn parse_color(v: &str) -> Result<Color, CsvError> {
    let v = v.trim();
    if let Some(hex) = v.strip_prefix('#') {
        if hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return u32::from_str_radix(hex, 16).map(Color::Rgb).map_err(|_| bad("color", v, "bad #rrggbb"));
        }
        return Err(bad("color", v, "bad #rrggbb"));
    }
    let i = int("color", v)?;
    u32::try_from(i).map(Color::Index).map_err(|_| bad("color", v, "too large"))
}

/// The key of a CSV user: 16 hex digits are the key itself (so export and import round-trip);
/// anything else is hashed like a user name.
pub fn user_key(s: &str) -> u64 {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(k) = u64::from_str_radix(s, 16) {
            if k != 0 {
                return k;
            }
        }
    }
    crate::token::user_key(s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC`.
pub fn format_time(ms: u64) -> String {
    let (secs, milli) = ((ms / 1000) as i64, ms % 1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{milli:03} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.f] UTC` (also with `T` and `Z`), or plain Unix milliseconds.
pub fn parse_time(v: &str) -> Result<u64, CsvError> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return int("timestamp", v);
    }
    let why = "expected YYYY-MM-DD HH:MM:SS.mmm UTC";
    let s = v.strip_suffix(" UTC").or_else(|| v.strip_suffix('Z')).ok_or_else(|| bad("timestamp", v, why))?;
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad("timestamp", v, why));
    }
    let num = |r: std::ops::Range<usize>| -> Result<u64, CsvError> {
        let t = s.get(r).ok_or_else(|| bad("timestamp", v, why))?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad("timestamp", v, why));
        }
        t.parse().map_err(|_| bad("timestamp", v, why))
    };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 || y < 1970 {
        return Err(bad("timestamp", v, "out of range"));
    }
    let frac = match s.get(19..) {
        None | Some("") => 0,
        Some(f) => {
            let digits = f
                .strip_prefix('.')
                .filter(|d| !d.is_empty() && d.len() <= 9)
                .ok_or_else(|| bad("timestamp", v, why))?;
            if !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad("timestamp", v, why));
            }
            let padded = format!("{digits:0<3}");
            padded[..3].parse::<u64>().map_err(|_| bad("timestamp", v, why))?
        }
    };
    let days = days_from_civil(y as i64, mo as u32, d as u32) as u64;
    Ok(((days * 86_400 + h * 3600 + mi * 60 + se) * 1000) + frac)
}

/// One exported row.
pub fn format_row(out: &mut String, ts_ms: u64, user_hash: u64, x: u16, y: u16, color: u8, version: u64) {
    use std::fmt::Write;
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{},{user_hash:016x},{x},{y},{color},{version}", format_time(ts_ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for ms in [0, 1_491_238_700_921, 1_648_817_050_315, 1_796_286_815_322, 951_782_400_000] {
            assert_eq!(parse_time(&format_time(ms)).unwrap(), ms, "{}", format_time(ms));
        }
        assert_eq!(format_time(1_491_238_700_921), "2017-04-03 16:58:20.921 UTC");
        assert_eq!(parse_time("2017-04-03 16:58:20 UTC").unwrap(), 1_491_238_700_000);
        assert_eq!(parse_time("2017-04-03T16:58:20.9Z").unwrap(), 1_491_238_700_900);
        assert_eq!(parse_time("1491238700921").unwrap(), 1_491_238_700_921);
        for bad in ["", "2017-04-03", "2017-13-03 16:58:20 UTC", "2017-04-03 16:58:20.x UTC", "2017-04-03 16:58:20."] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rows_of_ours_and_reddits() {
        let ours = Columns::from_header(HEADER).unwrap();
        let mut line = String::new();
        format_row(&mut line, 1_491_238_700_921, 0x1f3a, 12, 34, 5, 9);
        let r = parse_row(&ours, &line).unwrap();
        assert_eq!(
            r,
            Row { ts_ms: 1_491_238_700_921, user: 0x1f3a, x: 12, y: 34, color: Color::Index(5), version: Some(9) }
        );
        let reddit17 = Columns::from_header("ts,user_hash,x_coordinate,y_coordinate,color").unwrap();
        let r = parse_row(&reddit17, "2017-04-03 17:38:20.921 UTC,+0iYBWMiJdEXjQTrhMv1hw==,42,43,7").unwrap();
        assert_eq!((r.x, r.y, r.color, r.version), (42, 43, Color::Index(7), None));
        assert_eq!(r.user, crate::token::user_key("+0iYBWMiJdEXjQTrhMv1hw=="));
        let reddit22 = Columns::from_header("timestamp,user_id,pixel_color,coordinate").unwrap();
        let r = parse_row(&reddit22, "2022-04-04 00:53:51.577 UTC,ovTZk4GyTS1mDQnTbV+vDOCu1f+u6w+CkIZ6445vD4XN8alFy/6GtNkYp5MSic6Tjo/fBCCGe6oZKMAN3rEZHw==,#00CCC0,\"826,1048\"").unwrap();
        assert_eq!((r.x, r.y, r.color), (826, 1048, Color::Rgb(0x00CCC0)));
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        let c = Columns::from_header(HEADER).unwrap();
        assert_eq!(parse_row(&c, "a,b"), Err(CsvError::FieldCount(2, 6)));
        assert!(matches!(parse_row(&c, "2017-04-03 16:58:20 UTC,1,x,2,3,4"), Err(CsvError::Field { field: "x", .. })));
        assert!(matches!(parse_row(&c, "2017-04-03 16:58:20 UTC,1,1,99999999,3,4"), Err(CsvError::Field { .. })));
        assert_eq!(parse_row(&c, "\"open,1,2,3,4,5"), Err(CsvError::Quote));
        assert_eq!(Columns::from_header("a,b,c"), Err(CsvError::MissingColumn("x and y")));
        assert_eq!(fields("a,\"b,\"\"c\"\"\",d").unwrap(), vec!["a", "b,\"c\"", "d"]);
    }

    /// The fuzz target's property (fuzz/fuzz_targets/csv_row.rs) over deterministic byte
    /// mutations of valid rows, so CI checks it without a fuzzer.
    #[test]
    fn mutated_rows_never_panic_and_times_round_trip() {
        let cols = Columns::from_header(HEADER).unwrap();
        let seeds = [
            "2017-04-03 17:38:20.921 UTC,1f3a9c0d22e4b5a7,412,88,5,1",
            "\"1\",\"a\"\"b\",3,4,5,6",
            "1491238700921,x,0,0,0,0",
        ];
        let mut z = 0x9E37_79B9_7F4A_7C15u64;
        for seed in seeds {
            for _ in 0..20_000 {
                let mut b = seed.as_bytes().to_vec();
                for _ in 0..(z % 4 + 1) {
                    z ^= z << 13;
                    z ^= z >> 7;
                    z ^= z << 17;
                    let i = (z as usize) % b.len();
                    match z >> 60 {
                        0..=7 => b[i] = (z >> 32) as u8,
                        8..=11 => b.insert(i, b"0,.\":- UTC9"[(z >> 40) as usize % 11]),
                        _ => {
                            b.remove(i);
                        }
                    }
                    if b.is_empty() {
                        b.push(b'0');
                    }
                }
                let line = String::from_utf8_lossy(&b);
                if let Ok(r) = parse_row(&cols, &line) {
                    assert!(r.x <= u16::MAX as u32 && r.y <= u16::MAX as u32);
                    if r.ts_ms < 253_402_300_800_000 {
                        assert_eq!(parse_time(&format_time(r.ts_ms)).ok(), Some(r.ts_ms), "{line}");
                    }
                }
            }
        }
    }
}
