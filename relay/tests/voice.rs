//! Voice protocol v1 against a real relay: the protocol flow, fan-out, floor
//! control, batching, slow listeners and shutdown.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Client, STEP, TestRelay, freq};
use krt_migrations::entities::transmissions;
use sea_orm::{Database, EntityTrait};
use serde_json::json;

#[tokio::test]
async fn protocol_flow() {
    let relay = TestRelay::start().await;
    let mut a = Client::connect(&relay.url()).await;
    let auth = a.auth(&relay.token(1)).await;
    assert_eq!(auth["displayName"], "user-1");
    assert_eq!(auth["userId"], relay.user(1).to_string());
    assert!(auth["sessionToken"].as_str().unwrap().len() >= 16);

    let joined = a.join(freq(1050)).await;
    assert_eq!(joined["listenerCount"], 1);
    let key = joined["freqKey"].as_str().unwrap().to_owned();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .unwrap();
    assert_eq!(raw.len(), 32);

    let mut b = relay.client(2).await;
    let joined_b = b.join(freq(1050)).await;
    assert_eq!(joined_b["listenerCount"], 2);
    assert_eq!(joined_b["freqKey"], key.as_str());

    a.ping().await;

    a.send_json(json!({"type": "mute", "freqId": 1050})).await;
    let muted = a.expect_type("mute_ok").await;
    assert_eq!(muted["muted"], true);
    a.send_json(json!({"type": "unmute", "freqId": 1050})).await;
    let unmuted = a.expect_type("mute_ok").await;
    assert_eq!(unmuted["muted"], false);

    a.send_json(json!({"type": "leave", "freqId": 1050})).await;
    assert_eq!(a.expect_type("leave_ok").await["freqId"], 1050);
    a.send_json(json!({"type": "leave", "freqId": 1050})).await;
    let again = a.expect_type("leave_error").await;
    assert_eq!(again["freqId"], 1050);

    // The key lives while listeners remain and is new after the last leaves.
    b.send_json(json!({"type": "leave", "freqId": 1050})).await;
    b.expect_type("leave_ok").await;
    let rejoined = a.join(freq(1050)).await;
    assert_ne!(rejoined["freqKey"], key.as_str());
}

#[tokio::test]
async fn audio_reaches_every_other_listener() {
    let relay = TestRelay::start().await;
    let mut a = relay.client(1).await;
    let mut b = relay.client(2).await;
    let mut c = relay.client(3).await;
    for client in [&mut a, &mut b, &mut c] {
        client.join(freq(1000)).await;
    }

    // Paced faster than real time (50 a second) but within what the
    // listener queues absorb.
    let mut sent = Vec::new();
    for i in 0..50u8 {
        sent.push(a.send_audio(freq(1000), &[i; 80]).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for listener in [&mut b, &mut c] {
        let rx = listener.expect_type("rx").await;
        assert_eq!(rx["action"], "start");
        assert_eq!(rx["username"], "user-1");
        assert_eq!(rx["discordUserId"], relay.user(1).to_string());
        for expected in &sent {
            let frame = listener.next_binary().await;
            assert_eq!(frame.as_ref(), expected.as_slice());
        }
    }
    assert!(
        a.no_audio_within(Duration::from_millis(300)).await,
        "talker got its own audio"
    );
}

#[tokio::test]
async fn muted_listener_gets_nothing() {
    let relay = TestRelay::start().await;
    let mut a = relay.client(1).await;
    let mut b = relay.client(2).await;
    let mut c = relay.client(3).await;
    for client in [&mut a, &mut b, &mut c] {
        client.join(freq(1001)).await;
    }
    b.send_json(json!({"type": "mute", "freqId": 1001})).await;
    b.expect_type("mute_ok").await;

    for i in 0..10u8 {
        a.send_audio(freq(1001), &[i; 40]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for _ in 0..10 {
        c.next_binary().await;
    }
    assert!(b.no_audio_within(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn floor_control_one_talker() {
    let relay = TestRelay::start().await;
    let mut a = relay.client(1).await;
    let mut b = relay.client(2).await;
    let mut c = relay.client(3).await;
    for client in [&mut a, &mut b, &mut c] {
        client.join(freq(1002)).await;
    }

    a.send_audio(freq(1002), b"from-a").await;
    assert_eq!(c.expect_type("rx").await["username"], "user-1");
    assert_eq!(c.next_binary().await.as_ref()[8..], *b"from-a");

    for _ in 0..5 {
        b.send_audio(freq(1002), b"from-b").await;
    }
    let denied = b.expect_type("tx_denied").await;
    assert_eq!(denied["reason"], "busy");
    assert_eq!(denied["freqId"], 1002);
    b.ping().await;
    let hub = &relay.relay.as_ref().unwrap().hub;
    assert_eq!(hub.stats().frames_denied, 5, "every busy frame is counted");
    a.send_audio(freq(1002), b"from-a").await;
    assert_eq!(c.next_binary().await.as_ref()[8..], *b"from-a");

    // Only one tx_denied per attempt.
    b.send_json(json!({"type": "ping"})).await;
    let next = b.next_json().await;
    assert_eq!(
        next["type"], "pong",
        "expected no second tx_denied, got {next}"
    );

    a.send_json(json!({"type": "tx_stop", "freqId": 1002}))
        .await;
    let stop = c.expect_type("rx").await;
    assert_eq!(stop["action"], "stop");
    assert_eq!(stop["username"], "user-1");

    b.send_audio(freq(1002), b"from-b").await;
    let start = c.expect_type("rx").await;
    assert_eq!(start["action"], "start");
    assert_eq!(start["username"], "user-2");
    assert_eq!(c.next_binary().await.as_ref()[8..], *b"from-b");
}

#[tokio::test]
async fn floor_released_after_silence() {
    let relay = TestRelay::start_with(|c| c.floor_timeout = Duration::from_millis(150)).await;
    let mut a = relay.client(1).await;
    let mut b = relay.client(2).await;
    let mut c = relay.client(3).await;
    for client in [&mut a, &mut b, &mut c] {
        client.join(freq(1003)).await;
    }
    a.send_audio(freq(1003), b"a").await;
    c.expect_type("rx").await;
    let stop = c.expect_type("rx").await;
    assert_eq!(stop["action"], "stop", "silence ends the transmission");

    b.send_audio(freq(1003), b"b").await;
    let start = c.expect_type("rx").await;
    assert_eq!(start["username"], "user-2");
    assert_eq!(c.next_binary().await.as_ref()[8..], *b"b");
}

#[tokio::test]
async fn higher_rank_preempts_floor() {
    let relay = TestRelay::start().await;
    let mut low = Client::connect(&relay.url()).await;
    low.auth(&relay.token_with(1, 1, "all")).await;
    let mut high = Client::connect(&relay.url()).await;
    high.auth(&relay.token_with(2, 5, "all")).await;
    let mut listener = relay.client(3).await;
    for client in [&mut low, &mut high, &mut listener] {
        client.join(freq(1004)).await;
    }

    low.send_audio(freq(1004), b"low").await;
    assert_eq!(listener.expect_type("rx").await["username"], "user-1");
    assert_eq!(listener.next_binary().await.as_ref()[8..], *b"low");
    high.send_audio(freq(1004), b"high").await;
    let stop = listener.expect_type("rx").await;
    assert_eq!(stop["action"], "stop");
    assert_eq!(stop["username"], "user-1");
    let start = listener.expect_type("rx").await;
    assert_eq!(start["action"], "start");
    assert_eq!(start["username"], "user-2");
    assert_eq!(listener.next_binary().await.as_ref()[8..], *b"high");

    low.send_audio(freq(1004), b"low2").await;
    assert_eq!(low.expect_type("tx_denied").await["reason"], "preempted");
    high.send_audio(freq(1004), b"high2").await;
    // The preempted talker's frame never reaches the listener.
    assert_eq!(listener.next_binary().await.as_ref()[8..], *b"high2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_listener_does_not_delay_others() {
    // A deep queue absorbs the bursts of this paced-by-timer talker, so the
    // healthy listener loses nothing while the stalled one overflows.
    let relay = TestRelay::start_with(|c| c.queue_depth = 512).await;
    let mut talker = relay.client(1).await;
    let mut healthy = relay.client(2).await;
    let mut stalled = Client::connect_small_buffer(relay.addr).await;
    stalled.auth(&relay.token(3)).await;
    for client in [&mut talker, &mut healthy, &mut stalled] {
        client.join(freq(1005)).await;
    }

    // The stalled client never reads again; 4,000 frames of 1.4 KB (5.6 MB)
    // fill its socket buffers and then its queue. One frame a millisecond
    // is 20 times the rate of a real talker.
    const FRAMES: u64 = 4000;
    let payload = vec![7u8; 1400];
    let receiver = tokio::spawn(async move {
        let mut received = 0;
        while received < FRAMES {
            healthy.next_binary().await;
            received += 1;
        }
        (healthy, received)
    });
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..FRAMES {
        pace.tick().await;
        talker.send_audio(freq(1005), &payload).await;
    }
    let hub = &relay.relay.as_ref().unwrap().hub;
    let (_healthy, received) = tokio::time::timeout(Duration::from_secs(20), receiver)
        .await
        .expect("healthy listener is not delayed")
        .unwrap();
    assert_eq!(received, FRAMES);

    let stats = hub.stats();
    assert!(
        stats.frames_dropped > 0,
        "stalled listener drops frames: {stats:?}"
    );
    let stalled_session = hub.sessions_of(&relay.user(3)).pop().unwrap();
    let (queued, drops) = stalled_session.audio_counts();
    assert_eq!(queued + drops, FRAMES);
    assert!(drops > 0);
    assert!(stalled_session.queue_len() <= hub.config.queue_capacity());
    drop(stalled);
}

#[tokio::test]
async fn listener_updates_are_batched() {
    let relay =
        TestRelay::start_with(|c| c.listener_update_interval = Duration::from_millis(600)).await;
    let mut watcher = relay.client(100).await;
    watcher.join(freq(1006)).await;
    // Let the first tick report the watcher alone, so later ticks count joins.
    tokio::time::sleep(Duration::from_millis(700)).await;
    while watcher
        .next_within(Duration::from_millis(50))
        .await
        .is_some()
    {}

    let mut others = Vec::new();
    for n in 0..5 {
        let mut client = relay.client(n).await;
        client.join(freq(1006)).await;
        others.push(client);
    }
    let mut updates = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout_at(deadline, watcher.ws.next_message()).await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "listener_update" {
                updates.push(value["listenerCount"].as_u64().unwrap());
            }
        }
    }
    assert!(!updates.is_empty(), "no listener_update arrived");
    assert!(
        updates.len() <= 2,
        "five joins gave {} updates: {updates:?}",
        updates.len()
    );
    assert_eq!(*updates.last().unwrap(), 6);
}

trait NextMessage {
    async fn next_message(
        &mut self,
    ) -> Option<
        Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
    >;
}

impl<
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
> NextMessage for S
{
    async fn next_message(
        &mut self,
    ) -> Option<
        Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
    > {
        futures_util::StreamExt::next(self).await
    }
}

#[tokio::test]
async fn shutdown_flushes_transmission_rows() {
    let mut relay = TestRelay::start().await;
    let mut a = relay.client(1).await;
    let mut b = relay.client(2).await;
    a.join(freq(1007)).await;
    b.join(freq(1007)).await;

    // One finished transmission and one still open at shutdown.
    for _ in 0..10 {
        a.send_audio(freq(1007), &[1; 80]).await;
    }
    a.send_json(json!({"type": "tx_stop", "freqId": 1007}))
        .await;
    a.ping().await;
    for _ in 0..4 {
        b.send_audio(freq(1007), &[2; 80]).await;
    }
    b.ping().await;

    let report = relay.shutdown().await;
    assert_eq!(report.rows_written, 2);
    assert_eq!(report.rows_lost, 0);
    let close = a.expect_close().await;
    assert_eq!(u16::from(close.code), 1001);

    let url = format!("sqlite://{}", relay.dir.path().join("krt.db").display());
    let db = Database::connect(&url).await.unwrap();
    let mut rows = transmissions::Entity::find().all(&db).await.unwrap();
    rows.sort_by_key(|r| r.id);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].user_id, relay.user(1).to_string());
    assert_eq!(rows[0].frames, 10);
    assert_eq!(rows[0].freq_id, 1007);
    assert_eq!(rows[1].user_id, relay.user(2).to_string());
    assert_eq!(rows[1].frames, 4);
    assert!(rows.iter().all(|r| r.ended_at_ms >= r.started_at_ms));
}

#[tokio::test]
async fn fourth_session_replaces_oldest() {
    let relay = TestRelay::start().await;
    let token = relay.token(1);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&relay.url()).await;
        client.auth(&token).await;
        sessions.push(client);
    }
    let mut fourth = Client::connect(&relay.url()).await;
    fourth.auth(&token).await;
    let close = sessions[0].expect_close().await;
    assert_eq!(u16::from(close.code), 4003);
    assert!(close.reason.contains("replaced"), "{}", close.reason);
    for client in sessions.iter_mut().skip(1) {
        client.ping().await;
    }
    fourth.ping().await;
}

#[tokio::test]
async fn silent_connections_time_out() {
    let relay = TestRelay::start_with(|c| {
        c.auth_timeout = Duration::from_millis(200);
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut unauthenticated = Client::connect(&relay.url()).await;
    let close = unauthenticated.expect_close().await;
    assert_eq!(u16::from(close.code), 4002);

    let mut idle = relay.client(1).await;
    let started = tokio::time::Instant::now();
    let close = idle.expect_close().await;
    assert_eq!(u16::from(close.code), 4000);
    assert!(started.elapsed() < STEP);
}

#[tokio::test]
async fn writers_run_on_their_own_threads() {
    let relay = TestRelay::start().await;
    let hub = &relay.relay.as_ref().unwrap().hub;
    let (name_tx, name_rx) = tokio::sync::oneshot::channel();
    hub.spawn_writer(async move {
        let _ = name_tx.send(std::thread::current().name().map(str::to_owned));
    });
    let name = name_rx.await.unwrap();
    assert_eq!(name.as_deref(), Some("krt-writer"));

    // Audio still flows between sessions whose writers live there.
    let mut a = relay.client(1).await;
    let mut b = relay.client(2).await;
    a.join(freq(1009)).await;
    b.join(freq(1009)).await;
    a.send_audio(freq(1009), b"through-writer").await;
    assert_eq!(b.next_binary().await.as_ref()[8..], *b"through-writer");
}
