//! Malformed and hostile input: each case gets a clear error or close code
//! and leaves the session, its frequencies and other sessions intact.

mod common;

use std::time::Duration;

use common::{Client, TestRelay, freq, now_secs};
use krt_shared::FreqSet;
use krt_shared::token::{Claims, TokenSigner, new_token_id};
use serde_json::json;

/// A talker, a listener on 1100, and a check that audio still flows.
struct Pair {
    talker: Client,
    listener: Client,
}

impl Pair {
    async fn new(relay: &TestRelay) -> Self {
        let mut talker = relay.client(1).await;
        let mut listener = relay.client(2).await;
        talker.join(freq(1100)).await;
        listener.join(freq(1100)).await;
        Self { talker, listener }
    }

    /// Audio from the talker still reaches the listener, and both still reply to pings.
    async fn still_works(&mut self) {
        let sent = self.talker.send_audio(freq(1100), b"still-alive").await;
        assert_eq!(self.listener.next_binary().await.as_ref(), sent.as_slice());
        self.talker.ping().await;
        self.listener.ping().await;
    }
}

#[tokio::test]
async fn invalid_text_messages_get_errors() {
    let relay = TestRelay::start().await;
    let mut pair = Pair::new(&relay).await;
    let cases = [
        ("this is not json", "error", "invalid JSON"),
        ("[1,2,3]", "error", "no \"type\" field"),
        (
            r#"{"type":"teleport"}"#,
            "error",
            "unknown message type 'teleport'",
        ),
        (
            r#"{"type":"join"}"#,
            "join_error",
            "missing the \"freqId\" field",
        ),
        (
            r#"{"type":"join","freqId":10000}"#,
            "join_error",
            "invalid freqId 10000",
        ),
        (
            r#"{"type":"join","freqId":"abc"}"#,
            "join_error",
            "invalid freqId \"abc\"",
        ),
        (
            r#"{"type":"leave","freqId":-5}"#,
            "leave_error",
            "invalid freqId -5",
        ),
        (
            r#"{"type":"mute"}"#,
            "mute_error",
            "missing the \"freqId\" field",
        ),
        (
            r#"{"type":"leave","freqId":4321}"#,
            "leave_error",
            "not joined",
        ),
        (
            r#"{"type":"mute","freqId":4321}"#,
            "mute_error",
            "not joined",
        ),
        (
            r#"{"type":"auth","authToken":"x"}"#,
            "error",
            "already authenticated",
        ),
    ];
    for (text, kind, fragment) in cases {
        pair.talker.send_text(text).await;
        let reply = pair.talker.next_json().await;
        assert_eq!(reply["type"], kind, "reply to {text}: {reply}");
        let reason = reply["reason"].as_str().unwrap();
        assert!(reason.contains(fragment), "reply to {text}: {reason}");
    }
    let out_of_range = r#"{"type":"join","freqId":10000}"#;
    pair.talker.send_text(out_of_range).await;
    assert_eq!(pair.talker.next_json().await["freqId"], 10000);
    pair.still_works().await;
}

#[tokio::test]
async fn invalid_audio_frames_get_errors() {
    let relay = TestRelay::start().await;
    let mut pair = Pair::new(&relay).await;
    let not_joined = krt_shared::frame::FrameHeader {
        freq: freq(2000),
        seq: 0,
    }
    .encode(b"x");
    let mut bad_freq = vec![0u8; 20];
    bad_freq[..4].copy_from_slice(&123u32.to_be_bytes());
    let cases: [(Vec<u8>, &str); 5] = [
        (vec![0, 0, 4, 76, 0, 0, 0, 1], "too short"),
        (Vec::new(), "too short"),
        (vec![0u8; 2000], "too long"),
        (bad_freq, "invalid frequency 123"),
        (not_joined, "has not joined"),
    ];
    for (frame, fragment) in cases {
        pair.talker.send_binary(frame).await;
        let reply = pair.talker.next_json().await;
        assert_eq!(reply["type"], "error");
        let reason = reply["reason"].as_str().unwrap();
        assert!(reason.contains(fragment), "expected {fragment}: {reason}");
    }
    assert!(
        pair.listener
            .no_audio_within(Duration::from_millis(100))
            .await
    );
    pair.still_works().await;
}

#[tokio::test]
async fn error_flood_is_rate_limited() {
    let relay = TestRelay::start().await;
    let mut pair = Pair::new(&relay).await;
    for _ in 0..200 {
        pair.talker.send_binary(vec![1, 2, 3]).await;
    }
    pair.talker.send_json(json!({"type": "ping"})).await;
    let mut errors = 0;
    loop {
        let reply = pair.talker.next_json().await;
        match reply["type"].as_str() {
            Some("error") => errors += 1,
            Some("pong") => break,
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert!(errors >= 1, "at least the first error is reported");
    assert!(errors <= 20, "{errors} error messages for 200 bad frames");
    pair.still_works().await;
}

#[tokio::test]
async fn oversized_message_closes_only_that_session() {
    let relay = TestRelay::start().await;
    let mut pair = Pair::new(&relay).await;
    let mut attacker = relay.client(3).await;
    attacker.join(freq(1100)).await;
    attacker.send_text(&"x".repeat(100_000)).await;
    let close = attacker.expect_close().await;
    assert_eq!(u16::from(close.code), 1009);
    assert!(close.reason.contains("too big"), "{}", close.reason);
    pair.still_works().await;
}

#[tokio::test]
async fn audio_before_auth_is_rejected() {
    let relay = TestRelay::start().await;
    let mut pair = Pair::new(&relay).await;
    let mut client = Client::connect(&relay.url()).await;
    client
        .send_binary(
            krt_shared::frame::FrameHeader {
                freq: freq(1100),
                seq: 0,
            }
            .encode(b"sneaky"),
        )
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["type"], "error");
    assert!(
        reply["reason"]
            .as_str()
            .unwrap()
            .contains("before authentication")
    );
    assert!(
        pair.listener
            .no_audio_within(Duration::from_millis(200))
            .await
    );
    client
        .send_json(json!({"type": "join", "freqId": 1100}))
        .await;
    let reply = client.next_json().await;
    assert!(
        reply["reason"]
            .as_str()
            .unwrap()
            .contains("not authenticated")
    );
    // The connection still accepts a valid login afterwards.
    client.auth(&relay.token(5)).await;
    pair.still_works().await;
}

async fn expect_auth_error(relay: &TestRelay, token: &str, fragment: &str) {
    let mut client = Client::connect(&relay.url()).await;
    client
        .send_json(json!({"type": "auth", "authToken": token}))
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["type"], "auth_error", "token {token:.20}: {reply}");
    let reason = reply["reason"].as_str().unwrap();
    assert!(reason.contains(fragment), "expected {fragment}: {reason}");
    let close = client.expect_close().await;
    assert_eq!(u16::from(close.code), 4001);
}

#[tokio::test]
async fn bad_tokens_are_rejected() {
    let relay = TestRelay::start().await;
    let mut pair = Pair::new(&relay).await;

    let forged = TokenSigner::generate().sign(&relay.claims(9, 0, FreqSet::all()));
    expect_auth_error(&relay, &forged, "invalid token signature").await;

    let now = now_secs();
    let expired = relay.signer.sign(&Claims {
        iat: now - 7200,
        exp: now - 3600,
        ..relay.claims(9, 0, FreqSet::all())
    });
    expect_auth_error(&relay, &expired, "expired").await;

    expect_auth_error(&relay, "", "missing token").await;
    expect_auth_error(&relay, "krt1.garbage", "malformed").await;

    let mut missing = Client::connect(&relay.url()).await;
    missing
        .send_json(json!({"type": "auth", "discordUserId": "1234", "guildId": "1"}))
        .await;
    let reply = missing.next_json().await;
    assert_eq!(reply["type"], "auth_error");
    assert!(reply["reason"].as_str().unwrap().contains("missing token"));

    pair.still_works().await;
}

#[tokio::test]
async fn revocation_stored_in_database_applies_at_start() {
    let first = TestRelay::start().await;
    let claims = first.claims(7, 0, FreqSet::all());
    let token = first.signer.sign(&claims);
    let dir = first.dir;
    drop(first.relay);

    let url = format!("sqlite://{}", dir.path().join("krt.db").display());
    let db = sea_orm::Database::connect(&url).await.unwrap();
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    krt_migrations::entities::revocations::ActiveModel {
        token_id: Set(Some(claims.jti.clone())),
        user_id: Set(None),
        revoked_before: Set(None),
        reason: Set("test".into()),
        created_at_ms: Set(0),
        expires_at_ms: Set(i64::MAX),
        ..Default::default()
    }
    .insert(&db)
    .await
    .unwrap();
    drop(db);

    let config = common::test_config(dir.path());
    let relay = TestRelay::start_in(dir, config).await;
    expect_auth_error(&relay, &token, "revoked").await;
    let other = relay.signer.sign(&Claims {
        jti: new_token_id(),
        ..claims
    });
    let mut client = Client::connect(&relay.url()).await;
    client.auth(&other).await;
}

#[tokio::test]
async fn join_outside_token_frequencies_rejected() {
    let relay = TestRelay::start().await;
    let mut client = Client::connect(&relay.url()).await;
    client.auth(&relay.token_with(4, 0, "1000-1009")).await;
    client.join(freq(1005)).await;
    client
        .send_json(json!({"type": "join", "freqId": 1010}))
        .await;
    let reply = client.expect_type("join_error").await;
    assert_eq!(reply["freqId"], 1010);
    assert!(reply["reason"].as_str().unwrap().contains("not allowed"));
    client.ping().await;
}

#[tokio::test]
async fn ping_flood_never_loses_replies_silently() {
    let relay = TestRelay::start().await;
    let mut pair = Pair::new(&relay).await;
    let mut flooder = Client::connect_small_buffer(relay.addr).await;
    flooder.auth(&relay.token(3)).await;
    const PINGS: usize = 5000;
    // The relay may close the connection mid-flood; sending then fails.
    for _ in 0..PINGS {
        let ping = tokio_tungstenite::tungstenite::Message::text(r#"{"type":"ping"}"#);
        if futures_util::SinkExt::send(&mut flooder.ws, ping)
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let mut close_code = None;
    while let Some(message) = flooder.next_within(Duration::from_secs(3)).await {
        match message {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(value["type"], "pong", "unexpected reply {value}");
                pongs += 1;
            }
            tokio_tungstenite::tungstenite::Message::Close(frame) => {
                close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    // Either every ping got its pong, or the relay closed the session with 4005.
    if pongs < PINGS {
        assert_eq!(
            close_code,
            Some(4005),
            "{pongs} of {PINGS} pongs and no close 4005"
        );
    }
    pair.still_works().await;
}
