//! Micro-benchmarks of the relay's hot paths: frame header parsing, fan-out
//! of one frame to 100 listener queues, and token checks on a cache hit and
//! a cache miss.
//!
//! Run with `cargo bench -p krt-relay --bench hot_paths`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use krt_relay::RelayConfig;
use krt_relay::auth::Authenticator;
use krt_relay::hub::Hub;
use krt_relay::session_shared::{Outbound, SessionShared};
use krt_relay::txlog::TxLog;
use krt_shared::frame::{DEFAULT_MAX_FRAME_LEN, FrameHeader};
use krt_shared::token::{Claims, TokenSigner, new_token_id};
use krt_shared::{FreqId, FreqSet, UserIdKey};
use tokio::sync::mpsc;

fn claims(n: u64, now: u64) -> Claims {
    Claims {
        sub: UserIdKey::from_bytes([5; 32]).pseudonymize(n),
        guild: "1".into(),
        name: format!("user-{n}"),
        rank: 0,
        freqs: FreqSet::all(),
        iat: now,
        exp: now + 3600,
        jti: new_token_id(),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn frame_header(c: &mut Criterion) {
    let frame = FrameHeader {
        freq: FreqId::new(1050).unwrap(),
        seq: 7,
    }
    .encode(&[0u8; 80]);
    c.bench_function("frame_header_parse", |b| {
        b.iter(|| FrameHeader::parse(std::hint::black_box(&frame), DEFAULT_MAX_FRAME_LEN))
    });
}

/// A hub with `listeners` sessions on one frequency; the receivers are
/// returned so the benchmark can drain the queues between batches.
fn hub_with_listeners(
    runtime: &tokio::runtime::Runtime,
    listeners: u64,
) -> (Arc<Hub>, Arc<SessionShared>, Vec<mpsc::Receiver<Outbound>>) {
    let config = Arc::new(RelayConfig {
        queue_depth: 4096,
        ..RelayConfig::default()
    });
    let (hub, talker, receivers) = runtime.block_on(async {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        let (txlog, _writer) = TxLog::spawn(db, 1000, 100);
        let auth = Authenticator::new(TokenSigner::generate().verifier(), 100);
        let hub = Arc::new(Hub::new(Arc::clone(&config), auth, txlog));
        let freq = FreqId::new(1000).unwrap();
        let peer = "127.0.0.1:1".parse().unwrap();
        let mut receivers = Vec::new();
        let mut talker = None;
        for n in 0..=listeners {
            let (queue, receiver) = mpsc::channel(config.queue_capacity());
            let session = hub.register(&claims(n, now_secs()), peer, queue);
            hub.join(&session, freq).unwrap();
            if n == 0 {
                talker = Some(session);
            } else {
                receivers.push(receiver);
            }
        }
        (hub, talker.unwrap(), receivers)
    });
    (hub, talker, receivers)
}

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (hub, talker, mut receivers) = hub_with_listeners(&runtime, 100);
    let freq = FreqId::new(1000).unwrap();
    let frame = Bytes::from(FrameHeader { freq, seq: 0 }.encode(&[0u8; 80]));
    let mut group = c.benchmark_group("fan_out");
    group.throughput(Throughput::Elements(100));
    group.bench_function("one_frame_to_100_queues", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            let mut left = iterations;
            while left > 0 {
                // Batches stay below the queue depth, and draining is not timed.
                let batch = left.min(1000);
                let start = Instant::now();
                for _ in 0..batch {
                    hub.forward(freq, &talker, &frame, Instant::now());
                }
                total += start.elapsed();
                for receiver in &mut receivers {
                    while receiver.try_recv().is_ok() {}
                }
                left -= batch;
            }
            total
        })
    });
    group.finish();
}

fn token_checks(c: &mut Criterion) {
    let signer = TokenSigner::generate();
    let auth = Authenticator::new(signer.verifier(), 1_000_000);
    let now = now_secs();
    let token = signer.sign(&claims(1, now));
    auth.authenticate(&token, now).unwrap();
    let mut group = c.benchmark_group("token");
    group.bench_function("cache_hit", |b| {
        b.iter(|| {
            auth.authenticate(std::hint::black_box(&token), now)
                .unwrap()
        })
    });
    let mut n = 10;
    group.bench_function("cache_miss", |b| {
        b.iter_batched(
            || {
                n += 1;
                signer.sign(&claims(n, now))
            },
            |token| auth.authenticate(&token, now).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, frame_header, fan_out, token_checks);
criterion_main!(benches);
