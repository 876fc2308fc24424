//! Restarts of a real `krt-relay` process: clients come back with their
//! tokens, every logged transmission is in the database, and frequency
//! settings come back from the database.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use krt_migrations::entities::{frequencies, transmissions};
use krt_shared::token::{Claims, new_token_id};
use krt_shared::{FreqSet, keyfile};
use krt_tests::relay_process::{Received, RelayProcess, VoiceClient};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, Database, EntityTrait, PaginatorTrait};
use serde_json::json;

const STEP: Duration = Duration::from_secs(5);

fn token(dir: &std::path::Path, user: u64) -> String {
    let signer = keyfile::load_signer(dir).unwrap();
    let ids = keyfile::load_user_id_key(dir).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    signer.sign(&Claims {
        sub: ids.pseudonymize(user),
        guild: "1".into(),
        name: format!("pilot-{user}"),
        rank: 0,
        freqs: FreqSet::all(),
        iat: now,
        exp: now + 3600,
        jti: new_token_id(),
    })
}

/// Connects, authenticates and joins 1050; panics on any refusal.
async fn join(relay: &RelayProcess, token: &str) -> VoiceClient {
    let mut client = VoiceClient::connect(&relay.url).await;
    assert_eq!(client.auth(token).await["type"], "auth_ok");
    assert_eq!(client.join(1050).await["type"], "join_ok");
    client
}

async fn next_audio(client: &mut VoiceClient) -> Vec<u8> {
    loop {
        match client.next(STEP).await {
            Some(Received::Binary(frame)) => return frame,
            Some(Received::Text(_)) => continue,
            other => panic!("expected audio, got {other:?}"),
        }
    }
}

/// One transmission of `frames` frames from `talker`, received by `listener`.
async fn transmit(talker: &mut VoiceClient, listener: &mut VoiceClient, frames: u32) {
    for seq in 0..frames {
        talker.send_audio(1050, seq, &[seq as u8; 60]).await;
        let frame = next_audio(listener).await;
        assert_eq!(&frame[4..8], &seq.to_be_bytes());
    }
    talker
        .send(json!({"type": "tx_stop", "freqId": 1050}))
        .await;
    talker.send(json!({"type": "ping"})).await;
    talker.expect_type("pong", STEP).await;
}

#[tokio::test]
async fn restart_keeps_tokens_rows_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let relay = RelayProcess::start(&data, dir.path());
    let (talker_token, listener_token) = (token(&data, 1), token(&data, 2));

    let mut talker = join(&relay, &talker_token).await;
    let mut listener = join(&relay, &listener_token).await;
    transmit(&mut talker, &mut listener, 20).await;

    // A moderator's frequency setting, written the way the bot stores it.
    let url = format!("sqlite://{}", data.join("krt.db").display());
    let db = Database::connect(&url).await.unwrap();
    frequencies::ActiveModel {
        id: Set(1050),
        name: Set("Alpha".into()),
        channel_id: Set(None),
        role_id: Set(None),
        min_rank: Set(0),
        half_duplex: Set(true),
        created_at_ms: Set(0),
        updated_at_ms: Set(0),
    }
    .insert(&db)
    .await
    .unwrap();

    relay.stop();
    loop {
        match listener.next(STEP).await {
            Some(Received::Closed(code)) => {
                assert_eq!(code, Some(1001));
                break;
            }
            Some(Received::Text(_)) => continue,
            other => panic!("expected close 1001 at shutdown, got {other:?}"),
        }
    }
    assert_eq!(transmissions::Entity::find().count(&db).await.unwrap(), 1);

    let relay = RelayProcess::start(&data, dir.path());
    let mut talker = join(&relay, &talker_token).await;
    let mut listener = join(&relay, &listener_token).await;
    transmit(&mut talker, &mut listener, 10).await;

    let addr = relay
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/voice");
    let names = http_get(addr, "/freq/names").await;
    assert_eq!(names, json!({"1050": "Alpha"}));

    relay.stop();
    let rows = transmissions::Entity::find().all(&db).await.unwrap();
    assert_eq!(rows.len(), 2);
    let frames: Vec<i64> = rows.iter().map(|r| r.frames).collect();
    assert_eq!(frames, [20, 10]);
}

async fn http_get(addr: &str, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap()
}
