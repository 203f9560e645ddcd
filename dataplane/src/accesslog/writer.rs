//! The request side's [`Sink`] and the writer thread behind it.
//!
//! The sink is a bounded queue of finished records: `send` never blocks and never waits
//! for the writer; a full queue drops the record and counts it
//! (`parapet_access_log_dropped_total`). The writer is a thread of its own (a slow disk or
//! a pipe nobody reads blocks it, not a traffic worker): it formats records into a buffer
//! and writes the buffer when the queue runs dry, when it holds `WRITE_AT` bytes, or
//! `FLUSH_EVERY` after its oldest line, whichever comes first. An empty queue is looked at
//! again every `POLL`, rather than waited on: a waiting receiver would have to be woken by
//! a system call from the request that sends the next record.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, TryRecvError, TrySendError},
    },
    time::Duration,
};

use anyhow::Context as _;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::{format::Format, record::Record};
use crate::metrics::AccessLogMetrics;

/// Write the buffer once it holds this much.
const WRITE_AT: usize = 64 * 1024;
/// Lines wait no longer than this in the buffer while records keep coming.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How often an empty queue is looked at.
const POLL: Duration = Duration::from_millis(10);

/// Where finished records go: the writer's queue.
pub struct Sink {
    queue: SyncSender<Box<Record>>,
    dropped: Counter,
}

impl Sink {
    /// Queues the record, or drops it (counted) when the queue is full. Never blocks.
    pub fn send(&self, record: Box<Record>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(record)
        {
            self.dropped.inc();
        }
    }
}

/// Where lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    /// Appended to.
    File(PathBuf),
}

/// The running access log: the sink for the request side, and the writer's end.
pub struct AccessLog {
    pub sink: Arc<Sink>,
    stop: Arc<AtomicBool>,
    /// Disconnects when the writer thread ends.
    done: Receiver<()>,
}

impl AccessLog {
    /// Starts the writer thread. A file is opened here, so a path that cannot be written
    /// stops the start with the reason; a named pipe is opened by the writer (opening one
    /// waits for a reader).
    pub fn start(
        format: Format,
        to: Destination,
        buffer: usize,
        counters: AccessLogMetrics,
    ) -> anyhow::Result<AccessLog> {
        let out = match to {
            Destination::Stdout => Out::Stdout,
            Destination::File(path) if is_fifo(&path) => Out::Fifo(path),
            Destination::File(path) => Out::File(open(&path)?, path),
        };
        let (queue, records) = std::sync::mpsc::sync_channel(buffer.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = std::sync::mpsc::sync_channel(0);
        let writer = Writer {
            records,
            format,
            out,
            counters: counters.clone(),
            stop: stop.clone(),
            failing: false,
        };
        std::thread::Builder::new()
            .name("parapet-access-log".into())
            .spawn(move || {
                let _done = done_tx;
                writer.run();
            })
            .context("cannot start the access log's writer thread")?;
        Ok(AccessLog {
            sink: Arc::new(Sink {
                queue,
                dropped: counters.dropped,
            }),
            stop,
            done,
        })
    }

    /// Has the writer write what is queued and stop; waits for it up to `within` (a
    /// writer stuck on a full disk or an unread pipe is left behind).
    pub fn close(&self, within: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.done.recv_timeout(within);
    }
}

fn open(path: &Path) -> anyhow::Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the access log {}", path.display()))
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

enum Out {
    Stdout,
    File(File, PathBuf),
    /// A named pipe, not opened yet.
    Fifo(PathBuf),
}

impl Out {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            // Locked for the whole buffer, so the process's other lines on stdout never
            // land inside one of these.
            Self::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Self::File(f, _) => f.write_all(buf),
            Self::Fifo(_) => Ok(()),
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Stdout => "stdout".into(),
            Self::File(_, p) | Self::Fifo(p) => p.display().to_string(),
        }
    }
}

struct Writer {
    records: Receiver<Box<Record>>,
    format: Format,
    out: Out,
    counters: AccessLogMetrics,
    stop: Arc<AtomicBool>,
    /// The last write failed (reported once, until a write succeeds again).
    failing: bool,
}

impl Writer {
    fn run(mut self) {
        if let Out::Fifo(path) = &self.out {
            // Blocks until the pipe has a reader; meanwhile the queue fills and drops.
            match open(path) {
                Ok(f) => self.out = Out::File(f, path.clone()),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "access log not written");
                    return;
                }
            }
        }
        let mut buf = Vec::with_capacity(WRITE_AT + 4096);
        let mut lines = 0u64;
        let mut oldest: Option<Instant> = None;
        loop {
            match self.records.try_recv() {
                Ok(mut record) => {
                    let upstream = record.tally.take_upstream();
                    self.format.write(&mut buf, &record, &upstream);
                    // Freed here, with what it holds (pools, endpoints), not on a worker.
                    drop((record, upstream));
                    lines += 1;
                    let since = *oldest.get_or_insert_with(Instant::now);
                    if buf.len() >= WRITE_AT || since.elapsed() >= FLUSH_EVERY {
                        self.write(&mut buf, &mut lines);
                        oldest = None;
                    }
                }
                Err(TryRecvError::Empty) => {
                    if !buf.is_empty() {
                        self.write(&mut buf, &mut lines);
                        oldest = None;
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(POLL);
                }
                Err(TryRecvError::Disconnected) => {
                    self.write(&mut buf, &mut lines);
                    return;
                }
            }
        }
    }

    /// Writes the buffer out; a failure is counted per line lost and reported once.
    fn write(&mut self, buf: &mut Vec<u8>, lines: &mut u64) {
        if buf.is_empty() {
            return;
        }
        match self.out.write_all(buf) {
            Ok(()) => {
                self.counters.written.inc_by(*lines);
                if std::mem::take(&mut self.failing) {
                    tracing::info!(to = %self.out.name(), "access log written again");
                }
            }
            Err(e) => {
                self.counters.write_errors.inc_by(*lines);
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(to = %self.out.name(), error = %e, "access log lines lost: cannot write them (counted in parapet_access_log_write_errors_total; reported again only after a write succeeds)");
                }
            }
        }
        buf.clear();
        *lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use http::Request;

    use super::*;
    use crate::accesslog::field::Field;

    fn record(path: &str) -> Box<Record> {
        let req = Request::get(path).body(()).unwrap();
        let rid = http::HeaderValue::from_static("rid");
        let client = "127.0.0.1:1".parse().unwrap();
        let mut r = Record::arrive(&req, client, None, Instant::now(), &rid);
        r.status = 204;
        r
    }

    fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn records_reach_the_file_and_are_flushed_when_the_queue_is_idle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let counters = AccessLogMetrics::default();
        let log = AccessLog::start(
            Format::Json(vec![Field::Path, Field::Status]),
            Destination::File(path.clone()),
            16,
            counters.clone(),
        )
        .unwrap();
        log.sink.send(record("/one"));
        log.sink.send(record("/two"));
        wait_until("two lines", || counters.written.get() == 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"path\":\"/one\",\"status\":204}\n{\"path\":\"/two\",\"status\":204}\n"
        );
        log.sink.send(record("/three"));
        log.close(Duration::from_secs(5));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        assert_eq!(counters.dropped.get(), 0);
    }

    #[test]
    fn a_blocked_writer_drops_and_counts_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("mkfifo is not available; skipped");
            return;
        }
        let counters = AccessLogMetrics::default();
        let log = AccessLog::start(
            Format::Text(vec![Field::Path]),
            Destination::File(fifo.clone()),
            2,
            counters.clone(),
        )
        .unwrap();
        // Nobody reads the pipe: the writer waits to open it, and the queue holds two.
        for _ in 0..10 {
            log.sink.send(record("/x"));
        }
        assert_eq!(counters.dropped.get(), 8);
        // A reader comes: what was queued is written.
        let mut reader = File::open(&fifo).unwrap();
        let mut got = String::new();
        while got.lines().count() < 2 {
            let mut chunk = [0u8; 256];
            let n = reader.read(&mut chunk).unwrap();
            assert!(n > 0, "the pipe closed early: {got:?}");
            got.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
        assert_eq!(got, "path=/x\npath=/x\n");
        log.close(Duration::from_secs(5));
    }

    #[test]
    fn write_errors_are_counted_not_fatal() {
        let counters = AccessLogMetrics::default();
        // /dev/full refuses every write with ENOSPC.
        if !Path::new("/dev/full").exists() {
            return;
        }
        let log = AccessLog::start(
            Format::Text(vec![Field::Path]),
            Destination::File("/dev/full".into()),
            16,
            counters.clone(),
        )
        .unwrap();
        log.sink.send(record("/a"));
        log.sink.send(record("/b"));
        wait_until("two lost lines", || counters.write_errors.get() == 2);
        assert_eq!(counters.written.get(), 0);
        log.close(Duration::from_secs(5));
    }

    #[test]
    fn a_path_that_cannot_be_opened_stops_the_start() {
        let e = AccessLog::start(
            Format::Text(vec![Field::Path]),
            Destination::File("/nonexistent-dir/access.log".into()),
            1,
            AccessLogMetrics::default(),
        )
        .err()
        .unwrap();
        assert!(
            format!("{e:#}").contains("cannot open the access log /nonexistent-dir/access.log"),
            "{e:#}"
        );
    }
}
