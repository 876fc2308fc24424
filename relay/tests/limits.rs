//! Per-address limits, trusted proxies and the retention purge, against a
//! real relay and a real SQLite file.

mod common;

use std::time::Duration;

use common::{Client, TestRelay};
use krt_migrations::entities::{transmissions, voice_states};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, Database, EntityTrait, PaginatorTrait};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Opens a WebSocket claiming to come from `forwarded` through a proxy.
async fn connect_via_proxy(
    relay: &TestRelay,
    forwarded: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let mut request = relay.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(Client { ws, seq: 0 })
}

fn status_of(result: Result<Client, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match result {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn connection_cap_uses_forwarded_address() {
    let relay = TestRelay::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        c.exempt_addresses = Vec::new();
        c.max_connections_per_ip = 2;
    })
    .await;
    let first = connect_via_proxy(&relay, "203.0.113.5").await.unwrap();
    let _second = connect_via_proxy(&relay, "203.0.113.5").await.unwrap();
    assert_eq!(
        status_of(connect_via_proxy(&relay, "203.0.113.5").await),
        429
    );
    assert_eq!(
        status_of(connect_via_proxy(&relay, "203.0.113.6").await),
        101,
        "another client behind the same proxy is not affected"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status_of(connect_via_proxy(&relay, "203.0.113.5").await),
        101
    );
}

#[tokio::test]
async fn forwarded_header_ignored_from_untrusted_peer() {
    let relay = TestRelay::start_with(|c| {
        c.exempt_addresses = Vec::new();
        c.max_connections_per_ip = 1;
    })
    .await;
    let _held = connect_via_proxy(&relay, "203.0.113.7").await.unwrap();
    // A spoofed header does not escape the cap on the real peer address.
    assert_eq!(
        status_of(connect_via_proxy(&relay, "203.0.113.8").await),
        429
    );
}

#[tokio::test]
async fn failed_logins_block_the_address() {
    let relay = TestRelay::start_with(|c| {
        c.exempt_addresses = Vec::new();
        c.failed_auth_per_minute = 2;
        c.connect_rate_per_ip = 100;
    })
    .await;
    for _ in 0..3 {
        let mut client = Client::connect(&relay.url()).await;
        client
            .send_json(json!({"type": "auth", "authToken": "krt1.forged.token"}))
            .await;
        assert_eq!(client.next_json().await["type"], "auth_error");
    }
    let refused = tokio_tungstenite::connect_async(relay.url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("too many failed logins"), "{body}");
        }
        other => panic!("expected HTTP 429, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn loopback_exempt_by_default() {
    let relay = TestRelay::start_with(|c| c.max_connections_per_ip = 1).await;
    let mut clients = Vec::new();
    for n in 0..30 {
        clients.push(relay.client(n).await);
    }
    assert_eq!(clients.len(), 30);
}

#[tokio::test]
async fn purge_removes_only_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("krt.db").display());
    let config = krt_relay::RelayConfig {
        database_url: Some(url.clone()),
        ..common::test_config(dir.path())
    };
    let db = krt_relay::db::connect(&config).await.unwrap();
    let now = krt_relay::hub::wall_ms();
    let day = 24 * 3600 * 1000;
    for (age_days, user) in [(10, "old"), (1, "new")] {
        transmissions::ActiveModel {
            freq_id: Set(1000),
            user_id: Set(user.into()),
            started_at_ms: Set(now - age_days * day),
            ended_at_ms: Set(now - age_days * day + 500),
            frames: Set(25),
            frames_dropped: Set(0),
            ..Default::default()
        }
        .insert(&db)
        .await
        .unwrap();
        voice_states::ActiveModel {
            user_id: Set(user.into()),
            channel_id: Set(None),
            updated_at_ms: Set(now - age_days * day),
        }
        .insert(&db)
        .await
        .unwrap();
    }
    // A user who has stayed in a channel for ten days keeps the row.
    voice_states::ActiveModel {
        user_id: Set("afk".into()),
        channel_id: Set(Some("101".into())),
        updated_at_ms: Set(now - 10 * day),
    }
    .insert(&db)
    .await
    .unwrap();
    let purged = krt_relay::db::purge_older_than(&db, now - 7 * day)
        .await
        .unwrap();
    assert_eq!(purged.transmissions, 1);
    assert_eq!(
        purged.voice_states, 1,
        "only the old row outside voice goes"
    );
    let remaining_users: Vec<String> = voice_states::Entity::find()
        .all(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.user_id)
        .collect();
    assert!(
        remaining_users.contains(&"afk".to_string()),
        "{remaining_users:?}"
    );
    assert!(
        remaining_users.contains(&"new".to_string()),
        "{remaining_users:?}"
    );
    assert_eq!(transmissions::Entity::find().count(&db).await.unwrap(), 1);
    let left = transmissions::Entity::find().all(&db).await.unwrap();
    assert_eq!(left[0].user_id, "new");
    drop(db);
    let _ = Database::connect(&url).await.unwrap();
}

#[tokio::test]
async fn slow_http_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = TestRelay::start_with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    // Half a request, then silence, as a slowloris client does.
    stream
        .write_all(b"GET /voice HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the relay kept a stalled handshake open");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Other clients are served meanwhile.
    let _client = relay.client(1).await;
}

#[tokio::test]
async fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let relay = TestRelay::start().await;
    // The migrations at start write, so the WAL file exists too.
    for name in ["krt.db", "krt.db-wal"] {
        let path = relay.dir.path().join(name);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}
