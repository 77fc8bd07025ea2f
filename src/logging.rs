//! The server's log file: one per server, buffered, flushed by the reactor on a timer.
//!
//! Every line in and out is logged (PROTOCOL.md's servers are expected to keep such a log), so a
//! log call must cost neither a system call nor an allocation: each record is formatted straight
//! into one reused 64 KiB buffer (timestamp by hand, message by `write!`), which goes to the file
//! when it fills, at most [`FLUSH_INTERVAL`] after the first unflushed record (the reactor's
//! timer), and at shutdown. A general-purpose logger (simplelog, env_logger) formats each record
//! into a fresh `String`; with full logging that allocation alone cost about half the throughput
//! of pipelined IAMATs.
//!
//! A line looks like `2026-11-24T03:56:15.449643Z [INFO] c3 < IAMAT ...` (UTC, microseconds).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// Longest time a logged line may sit in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Buffered bytes at which a record writes the buffer out at once.
const BUFFER: usize = 64 << 10;

/// Set when a record was written and not yet flushed, so an idle server need not wake up.
static DIRTY: AtomicBool = AtomicBool::new(false);

struct State {
    buf: Vec<u8>,
    file: File,
    /// A write to the file failed; said once on stderr, then records are dropped quietly.
    failed: bool,
}

impl State {
    fn write_out(&mut self) {
        if !self.buf.is_empty()
            && !self.failed
            && let Err(e) = self.file.write_all(&self.buf)
        {
            self.failed = true;
            eprintln!("herd: cannot write the log file: {e}; logging stops");
        }
        self.buf.clear();
        DIRTY.store(false, Ordering::Relaxed);
    }
}

struct FileLogger {
    level: LevelFilter,
    state: Mutex<State>,
}

impl FileLogger {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst a half-written record: keep logging.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Log for FileLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut state = self.lock();
        let buf = &mut state.buf;
        write_timestamp(buf, SystemTime::now());
        // Writing into a Vec cannot fail.
        let _ = writeln!(buf, " [{}] {}", record.level(), record.args());
        DIRTY.store(true, Ordering::Relaxed);
        if state.buf.len() >= BUFFER {
            state.write_out();
        }
    }

    fn flush(&self) {
        self.lock().write_out();
    }
}

/// Opens (appending) `file`, creating its folder, and installs it as the process's logger.
pub fn init(file: &Path, level: LevelFilter) -> io::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).append(true).open(file)?;
    let logger = FileLogger {
        level,
        state: Mutex::new(State { buf: Vec::with_capacity(BUFFER + 4096), file, failed: false }),
    };
    log::set_logger(Box::leak(Box::new(logger))).map_err(|e| io::Error::other(e.to_string()))?;
    log::set_max_level(level);
    Ok(())
}

/// Whether records are waiting to be flushed.
pub fn is_dirty() -> bool {
    DIRTY.load(Ordering::Relaxed)
}

/// Writes buffered records to the file.
pub fn flush() {
    log::logger().flush();
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`, without allocating.
fn write_timestamp(buf: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    digits(buf, year.max(0) as u64, 4);
    buf.push(b'-');
    digits(buf, month, 2);
    buf.push(b'-');
    digits(buf, day, 2);
    buf.push(b'T');
    digits(buf, rem / 3600, 2);
    buf.push(b':');
    digits(buf, rem / 60 % 60, 2);
    buf.push(b':');
    digits(buf, rem % 60, 2);
    buf.push(b'.');
    digits(buf, u64::from(since.subsec_micros()), 6);
    buf.push(b'Z');
}

/// `n` in `width` decimal digits, zero-padded (higher digits dropped).
fn digits(buf: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut tmp = [b'0'; 20];
    for slot in tmp[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&tmp[..width]);
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(secs: u64, nanos: u32) -> String {
        let mut buf = Vec::new();
        write_timestamp(&mut buf, UNIX_EPOCH + Duration::new(secs, nanos));
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_microseconds() {
        assert_eq!(stamp(0, 0), "1970-01-01T00:00:00.000000Z");
        // `date -u -d @1479265454` and the two around a leap day.
        assert_eq!(stamp(1_479_265_454, 556_263_400), "2016-11-16T03:04:14.556263Z");
        assert_eq!(stamp(951_782_399, 999_999_999), "2000-02-28T23:59:59.999999Z");
        assert_eq!(stamp(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(stamp(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn civil_dates_match_a_day_by_day_walk() {
        let (mut y, mut m, mut d) = (1970i64, 1u64, 1u64);
        for days in 0..200_000i64 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len =
                [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m as usize - 1];
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
