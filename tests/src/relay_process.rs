//! A real `krt-relay` process on an ephemeral loopback port, and a minimal
//! voice-protocol client, for the cross-process tests.
//!
//! The relay executable is `KRT_RELAY_BIN` when set. Otherwise it is the
//! `krt-relay-under-test` binary of this package: it runs the relay's own
//! entry point, and cargo builds it before the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Returns the relay executable that the cross-process tests run.
pub fn relay_executable() -> PathBuf {
    if let Some(path) = std::env::var_os("KRT_RELAY_BIN") {
        return PathBuf::from(path);
    }
    // Integration tests run from `target/<profile>/deps/`; the package's
    // binaries sit one level up.
    let test_exe = std::env::current_exe().expect("current_exe of the test binary");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary path has the form target/<profile>/deps/<name>");
    let relay = profile_dir.join("krt-relay-under-test");
    assert!(
        relay.is_file(),
        "{} is missing: run the tests through cargo, or set KRT_RELAY_BIN",
        relay.display()
    );
    relay
}

/// A relay process; SIGTERM on drop.
pub struct RelayProcess {
    child: Child,
    /// Voice endpoint, `ws://127.0.0.1:PORT/voice`.
    pub url: String,
    log_path: PathBuf,
}

impl RelayProcess {
    /// Starts a relay on port 0 with `data_dir` shared with the bot.
    ///
    /// The relay keeps queued audio however late it is. The tests count
    /// every frame, from a debug build on a machine that runs other tests
    /// at the same time, where a queue wait longer than the default limit
    /// happens.
    pub fn start(data_dir: &Path, log_dir: &Path) -> Self {
        let addr_file = log_dir.join(format!("relay-addr-{}", rand_suffix()));
        let log_path = log_dir.join(format!("relay-{}.log", rand_suffix()));
        let log = std::fs::File::create(&log_path).expect("relay log file");
        let child = Command::new(relay_executable())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(["--max-queue-delay", "0s"])
            .env("KRT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("krt-relay starts");
        let mut relay = Self {
            child,
            url: String::new(),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file)
                && !addr.trim().is_empty()
            {
                relay.url = format!("ws://{}/voice", addr.trim());
                return relay;
            }
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!("krt-relay exited with {status}: {}", relay.log());
            }
            assert!(
                Instant::now() < deadline,
                "krt-relay did not start: {}",
                relay.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Process id of the relay.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the relay logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the relay with SIGTERM and waits for it to exit.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: kill only signals the child process this struct started.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One voice-protocol client session.
pub struct VoiceClient {
    ws: WebSocketStream<TcpStream>,
}

/// What a client read next.
#[derive(Debug)]
pub enum Received {
    /// A JSON text message.
    Text(Value),
    /// An audio frame.
    Binary(Vec<u8>),
    /// The relay closed the connection, with the close code if any.
    Closed(Option<u16>),
}

impl VoiceClient {
    /// Connects to `url`, a `ws://HOST:PORT/voice` address.
    pub async fn connect(url: &str) -> Self {
        let authority = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("relay URL of the form ws://HOST:PORT/voice");
        let stream = TcpStream::connect(authority)
            .await
            .expect("relay accepts TCP");
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("relay accepts WebSocket");
        Self { ws }
    }

    /// Sends one JSON message.
    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send to relay");
    }

    /// Sends one audio frame.
    pub async fn send_audio(&mut self, freq: u32, seq: u32, payload: &[u8]) {
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&freq.to_be_bytes());
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(payload);
        self.ws
            .send(Message::binary(frame))
            .await
            .expect("send audio");
    }

    /// Reads the next message, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        loop {
            let frame = tokio::time::timeout(timeout, self.ws.next()).await.ok()?;
            return Some(match frame {
                Some(Ok(Message::Text(text))) => {
                    Received::Text(serde_json::from_str(text.as_str()).expect("relay sends JSON"))
                }
                Some(Ok(Message::Binary(bytes))) => Received::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => Received::Closed(frame.map(|f| f.code.into())),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Received::Closed(None),
            });
        }
    }

    /// Reads until a text message of `kind` arrives, skipping others.
    pub async fn expect_type(&mut self, kind: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Received::Text(message)) if message["type"] == kind => return message,
                Some(Received::Closed(code)) => {
                    panic!("closed ({code:?}) while waiting for {kind}")
                }
                Some(_) => continue,
                None => panic!("no {kind} within {timeout:?}"),
            }
        }
    }

    /// Authenticates with `token` and returns the relay's response.
    pub async fn auth(&mut self, token: &str) -> Value {
        self.send(json!({"type": "auth", "authToken": token})).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Received::Text(message))
                    if message["type"] == "auth_ok" || message["type"] == "auth_error" =>
                {
                    return message;
                }
                Some(Received::Closed(code)) => return json!({"type": "closed", "code": code}),
                Some(_) => continue,
                None => panic!("no answer to auth"),
            }
        }
    }

    /// Joins `freq` and returns `join_ok` or `join_error`.
    pub async fn join(&mut self, freq: u32) -> Value {
        self.send(json!({"type": "join", "freqId": freq})).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Received::Text(message))
                    if message["type"] == "join_ok" || message["type"] == "join_error" =>
                {
                    return message;
                }
                Some(Received::Closed(code)) => panic!("closed ({code:?}) while joining {freq}"),
                Some(_) => continue,
                None => panic!("no answer to join {freq}"),
            }
        }
    }
}
