//! The server's log file: one per server, buffered, flushed by the reactor on a timer.
//!
//! Every line in and out is logged (PROTOCOL.md's servers are expected to keep such a log), so a
//! log call must not cost a system call: records go to a 64 KiB buffer that the reactor flushes
//! at most [`FLUSH_INTERVAL`] after the first unflushed record, and at shutdown.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use simplelog::{ConfigBuilder, LevelFilter, WriteLogger};

/// Longest time a logged line may sit in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Set when a record was written and not yet flushed, so an idle server need not wake up.
static DIRTY: AtomicBool = AtomicBool::new(false);

struct Buffered(BufWriter<File>);

impl Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        DIRTY.store(true, Ordering::Relaxed);
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        DIRTY.store(false, Ordering::Relaxed);
        self.0.flush()
    }
}

/// Opens (appending) `file`, creating its folder, and installs it as the process's logger.
pub fn init(file: &Path, level: LevelFilter) -> io::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new().create(true).append(true).open(file)?;
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    let writer = Buffered(BufWriter::with_capacity(64 << 10, f));
    WriteLogger::init(level, config, writer).map_err(io::Error::other)
}

/// Whether records are waiting to be flushed.
pub fn is_dirty() -> bool {
    DIRTY.load(Ordering::Relaxed)
}

/// Writes buffered records to the file.
pub fn flush() {
    log::logger().flush();
}
