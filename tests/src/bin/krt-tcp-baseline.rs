//! Bare loopback TCP baseline for the relay benchmarks.
//!
//! One writer thread writes a fixed-size message to every socket of a
//! talker's group, paced like audio (each talker 50 messages a second), and
//! one reader thread drains every socket. The writer's CPU time per write is
//! the floor that the kernel sets for one write of one frame: on loopback,
//! the receive path and the wake-up of the reader are charged to the writer.
//! Each message starts with the time its talker's tick began, so the reader
//! also reports the latency that the kernel alone gives this fan-out.
//!
//! Run it in the same session as a relay scenario, with the same numbers:
//!
//! ```text
//! krt-tcp-baseline --sockets 600 --talkers 6 --fanout 99 --duration 10s
//! ```
//!
//! `krt-tcp-baseline --help` lists every option.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use krt_tests::loadgen::histogram::AtomicHistogram;

/// Time between two messages of one talker (one 20 ms audio frame).
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Readiness events the reader takes from epoll per call.
const EPOLL_BATCH: usize = 256;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "krt-tcp-baseline",
    version,
    about = "Bare loopback TCP baseline: CPU per write of one small message, paced like audio",
    after_help = "Socket s belongs to the groups of talkers (s + j) mod TALKERS for \
                  j < JOINS. Each talker tick writes one message to FANOUT sockets of its \
                  group, one write each, so the writer makes TALKERS x 50 x FANOUT writes \
                  a second, like a relay forwarding TALKERS talkers to FANOUT listeners \
                  each. Pin it like the relay, for example --writer-cpu 0 --reader-cpu 1."
)]
struct Args {
    /// Reader sockets (connections) to open
    #[arg(long, default_value_t = 600)]
    sockets: usize,
    /// Talkers; each sends 50 messages a second to its group
    #[arg(long, default_value_t = 6)]
    talkers: usize,
    /// Talker groups each socket belongs to, like the load generator's
    /// --joins-per-user: socket s is in the groups of talkers (s + j) mod
    /// TALKERS for j < JOINS
    #[arg(long, default_value_t = 1)]
    joins: usize,
    /// Sockets written per talker message [default: the group size minus
    /// one, the listeners of a frequency other than the talker]
    #[arg(long)]
    fanout: Option<usize>,
    /// Message size in bytes; 90 is an 80-byte payload with the 8-byte frame
    /// header and the 2-byte WebSocket header. The first 8 bytes carry the
    /// send time, so at least 8
    #[arg(long, default_value_t = 90)]
    message_bytes: usize,
    /// Length of the measurement window, for example 10s
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Writing before the measurement window, not counted
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// CPU the writer thread is pinned to; none leaves it unpinned
    #[arg(long)]
    writer_cpu: Option<usize>,
    /// CPU the reader thread is pinned to; none leaves it unpinned
    #[arg(long)]
    reader_cpu: Option<usize>,
    /// Print one JSON object on one line instead of the table
    #[arg(long)]
    json: bool,
}

/// Figures of one run.
#[derive(Debug, serde::Serialize)]
struct Report {
    sockets: usize,
    talkers: usize,
    fanout: usize,
    message_bytes: usize,
    window_secs: f64,
    writes: u64,
    writes_per_sec: f64,
    writer_cpu_secs: f64,
    writer_user_secs: f64,
    writer_sys_secs: f64,
    cpu_us_per_write: f64,
    reader_cpu_secs: f64,
    bytes_read: u64,
    late_ticks: u64,
    /// From the start of a talker's tick to the reader's read of the
    /// message, for ticks in the window: p50, p99, p99.9 and max, and the
    /// count.
    latency_ms: Latency,
}

/// Latency figures in milliseconds.
#[derive(Debug, serde::Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    samples: u64,
}

/// Size of the send time stamp at the start of each message.
const STAMP_LEN: usize = 8;

/// What the reader needs to time the messages.
struct Timing {
    /// The writer's time base; stamps are nanoseconds since it.
    begin: Instant,
    /// Stamps in this range count.
    window_ns: std::ops::Range<u64>,
    message_bytes: usize,
    latency: AtomicHistogram,
}

/// Position of one socket's reader in the current message.
#[derive(Clone, Copy, Default)]
struct Partial {
    offset: usize,
    stamp: [u8; STAMP_LEN],
}

impl Partial {
    /// Consumes `bytes` read at `now_ns` and records every message they
    /// complete.
    fn feed(&mut self, bytes: &[u8], now_ns: u64, timing: &Timing) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.offset < STAMP_LEN {
                let take = (STAMP_LEN - self.offset).min(rest.len());
                self.stamp[self.offset..self.offset + take].copy_from_slice(&rest[..take]);
                self.offset += take;
                rest = &rest[take..];
                continue;
            }
            let take = (timing.message_bytes - self.offset).min(rest.len());
            self.offset += take;
            rest = &rest[take..];
            if self.offset == timing.message_bytes {
                let sent = u64::from_be_bytes(self.stamp);
                if timing.window_ns.contains(&sent) {
                    timing.latency.record(now_ns.saturating_sub(sent));
                }
                self.offset = 0;
            }
        }
    }
}

fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: the set is zeroed and only CPU_SET writes to it; pid 0 is the
    // calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// User and system CPU seconds of the calling thread.
fn thread_cpu() -> (f64, f64) {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// Opens `count` loopback connections and returns (writer side, reader side).
fn connect_pairs(count: usize) -> io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(count);
    let mut readers = Vec::with_capacity(count);
    for _ in 0..count {
        let reader = TcpStream::connect(addr)?;
        let (writer, _) = listener.accept()?;
        // The relay sets TCP_NODELAY on every accepted connection.
        writer.set_nodelay(true)?;
        reader.set_nonblocking(true)?;
        writers.push(writer);
        readers.push(reader);
    }
    Ok((writers, readers))
}

/// Drains every reader socket until `stop`, with one epoll set. Returns the
/// bytes read and the thread's CPU seconds.
fn read_all(
    readers: Vec<TcpStream>,
    cpu: Option<usize>,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    timing: Arc<Timing>,
) -> io::Result<f64> {
    use std::os::fd::AsRawFd;

    if let Some(cpu) = cpu {
        pin_to_cpu(cpu)?;
    }
    // SAFETY: epoll_create1 has no memory arguments.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    for (index, reader) in readers.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: index as u64,
        };
        // SAFETY: both descriptors are open and the event outlives the call.
        if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, reader.as_raw_fd(), &mut event) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
    }

    let start = thread_cpu();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_BATCH];
    let mut buffer = [0u8; 4096];
    let mut partials = vec![Partial::default(); readers.len()];
    let mut readers = readers;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the buffer holds EPOLL_BATCH events.
        let ready =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), EPOLL_BATCH as i32, 100) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        for event in &events[..ready as usize] {
            let index = event.u64 as usize;
            let reader = &mut readers[index];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                        let now_ns = timing.begin.elapsed().as_nanos() as u64;
                        partials[index].feed(&buffer[..n], now_ns, &timing);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => return Err(error),
                }
            }
        }
    }
    let end = thread_cpu();
    // SAFETY: the descriptor is ours and closed once.
    unsafe { libc::close(epoll) };
    Ok((end.0 + end.1) - (start.0 + start.1))
}

/// Groups of sockets per talker: socket s belongs to the groups of talkers
/// (s + j) mod talkers for j < joins.
fn talker_groups(sockets: usize, talkers: usize, joins: usize) -> Vec<Vec<usize>> {
    (0..talkers)
        .map(|talker| {
            (0..sockets)
                .filter(|socket| (talker + talkers - socket % talkers) % talkers < joins)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn run(args: &Args) -> Result<Report, String> {
    if args.sockets == 0 || args.talkers == 0 || args.talkers > args.sockets {
        return Err(format!(
            "invalid --sockets {} / --talkers {}: use at least one talker and no more talkers than sockets",
            args.sockets, args.talkers
        ));
    }
    if args.joins == 0 || args.joins > args.talkers {
        return Err(format!(
            "invalid --joins {}: use 1 to --talkers ({})",
            args.joins, args.talkers
        ));
    }
    let groups = talker_groups(args.sockets, args.talkers, args.joins);
    let per_group = groups.iter().map(Vec::len).min().unwrap_or(0);
    let fanout = args.fanout.unwrap_or(per_group.saturating_sub(1)).max(1);
    if fanout > per_group {
        return Err(format!(
            "invalid --fanout {fanout}: a talker's group has only {per_group} sockets"
        ));
    }
    if args.message_bytes < STAMP_LEN || args.message_bytes > 65_536 {
        return Err(format!(
            "invalid --message-bytes {}: use {STAMP_LEN} to 65536",
            args.message_bytes
        ));
    }

    let (mut writers, readers) = connect_pairs(args.sockets)
        .map_err(|e| format!("failed to open {} loopback connections: {e}", args.sockets))?;
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let window_start_ns = args.warmup.as_nanos() as u64;
    let timing = Arc::new(Timing {
        begin,
        window_ns: window_start_ns..window_start_ns + args.duration.as_nanos() as u64,
        message_bytes: args.message_bytes,
        latency: AtomicHistogram::new(),
    });
    let reader = {
        let (stop, bytes, cpu) = (Arc::clone(&stop), Arc::clone(&bytes), args.reader_cpu);
        let timing = Arc::clone(&timing);
        thread::spawn(move || read_all(readers, cpu, stop, bytes, timing))
    };
    if let Some(cpu) = args.writer_cpu {
        pin_to_cpu(cpu).map_err(|e| format!("failed to pin the writer to CPU {cpu}: {e}"))?;
    }

    // The talkers' ticks are spread evenly over one frame interval, like the
    // load generator's talkers.
    let groups: Vec<Vec<usize>> = groups
        .into_iter()
        .map(|group| group.into_iter().take(fanout).collect())
        .collect();
    let mut message = vec![0x5au8; args.message_bytes];
    let tick = FRAME_INTERVAL / args.talkers as u32;
    let window_start = begin + args.warmup;
    let window_end = window_start + args.duration;
    let mut next = begin;
    let mut talker = 0;
    let (mut writes, mut late_ticks) = (0u64, 0u64);
    let mut cpu_start = None;
    loop {
        let now = Instant::now();
        if now < next {
            thread::sleep(next - now);
        } else if now > next + tick {
            late_ticks += 1;
        }
        if cpu_start.is_none() && next >= window_start {
            cpu_start = Some((thread_cpu(), Instant::now()));
        }
        if next >= window_end {
            break;
        }
        let stamp = begin.elapsed().as_nanos() as u64;
        message[..STAMP_LEN].copy_from_slice(&stamp.to_be_bytes());
        for &socket in &groups[talker] {
            writers[socket]
                .write_all(&message)
                .map_err(|e| format!("write to socket {socket} failed: {e}"))?;
            if cpu_start.is_some() {
                writes += 1;
            }
        }
        talker = (talker + 1) % args.talkers;
        next += tick;
    }
    let cpu_end = thread_cpu();
    let ((user_start, sys_start), started) = cpu_start.expect("the window starts before it ends");
    let window_secs = started.elapsed().as_secs_f64();

    // Let the reader catch up before it stops.
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let reader_cpu_secs = reader
        .join()
        .map_err(|_| "the reader thread panicked".to_owned())?
        .map_err(|e| format!("reading failed: {e}"))?;

    let user = cpu_end.0 - user_start;
    let sys = cpu_end.1 - sys_start;
    let latency = timing.latency.snapshot();
    let ms = |q: f64| latency.quantile(q).map_or(0.0, |ns| ns as f64 / 1e6);
    Ok(Report {
        sockets: args.sockets,
        talkers: args.talkers,
        fanout,
        message_bytes: args.message_bytes,
        window_secs,
        writes,
        writes_per_sec: writes as f64 / window_secs,
        writer_cpu_secs: user + sys,
        writer_user_secs: user,
        writer_sys_secs: sys,
        cpu_us_per_write: if writes > 0 {
            (user + sys) * 1e6 / writes as f64
        } else {
            0.0
        },
        reader_cpu_secs,
        bytes_read: bytes.load(Ordering::Relaxed),
        late_ticks,
        latency_ms: Latency {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: latency.max() as f64 / 1e6,
            samples: latency.count(),
        },
    })
}

fn print_table(report: &Report) {
    println!(
        "layout               {} sockets, {} talkers, {} writes per message, {} B each",
        report.sockets, report.talkers, report.fanout, report.message_bytes
    );
    println!(
        "window               {:.2} s, {} writes ({:.0} per s), {} late ticks",
        report.window_secs, report.writes, report.writes_per_sec, report.late_ticks
    );
    println!(
        "writer CPU           {:.3} s (user {:.3}, sys {:.3}), {:.2} us per write",
        report.writer_cpu_secs,
        report.writer_user_secs,
        report.writer_sys_secs,
        report.cpu_us_per_write
    );
    println!(
        "reader               {:.3} s CPU, {} bytes read in all",
        report.reader_cpu_secs, report.bytes_read
    );
    let latency = &report.latency_ms;
    println!(
        "latency ms           p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  ({} messages)",
        latency.p50, latency.p99, latency.p999, latency.max, latency.samples
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("the report serializes to JSON")
                );
            } else {
                print_table(&report);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("krt-tcp-baseline: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_messages_are_timed_once() {
        let timing = Timing {
            begin: Instant::now(),
            window_ns: 0..1_000,
            message_bytes: 12,
            latency: AtomicHistogram::new(),
        };
        let mut first = 500u64.to_be_bytes().to_vec();
        first.extend_from_slice(&[0; 4]);
        let mut second = 2_000u64.to_be_bytes().to_vec();
        second.extend_from_slice(&[0; 4]);
        let stream = [first, second].concat();
        let mut partial = Partial::default();
        // Reads cut through the stamp and through the padding.
        partial.feed(&stream[..3], 900, &timing);
        partial.feed(&stream[3..15], 900, &timing);
        partial.feed(&stream[15..], 2_100, &timing);
        let latency = timing.latency.snapshot();
        // The second stamp lies outside the window.
        assert_eq!(latency.count(), 1);
        assert_eq!(latency.max(), 400);
        assert_eq!(partial.offset, 0);
    }

    #[test]
    fn groups_follow_talker_layout() {
        let groups = talker_groups(600, 6, 1);
        assert_eq!(groups.len(), 6);
        assert!(groups.iter().all(|group| group.len() == 100));
        assert_eq!(groups[1][..3], [1, 7, 13]);
        let four = talker_groups(600, 6, 4);
        assert!(four.iter().all(|group| group.len() == 400));
        // Socket 5 joins talkers 5, 0, 1 and 2, as user 5 of the load
        // generator joins those frequencies.
        let of_five: Vec<usize> = (0..6).filter(|t| four[*t].contains(&5)).collect();
        assert_eq!(of_five, [0, 1, 2, 5]);
    }
}
