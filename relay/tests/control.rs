//! The control socket and the HTTP endpoints of a real relay.

mod common;

use std::time::{Duration, Instant};

use common::{TestRelay, freq};
use krt_shared::control::MAX_CONTROL_LINE;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

struct Control {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Control {
    async fn connect(relay: &TestRelay) -> Self {
        let stream = UnixStream::connect(relay.dir.path().join("control.sock"))
            .await
            .unwrap();
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send_line(&mut self, line: &str) -> Value {
        self.writer.write_all(line.as_bytes()).await.unwrap();
        self.writer.write_all(b"\n").await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(common::STEP, self.reader.read_line(&mut reply))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(&reply).unwrap()
    }

    async fn request(&mut self, value: Value) -> Value {
        self.send_line(&value.to_string()).await
    }
}

/// Starts a relay with user 1 logged in (token for `freqs`), and returns
/// its client, a control connection and user 1's id.
async fn logged_in(freqs: &str) -> (TestRelay, common::Client, Control, String) {
    let relay = TestRelay::start().await;
    let mut client = common::Client::connect(&relay.url()).await;
    client.auth(&relay.token_with(1, 0, freqs)).await;
    let control = Control::connect(&relay).await;
    let user = relay.user(1).to_string();
    (relay, client, control, user)
}

async fn http_get(relay: &TestRelay, path: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status: u16 = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn control_socket_mode_is_0660() {
    use std::os::unix::fs::PermissionsExt;
    let relay = TestRelay::start().await;
    let mode = std::fs::metadata(relay.dir.path().join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
}

#[tokio::test]
async fn bad_control_requests_change_nothing() {
    let relay = TestRelay::start().await;
    let mut control = Control::connect(&relay).await;
    let reply = control.send_line("not json").await;
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("invalid control request")
    );

    let reply = control
        .request(json!({"id": 4, "op": "self_destruct"}))
        .await;
    assert_eq!(reply["id"], 4);
    assert_eq!(reply["ok"], false);

    let reply = control
        .request(json!({"id": 5, "op": "mute", "user_id": "zz", "freq_id": 1000, "muted": true}))
        .await;
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("invalid user id"));

    let reply = control
        .request(json!({"id": 6, "op": "freq_upsert", "freq": {"id": 1500, "name": "  "}}))
        .await;
    assert_eq!(reply["ok"], false);

    let reply = control
        .request(json!({"id": 7, "op": "sync", "freqs": [
            {"id": 1501, "name": "Good"}, {"id": 1502, "name": ""}
        ], "assignments": [], "mutes": [], "revoked_users": [], "revoked_tokens": []}))
        .await;
    assert_eq!(reply["ok"], false);
    let (_, names) = http_get(&relay, "/freq/names").await;
    assert_eq!(names, json!({}), "a rejected sync must change nothing");

    let user = relay.user(1).to_string();
    let reply = control
        .request(json!({"id": 8, "op": "assign", "changes": [
            {"user_id": user, "freqs": [[1600, 1600]]},
            {"user_id": user, "freqs": [[1700, 1600]]}
        ]}))
        .await;
    assert_eq!(reply["ok"], false);
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("1700-1600"), "{error}");
    let mut client = common::Client::connect(&relay.url()).await;
    client.auth(&relay.token_with(1, 0, "1000")).await;
    client
        .send_json(json!({"type": "join", "freqId": 1600}))
        .await;
    let rejected = client.expect_type("join_error").await;
    assert_eq!(rejected["freqId"], 1600, "a rejected assign grants nothing");

    let reply = control.request(json!({"id": 9, "op": "stats"})).await;
    assert_eq!(reply["ok"], true, "connection survives bad requests");
}

#[tokio::test]
async fn control_line_limit_counts_content_only() {
    let relay = TestRelay::start().await;
    let mut control = Control::connect(&relay).await;
    // A request padded with spaces to exactly the limit, newline not counted.
    let request = json!({"id": 11, "op": "stats"}).to_string();
    let padded = request.clone() + &" ".repeat(MAX_CONTROL_LINE - request.len());
    let reply = control.send_line(&padded).await;
    assert_eq!(reply["id"], 11, "a line of exactly the limit is read");
    assert_eq!(reply["ok"], true);

    let oversized = padded + " ";
    let reply = control.send_line(&oversized).await;
    assert_eq!(reply["ok"], false);
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("longer than"), "{error}");
}

#[tokio::test]
async fn oversized_control_line_is_skipped() {
    let relay = TestRelay::start().await;
    let mut control = Control::connect(&relay).await;
    // Three times the limit in one line gets one rejection, and the next
    // line on the same connection gets a response.
    let chunk = vec![b'x'; MAX_CONTROL_LINE];
    for _ in 0..3 {
        control.writer.write_all(&chunk).await.unwrap();
    }
    let reply = control.send_line("").await;
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("longer than"));
    let reply = control.request(json!({"id": 12, "op": "stats"})).await;
    assert_eq!(reply["id"], 12);
    assert_eq!(reply["ok"], true);
}

#[tokio::test]
async fn min_rank_above_max_rejected() {
    let relay = TestRelay::start().await;
    let mut control = Control::connect(&relay).await;
    let reply = control
        .request(json!({"id": 13, "op": "freq_upsert", "freq": {"id": 1500, "name": "High", "min_rank": 200}}))
        .await;
    assert_eq!(reply["ok"], false);
    let error = reply["error"].as_str().unwrap();
    assert!(error.contains("min_rank 200"), "{error}");
    let reply = control
        .request(
            json!({"id": 14, "op": "sync", "freqs": [{"id": 1501, "name": "High", "min_rank": 101}],
            "assignments": [], "mutes": [], "revoked_users": [], "revoked_tokens": []}),
        )
        .await;
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("min_rank 101"));
    let (_, names) = http_get(&relay, "/freq/names").await;
    assert_eq!(names, json!({}), "no frequency was configured");
}

#[tokio::test]
async fn kick_closes_live_session_within_a_second() {
    let relay = TestRelay::start().await;
    let mut victim = relay.client(1).await;
    victim.join(freq(1200)).await;
    let mut bystander = relay.client(2).await;
    let mut control = Control::connect(&relay).await;

    let started = Instant::now();
    let before = common::now_secs();
    let reply = control
        .request(
            json!({"id": 1, "op": "revoke_user", "user_id": relay.user(1).to_string(),
            "before": before, "reason": "spamming"}),
        )
        .await;
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["data"]["closed_sessions"], 1);
    let close = victim.expect_close().await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(u16::from(close.code), 4004);
    assert!(close.reason.contains("spamming"));
    bystander.ping().await;

    // Tokens issued up to the cut-off no longer log in; later ones do. The
    // old token's issue time is set, not read from the clock, so that a
    // second boundary passed during the test does not make it "later".
    let mut old_claims = relay.claims(1, 0, krt_shared::FreqSet::all());
    old_claims.iat = before;
    let mut old = common::Client::connect(&relay.url()).await;
    old.send_json(json!({"type": "auth", "authToken": relay.signer.sign(&old_claims)}))
        .await;
    let reply = old.next_json().await;
    assert_eq!(reply["type"], "auth_error");
    assert!(reply["reason"].as_str().unwrap().contains("revoked"));

    let mut claims = relay.claims(1, 0, krt_shared::FreqSet::all());
    claims.iat = before + 1;
    let mut again = common::Client::connect(&relay.url()).await;
    again.auth(&relay.signer.sign(&claims)).await;
}

#[tokio::test]
async fn frequency_settings_and_names() {
    let relay = TestRelay::start().await;
    let mut control = Control::connect(&relay).await;
    let reply = control
        .request(json!({"id": 1, "op": "freq_upsert",
            "freq": {"id": 1300, "name": "Command", "min_rank": 3}}))
        .await;
    assert_eq!(reply["ok"], true);
    let (status, names) = http_get(&relay, "/freq/names").await;
    assert_eq!(status, 200);
    assert_eq!(names, json!({"1300": "Command"}));

    let mut low = relay.client(1).await;
    low.send_json(json!({"type": "join", "freqId": 1300})).await;
    let reply = low.expect_type("join_error").await;
    assert!(reply["reason"].as_str().unwrap().contains("minimum rank 3"));

    let mut high = common::Client::connect(&relay.url()).await;
    high.auth(&relay.token_with(2, 3, "all")).await;
    high.join(freq(1300)).await;

    let reply = control
        .request(json!({"id": 2, "op": "freq_delete", "freq_id": 1300}))
        .await;
    assert_eq!(reply["data"]["removed_listeners"], 1);
    high.expect_type("leave_ok").await;
    let (_, names) = http_get(&relay, "/freq/names").await;
    assert_eq!(names, json!({}));
}

#[tokio::test]
async fn moderator_mute_denies_transmit() {
    let relay = TestRelay::start().await;
    let mut talker = relay.client(1).await;
    let mut listener = relay.client(2).await;
    talker.join(freq(1400)).await;
    listener.join(freq(1400)).await;
    let mut control = Control::connect(&relay).await;
    let reply = control
        .request(
            json!({"id": 1, "op": "mute", "user_id": relay.user(1).to_string(),
            "freq_id": 1400, "muted": true}),
        )
        .await;
    assert_eq!(reply["ok"], true);
    talker.ping().await;
    talker.send_audio(freq(1400), b"muted").await;
    assert_eq!(talker.expect_type("tx_denied").await["reason"], "muted");
    assert!(listener.no_audio_within(Duration::from_millis(200)).await);

    control
        .request(
            json!({"id": 2, "op": "mute", "user_id": relay.user(1).to_string(),
            "freq_id": 1400, "muted": false}),
        )
        .await;
    talker.ping().await;
    let sent = talker.send_audio(freq(1400), b"unmuted").await;
    assert_eq!(listener.next_binary().await.as_ref(), sent.as_slice());

    // A frame rejected because of a mute still counts as received.
    let stats = control.request(json!({"id": 3, "op": "stats"})).await;
    assert_eq!(stats["data"]["frames_in"], 2);
    assert_eq!(stats["data"]["frames_denied"], 1);
}

#[tokio::test]
async fn assignment_grants_and_withdraws() {
    let (_relay, mut client, mut control, user) = logged_in("1000").await;

    let reply = control
        .request(json!({"id": 1, "op": "assign", "changes": [{"user_id": user, "freqs": [[1600, 1600]]}]}))
        .await;
    assert_eq!(reply["ok"], true);
    let grant = client.expect_type("freq_assign").await;
    assert_eq!(grant["freqId"], 1600);
    assert_eq!(grant["action"], "grant");
    client.join(freq(1600)).await;

    let status = control
        .request(json!({"id": 2, "op": "status", "user_id": user}))
        .await;
    assert_eq!(status["data"]["sessions"][0]["joined"], json!([1600]));

    control
        .request(json!({"id": 3, "op": "assign", "changes": [{"user_id": user, "freqs": []}]}))
        .await;
    let revoke = client.expect_type("freq_assign").await;
    assert_eq!(revoke["action"], "revoke");
    let left = client.expect_type("leave_ok").await;
    assert_eq!(left["freqId"], 1600);
}

#[tokio::test]
async fn many_grant_changes_keep_the_last() {
    let (_relay, mut client, mut control, user) = logged_in("5000").await;

    // More changes for one user than a session keeps commands waiting.
    let changes: Vec<Value> = (2000..2100)
        .map(|freq| json!({"user_id": user, "freqs": [[freq, freq]]}))
        .collect();
    let reply = control
        .request(json!({"id": 1, "op": "assign", "changes": changes}))
        .await;
    assert_eq!(reply["data"]["applied"], 100);
    client.join(freq(2099)).await;
    client
        .send_json(json!({"type": "join", "freqId": 2000}))
        .await;
    let rejected = client.expect_type("join_error").await;
    assert_eq!(rejected["freqId"], 2000);
}

#[tokio::test]
async fn wide_grant_keeps_session_open() {
    let (_relay, mut client, mut control, user) = logged_in("5000").await;

    // One notification per frequency, more than a session's queue can
    // contain.
    let reply = control
        .request(json!({"id": 1, "op": "assign", "changes": [{"user_id": user, "freqs": [[1000, 1499]]}]}))
        .await;
    assert_eq!(reply["ok"], true);
    for expected in 1000..1500 {
        let grant = client.expect_type("freq_assign").await;
        assert_eq!(grant["freqId"], expected);
        assert_eq!(grant["action"], "grant");
    }
    client.ping().await;
    client.join(freq(1499)).await;
}

#[tokio::test]
async fn http_endpoints() {
    let relay = TestRelay::start().await;
    let _client = relay.client(1).await;
    let (status, body) = http_get(&relay, "/health").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = http_get(&relay, "/server-status").await;
    assert_eq!(status, 200);
    assert_eq!(body["sessions"], 1);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let (status, body) = http_get(&relay, "/nope").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/nope"));
    let (status, _) = http_get(&relay, "/voice").await;
    assert_eq!(status, 400, "a plain GET of /voice is not an upgrade");
}
