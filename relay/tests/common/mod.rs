//! Test harness: a real relay on an ephemeral loopback port, a real SQLite
//! file in a temporary directory, and WebSocket clients that speak voice
//! protocol v1.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use krt_relay::{Relay, RelayConfig};
use krt_shared::frame::FrameHeader;
use krt_shared::token::{Claims, TokenSigner, new_token_id};
use krt_shared::{FreqId, FreqSet, UserId, UserIdKey, keyfile};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// Time a test waits for one expected message.
pub const STEP: Duration = Duration::from_secs(5);

pub struct TestRelay {
    pub relay: Option<Relay>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub signer: TokenSigner,
    pub user_key: UserIdKey,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn freq(value: i64) -> FreqId {
    FreqId::new(value).unwrap()
}

/// Settings with short timers, so tests run fast. Queued audio is kept
/// however late it is: these tests count every frame, from a debug build
/// on a machine that runs other tests at the same time, where a queue wait
/// longer than the default limit happens. The writer's unit tests cover the
/// late drop.
pub fn test_config(dir: &std::path::Path) -> RelayConfig {
    RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        listener_update_interval: Duration::from_millis(200),
        max_queue_delay: Duration::ZERO,
        ..RelayConfig::default()
    }
}

impl TestRelay {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut RelayConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        Self::start_in(dir, config).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config: RelayConfig) -> Self {
        let relay = krt_relay::start(config).await.expect("relay starts");
        let addr = relay.local_addr;
        let signer = keyfile::load_signer(dir.path()).unwrap();
        let user_key = keyfile::load_user_id_key(dir.path()).unwrap();
        Self {
            relay: Some(relay),
            addr,
            dir,
            signer,
            user_key,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/voice", self.addr)
    }

    pub fn user(&self, n: u64) -> UserId {
        self.user_key.pseudonymize(n)
    }

    pub fn claims(&self, n: u64, rank: u8, freqs: FreqSet) -> Claims {
        let now = now_secs();
        Claims {
            sub: self.user(n),
            guild: "1".into(),
            name: format!("user-{n}"),
            rank,
            freqs,
            iat: now,
            exp: now + 3600,
            jti: new_token_id(),
        }
    }

    pub fn token(&self, n: u64) -> String {
        self.signer.sign(&self.claims(n, 0, FreqSet::all()))
    }

    pub fn token_with(&self, n: u64, rank: u8, freqs: &str) -> String {
        self.signer
            .sign(&self.claims(n, rank, freqs.parse().unwrap()))
    }

    /// Connects and authenticates user `n` with access to every frequency.
    pub async fn client(&self, n: u64) -> Client {
        let mut client = Client::connect(&self.url()).await;
        client.auth(&self.token(n)).await;
        client
    }

    pub async fn shutdown(&mut self) -> krt_relay::ShutdownReport {
        self.relay.take().unwrap().shutdown().await
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub seq: u32,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = connect_async(url).await.expect("WebSocket connects");
        Self { ws, seq: 0 }
    }

    /// Connects with a 4 KiB socket receive buffer, so that a client that
    /// stops reading stalls the relay's writes quickly.
    pub async fn connect_small_buffer(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let url = format!("ws://{addr}/voice");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("WebSocket connects");
        Self { ws, seq: 0 }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    /// Sends an audio frame with the next sequence number; returns its bytes.
    pub async fn send_audio(&mut self, freq: FreqId, payload: &[u8]) -> Vec<u8> {
        let frame = FrameHeader {
            freq,
            seq: self.seq,
        }
        .encode(payload);
        self.seq += 1;
        self.send_binary(frame.clone()).await;
        frame
    }

    /// Next message of any kind, or panics after [`STEP`].
    pub async fn next(&mut self) -> Message {
        tokio::time::timeout(STEP, self.ws.next())
            .await
            .expect("message arrives in time")
            .expect("connection open")
            .expect("no WebSocket error")
    }

    /// Next message within `wait`, or `None`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Message> {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            _ => None,
        }
    }

    /// Next text message, skipping binary frames and listener updates.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next().await {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] != "listener_update" {
                        return value;
                    }
                }
                Message::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Next message of type `kind`, skipping others.
    pub async fn expect_type(&mut self, kind: &str) -> Value {
        loop {
            match self.next().await {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == kind {
                        return value;
                    }
                }
                Message::Close(frame) => panic!("connection closed waiting for {kind}: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Next binary frame, skipping text messages.
    pub async fn next_binary(&mut self) -> Bytes {
        loop {
            match self.next().await {
                Message::Binary(bytes) => return bytes,
                Message::Close(frame) => panic!("connection closed waiting for audio: {frame:?}"),
                _ => {}
            }
        }
    }

    /// Waits for the close frame and returns it.
    pub async fn expect_close(&mut self) -> CloseFrame {
        loop {
            match self.next().await {
                Message::Close(Some(frame)) => return frame,
                Message::Close(None) => panic!("close frame without code"),
                _ => {}
            }
        }
    }

    pub async fn auth(&mut self, token: &str) -> Value {
        self.send_json(json!({"type": "auth", "authToken": token}))
            .await;
        let reply = self.next_json().await;
        assert_eq!(reply["type"], "auth_ok", "auth reply: {reply}");
        reply
    }

    pub async fn join(&mut self, freq: FreqId) -> Value {
        self.send_json(json!({"type": "join", "freqId": freq.get()}))
            .await;
        let reply = self.expect_type("join_ok").await;
        assert_eq!(reply["freqId"], freq.get());
        reply
    }

    /// Sends a ping and waits for the pong, proving the session is alive
    /// and that everything sent before was processed.
    pub async fn ping(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        self.expect_type("pong").await;
    }

    /// Returns true when no audio frame arrives within `wait`.
    pub async fn no_audio_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Binary(_)))) => return false,
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return true,
            }
        }
    }
}
