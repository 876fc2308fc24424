//! Faults: a locked database and a vanished control client must not stop
//! audio, and nothing logged may be lost.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestRelay, freq};
use krt_migrations::entities::{audit_log, transmissions};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, Database, EntityTrait, PaginatorTrait, TransactionTrait,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_database_delays_rows_not_audio() {
    let mut relay = TestRelay::start().await;
    let url = format!("sqlite://{}", relay.dir.path().join("krt.db").display());
    let blocker = Database::connect(&url).await.unwrap();
    let lock = blocker.begin().await.unwrap();
    // A write inside an open transaction holds SQLite's write lock.
    audit_log::ActiveModel {
        actor: Set("test".into()),
        action: Set("lock".into()),
        target: Set("db".into()),
        detail: Set(String::new()),
        created_at_ms: Set(0),
        ..Default::default()
    }
    .insert(&lock)
    .await
    .unwrap();

    let mut talker = relay.client(1).await;
    let mut listener = relay.client(2).await;
    talker.join(freq(1700)).await;
    listener.join(freq(1700)).await;
    for round in 0..3u8 {
        for i in 0..5u8 {
            let sent = talker.send_audio(freq(1700), &[round, i]).await;
            let received = tokio::time::timeout(Duration::from_millis(500), listener.next_binary())
                .await
                .expect("audio flows while the database is locked");
            assert_eq!(received.as_ref(), sent.as_slice());
        }
        talker
            .send_json(json!({"type": "tx_stop", "freqId": 1700}))
            .await;
        talker.ping().await;
    }

    // Hold the lock past the writer's busy timeout so that a write fails
    // and is retried.
    let hub = std::sync::Arc::clone(&relay.relay.as_ref().unwrap().hub);
    let stats = hub.txlog.stats();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while stats.failures.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write failed while locked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats.written.load(Ordering::Relaxed), 0);
    lock.rollback().await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while stats.written.load(Ordering::Relaxed) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows not written after unlock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = relay.shutdown().await;
    assert_eq!(report.rows_written, 3);
    assert_eq!(report.rows_lost, 0);
    assert_eq!(
        transmissions::Entity::find().count(&blocker).await.unwrap(),
        3
    );
}

#[tokio::test]
async fn vanished_control_client_leaves_relay_serving() {
    let relay = TestRelay::start().await;
    let mut talker = relay.client(1).await;
    let mut listener = relay.client(2).await;
    talker.join(freq(1800)).await;
    listener.join(freq(1800)).await;

    let path = relay.dir.path().join("control.sock");
    let mut control = tokio::net::UnixStream::connect(&path).await.unwrap();
    control.write_all(b"{\"id\":1,\"op\":\"sta").await.unwrap();
    drop(control);

    let sent = talker.send_audio(freq(1800), b"after").await;
    assert_eq!(listener.next_binary().await.as_ref(), sent.as_slice());

    let mut again = tokio::net::UnixStream::connect(&path).await.unwrap();
    again
        .write_all(b"{\"id\":2,\"op\":\"stats\"}\n")
        .await
        .unwrap();
    let mut reply = String::new();
    let mut reader = tokio::io::BufReader::new(again);
    tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut reply)
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["data"]["sessions"], 2);
}

#[tokio::test]
async fn shutdown_skips_unfinished_http_requests() {
    let mut relay = TestRelay::start_with(|config| {
        config.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    // Headers that never end hold the connection in the HTTP phase.
    let mut stalled = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    stalled
        .write_all(b"GET /voice HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    let mut client = relay.client(1).await;
    client.ping().await;

    let started = std::time::Instant::now();
    relay.shutdown().await;
    // The stalled request gets 1 s. Waiting for its headers would take
    // the 5 s cap on waiting for sessions.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the stalled connection is closed"
    );
}
