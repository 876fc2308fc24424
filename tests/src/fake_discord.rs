//! A fake Discord for the bot's tests: a REST server and a gateway
//! WebSocket on 127.0.0.1, both on port 0.
//!
//! The REST server records every call and serves the few endpoints the
//! bot uses (gateway lookup, application info, command registration,
//! interaction callbacks, webhooks, member fetches). The gateway sends
//! HELLO, checks the token and intents of IDENTIFY as Discord would, sends READY and GUILD_CREATE, acknowledges heartbeats
//! and forwards dispatches that the test pushes, such as voice states and
//! slash-command interactions. Payloads carry every field serenity 0.12
//! requires, and the unit tests below check that each one deserializes into
//! a known serenity event rather than `Event::Unknown`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Intents a correct bot sends: GUILDS (bit 0), GUILD_MEMBERS (bit 1) and
/// GUILD_VOICE_STATES (bit 7).
pub const EXPECTED_INTENTS: u64 = 1 | 2 | 128;

/// Heartbeat interval sent in HELLO, short so heartbeats happen in tests.
pub const HEARTBEAT_MS: u64 = 1000;

/// Permission bit of Manage Channels.
pub const MANAGE_CHANNELS: u64 = 1 << 4;

/// Channel type of a text channel.
pub const TEXT_CHANNEL: u8 = 0;
/// Channel type of a voice channel.
pub const VOICE_CHANNEL: u8 = 2;

/// A guild member of the fixture.
#[derive(Clone, Debug)]
pub struct FakeMember {
    /// Discord user id.
    pub id: u64,
    /// User name.
    pub username: String,
    /// Server nickname.
    pub nick: Option<String>,
    /// Role ids.
    pub roles: Vec<u64>,
    /// Permission bits the interaction payload reports for this member.
    pub permissions: u64,
}

impl FakeMember {
    /// Creates a member without nickname, roles or permissions.
    pub fn new(id: u64, username: &str) -> Self {
        Self {
            id,
            username: username.to_owned(),
            nick: None,
            roles: Vec::new(),
            permissions: 0,
        }
    }

    /// Adds the Manage Channels permission.
    pub fn moderator(mut self) -> Self {
        self.permissions |= MANAGE_CHANNELS;
        self
    }

    /// Adds a role.
    pub fn with_role(mut self, role: u64) -> Self {
        self.roles.push(role);
        self
    }
}

/// The guild the fake serves.
#[derive(Clone, Debug)]
pub struct GuildSpec {
    /// Guild id.
    pub id: u64,
    /// Application id, which is also the bot's user id.
    pub app_id: u64,
    /// Roles: id and name.
    pub roles: Vec<(u64, String)>,
    /// Channels: id, name and type.
    pub channels: Vec<(u64, String, u8)>,
    /// Members sent with GUILD_CREATE.
    pub members: Vec<FakeMember>,
    /// Voice states sent with GUILD_CREATE: user id and channel id.
    pub voice_states: Vec<(u64, u64)>,
    /// Members that only the REST API returns, as in a large guild whose
    /// GUILD_CREATE lists few members.
    pub rest_only_members: Vec<FakeMember>,
    /// When true, command registration fails with 403 Missing Access, as
    /// for a guild the bot was not invited to.
    pub reject_registration: bool,
    /// When true, the gateway closes with code 4004 after IDENTIFY (authentication
    /// failed), as for a wrong bot token.
    pub reject_token: bool,
    /// False when the application has the privileged Server Members intent
    /// off, so an IDENTIFY asking for GUILD_MEMBERS is closed with 4014.
    pub members_intent_enabled: bool,
}

impl GuildSpec {
    /// Creates a guild with only the everyone role and no channels or members.
    pub fn new(id: u64, app_id: u64) -> Self {
        Self {
            id,
            app_id,
            roles: vec![(id, "@everyone".into())],
            channels: Vec::new(),
            members: Vec::new(),
            voice_states: Vec::new(),
            rest_only_members: Vec::new(),
            reject_registration: false,
            reject_token: false,
            members_intent_enabled: true,
        }
    }

    fn member(&self, id: u64) -> Option<&FakeMember> {
        self.members.iter().find(|m| m.id == id)
    }

    fn rest_member(&self, id: u64) -> Option<&FakeMember> {
        self.member(id)
            .or_else(|| self.rest_only_members.iter().find(|m| m.id == id))
    }
}

/// One recorded REST call.
#[derive(Clone, Debug)]
pub struct RestCall {
    /// HTTP method.
    pub method: String,
    /// Path without the query, such as `/api/v10/gateway`.
    pub path: String,
    /// JSON body, or null.
    pub body: Value,
}

/// An option of a slash command invocation.
#[derive(Clone, Debug)]
pub enum CommandOption {
    /// A string option.
    Str(&'static str, String),
    /// An integer option.
    Int(&'static str, i64),
    /// A boolean option.
    Bool(&'static str, bool),
    /// A user option, resolved to this member.
    User(&'static str, FakeMember),
    /// A role option: id and name.
    Role(&'static str, u64, String),
    /// A channel option: id, name and type.
    Channel(&'static str, u64, String, u8),
}

/// Where a slash command is sent from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A guild channel, with the member payload Discord always includes.
    Guild,
    /// A guild channel, but with only the user and no member payload.
    GuildWithoutMember,
    /// A direct message to the bot.
    DirectMessage,
}

/// An interaction callback the bot sent.
#[derive(Clone, Debug)]
pub struct InteractionReply {
    /// Callback type: 4 for a message, 5 for a deferred reply.
    pub kind: u64,
    /// Message text.
    pub content: String,
    /// True when only the invoking member can read it (flag 64).
    pub ephemeral: bool,
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<RestCall>>,
    identifies: Mutex<Vec<Value>>,
    changed: Notify,
}

struct Shared {
    spec: GuildSpec,
    gateway_url: String,
    recorder: Recorder,
    session: Mutex<Option<mpsc::UnboundedSender<Value>>>,
    connections: AtomicU64,
    heartbeats: AtomicU64,
    next_id: AtomicU64,
}

/// A running fake Discord. Its servers stop when it is dropped.
pub struct FakeDiscord {
    shared: Arc<Shared>,
    rest_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeDiscord {
    /// Starts the REST server and the gateway for `spec`.
    pub async fn start(spec: GuildSpec) -> std::io::Result<Self> {
        let rest = TcpListener::bind("127.0.0.1:0").await?;
        let gateway = TcpListener::bind("127.0.0.1:0").await?;
        let rest_addr = rest.local_addr()?;
        let gateway_addr = gateway.local_addr()?;
        let shared = Arc::new(Shared {
            spec,
            gateway_url: format!("ws://{gateway_addr}"),
            recorder: Recorder::default(),
            session: Mutex::new(None),
            connections: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            next_id: AtomicU64::new(900_000_000_000_000_000),
        });

        let rest_shared = Arc::clone(&shared);
        let router = Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let shared = Arc::clone(&rest_shared);
            async move { handle_rest(&shared, method, uri, body) }
        });
        let rest_task = tokio::spawn(async move {
            let _ = axum::serve(rest, router).await;
        });
        let gateway_shared = Arc::clone(&shared);
        let gateway_task = tokio::spawn(async move {
            while let Ok((stream, _)) = gateway.accept().await {
                tokio::spawn(serve_gateway(Arc::clone(&gateway_shared), stream));
            }
        });
        Ok(Self {
            shared,
            rest_addr,
            tasks: vec![rest_task, gateway_task],
        })
    }

    /// URL for the bot's `discord_api_base`.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.rest_addr)
    }

    /// Returns the guild served.
    pub fn spec(&self) -> &GuildSpec {
        &self.shared.spec
    }

    /// Returns every REST call so far.
    pub fn calls(&self) -> Vec<RestCall> {
        lock(&self.shared.recorder.calls).clone()
    }

    /// Number of REST calls so far.
    pub fn call_count(&self) -> usize {
        lock(&self.shared.recorder.calls).len()
    }

    /// Returns every IDENTIFY payload (`d`) received.
    pub fn identifies(&self) -> Vec<Value> {
        lock(&self.shared.recorder.identifies).clone()
    }

    /// Gateway connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Heartbeats received.
    pub fn heartbeats(&self) -> u64 {
        self.shared.heartbeats.load(Ordering::Relaxed)
    }

    /// Waits until `predicate` holds for the recorded calls, or panics
    /// after `timeout` with the calls seen.
    pub async fn wait_for_call(
        &self,
        timeout: Duration,
        what: &str,
        predicate: impl Fn(&RestCall) -> bool,
    ) -> RestCall {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.recorder.changed.notified();
            if let Some(call) = self.calls().into_iter().find(|c| predicate(c)) {
                return call;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let seen: Vec<String> = self
                    .calls()
                    .iter()
                    .map(|c| format!("{} {}", c.method, c.path))
                    .collect();
                panic!("timed out waiting for {what}; REST calls seen: {seen:?}");
            }
        }
    }

    /// Waits until the bot registered its commands in the guild and
    /// returns the registered command names.
    pub async fn wait_registered(&self, timeout: Duration) -> Vec<String> {
        let path = format!(
            "/api/v10/applications/{}/guilds/{}/commands",
            self.shared.spec.app_id, self.shared.spec.id
        );
        let call = self
            .wait_for_call(timeout, "command registration", |c| {
                c.method == "PUT" && c.path == path
            })
            .await;
        call.body
            .as_array()
            .map(|commands| {
                commands
                    .iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends one dispatch to the connected bot.
    pub fn dispatch(&self, event: &str, data: Value) {
        let sender = lock(&self.shared.session).clone();
        let sender = sender.expect("a bot is connected to the gateway before dispatching");
        let _ = sender.send(json!({"t": event, "d": data}));
    }

    /// Sends a VOICE_STATE_UPDATE for `member` joining `channel` (None:
    /// leaving voice).
    pub fn voice_state(&self, member: &FakeMember, channel: Option<u64>) {
        let data = voice_state_json(self.shared.spec.id, member, channel);
        self.dispatch("VOICE_STATE_UPDATE", data);
    }

    /// Sends a GUILD_MEMBER_UPDATE with the member's current nickname and
    /// roles.
    pub fn member_update(&self, member: &FakeMember) {
        let mut data = member_json(member, false);
        data["guild_id"] = json!(self.shared.spec.id.to_string());
        self.dispatch("GUILD_MEMBER_UPDATE", data);
    }

    /// Sends a GUILD_MEMBER_REMOVE for `member`.
    pub fn member_left(&self, member: &FakeMember) {
        let data = json!({
            "guild_id": self.shared.spec.id.to_string(),
            "user": user_json(member.id, &member.username)
        });
        self.dispatch("GUILD_MEMBER_REMOVE", data);
    }

    /// Sends a slash command as `member` and returns the interaction id.
    ///
    /// `command` is the command path such as `radio connect`.
    pub fn invoke(&self, member: &FakeMember, command: &str, options: Vec<CommandOption>) -> u64 {
        self.invoke_from(Origin::Guild, member, command, options)
    }

    /// Sends a slash command from `origin` and returns the interaction id.
    pub fn invoke_from(
        &self,
        origin: Origin,
        member: &FakeMember,
        command: &str,
        options: Vec<CommandOption>,
    ) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut data = interaction_json(&self.shared.spec, id, member, command, &options);
        if origin != Origin::Guild
            && let Some(object) = data.as_object_mut()
        {
            object.remove("member");
            object.insert("user".into(), user_json(member.id, &member.username));
            if origin == Origin::DirectMessage {
                object.remove("guild_id");
                object.remove("guild_locale");
                object.insert("channel_id".into(), json!(id.to_string()));
                if let Some(inner) = object.get_mut("data").and_then(Value::as_object_mut) {
                    inner.remove("guild_id");
                }
            }
        }
        self.dispatch("INTERACTION_CREATE", data);
        id
    }

    /// Waits for the first callback of interaction `id`.
    pub async fn reply_to(&self, id: u64, timeout: Duration) -> InteractionReply {
        let prefix = format!("/api/v10/interactions/{id}/");
        let call = self
            .wait_for_call(timeout, &format!("a reply to interaction {id}"), |c| {
                c.method == "POST" && c.path.starts_with(&prefix)
            })
            .await;
        InteractionReply {
            kind: call.body["type"].as_u64().unwrap_or(0),
            content: call.body["data"]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            ephemeral: call.body["data"]["flags"].as_u64().unwrap_or(0) & 64 != 0,
        }
    }

    /// Invokes a command and waits for its reply.
    pub async fn run_command(
        &self,
        member: &FakeMember,
        command: &str,
        options: Vec<CommandOption>,
    ) -> InteractionReply {
        let id = self.invoke(member, command, options);
        self.reply_to(id, Duration::from_secs(10)).await
    }
}

/// Builds an HTTP client whose resolver maps Discord's hosts to 127.0.0.1:9, a
/// closed port, so a misconfigured test fails at once instead of reaching
/// the internet.
pub fn guarded_http_client() -> reqwest::Client {
    let closed: SocketAddr = ([127, 0, 0, 1], 9).into();
    reqwest::Client::builder()
        .resolve("discord.com", closed)
        .resolve("gateway.discord.gg", closed)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client with static resolver overrides builds")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn handle_rest(shared: &Shared, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    lock(&shared.recorder.calls).push(RestCall {
        method: method.to_string(),
        path: path.clone(),
        body: body_json.clone(),
    });
    shared.recorder.changed.notify_waiters();

    let spec = &shared.spec;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v10", "gateway"]) => {
            json_response(StatusCode::OK, json!({"url": shared.gateway_url}))
        }
        ("GET", ["api", "v10", "gateway", "bot"]) => json_response(
            StatusCode::OK,
            json!({
                "url": shared.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1
                }
            }),
        ),
        ("GET", ["api", "v10", "oauth2", "applications", "@me"]) => {
            json_response(StatusCode::OK, application_json(spec))
        }
        ("PUT", ["api", "v10", "applications", _, "guilds", _, "commands"])
        | ("PUT", ["api", "v10", "applications", _, "commands"]) => {
            if spec.reject_registration {
                json_response(
                    StatusCode::FORBIDDEN,
                    json!({"message": "Missing Access", "code": 50001}),
                )
            } else {
                json_response(StatusCode::OK, json!([]))
            }
        }
        ("POST", ["api", "v10", "interactions", _, _, "callback"]) => {
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["api", "v10", "webhooks", _, _])
        | ("PATCH", ["api", "v10", "webhooks", _, _, "messages", _]) => {
            let content = body_json["content"].as_str().unwrap_or("");
            json_response(StatusCode::OK, message_json(spec, content))
        }
        ("GET", ["api", "v10", "guilds", guild, "members", user])
            if *guild == spec.id.to_string() =>
        {
            match user.parse().ok().and_then(|id| spec.rest_member(id)) {
                Some(member) => json_response(StatusCode::OK, member_json(member, false)),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"message": "404: Not Found", "code": 0}),
    )
}

async fn serve_gateway(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut source) = ws.split();
    let hello = json!({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}});
    if sink.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }

    let (outbound, mut queued) = mpsc::unbounded_channel::<Value>();
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            frame = source.next() => {
                let Some(Ok(frame)) = frame else { break };
                let Message::Text(text) = frame else { continue };
                let Ok(payload) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                match payload["op"].as_u64() {
                    Some(1) => {
                        shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                        let ack = json!({"op": 11});
                        if sink.send(Message::text(ack.to_string())).await.is_err() {
                            break;
                        }
                    }
                    Some(2) => {
                        lock(&shared.recorder.identifies).push(payload["d"].clone());
                        shared.recorder.changed.notify_waiters();
                        if let Some((code, reason)) = identify_rejection(&shared.spec, &payload["d"]) {
                            let close = CloseFrame {
                                code: CloseCode::from(code),
                                reason: reason.into(),
                            };
                            let _ = sink.send(Message::Close(Some(close))).await;
                            return;
                        }
                        for (event, data) in [
                            ("READY", ready_json(&shared.spec)),
                            ("GUILD_CREATE", guild_create_json(&shared.spec)),
                        ] {
                            seq += 1;
                            let frame = json!({"op": 0, "s": seq, "t": event, "d": data});
                            if sink.send(Message::text(frame.to_string())).await.is_err() {
                                return;
                            }
                        }
                        *lock(&shared.session) = Some(outbound.clone());
                    }
                    Some(6) => {
                        // No resume support: ask the bot to identify again.
                        let invalid = json!({"op": 9, "d": false});
                        if sink.send(Message::text(invalid.to_string())).await.is_err() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            next = queued.recv() => {
                let Some(dispatch) = next else { break };
                seq += 1;
                let frame = json!({"op": 0, "s": seq, "t": dispatch["t"], "d": dispatch["d"]});
                if sink.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Close code and reason Discord would send for this IDENTIFY, if any.
fn identify_rejection(spec: &GuildSpec, identify: &Value) -> Option<(u16, &'static str)> {
    if spec.reject_token {
        return Some((4004, "Authentication failed."));
    }
    let Some(intents) = identify["intents"].as_u64() else {
        return Some((4013, "Invalid intent(s)."));
    };
    if intents & 2 != 0 && !spec.members_intent_enabled {
        return Some((4014, "Disallowed intent(s)."));
    }
    None
}

fn user_json(id: u64, username: &str) -> Value {
    json!({
        "id": id.to_string(),
        "username": username,
        "discriminator": "0",
        "global_name": null,
        "avatar": null,
        "bot": false
    })
}

fn member_json(member: &FakeMember, with_permissions: bool) -> Value {
    let mut value = json!({
        "user": user_json(member.id, &member.username),
        "nick": member.nick,
        "roles": member.roles.iter().map(u64::to_string).collect::<Vec<_>>(),
        "joined_at": "2025-01-01T00:00:00.000000+00:00",
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false
    });
    if with_permissions {
        value["permissions"] = json!(member.permissions.to_string());
    }
    value
}

fn role_json(id: u64, name: &str) -> Value {
    json!({
        "id": id.to_string(),
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
        "hoist": false,
        "icon": null,
        "unicode_emoji": null,
        "position": 1,
        "permissions": "0",
        "managed": false,
        "mentionable": false,
        "flags": 0
    })
}

fn channel_json(guild: u64, id: u64, name: &str, kind: u8) -> Value {
    json!({
        "id": id.to_string(),
        "type": kind,
        "guild_id": guild.to_string(),
        "name": name,
        "position": 0,
        "permission_overwrites": [],
        "nsfw": false,
        "parent_id": null
    })
}

fn application_json(spec: &GuildSpec) -> Value {
    json!({
        "id": spec.app_id.to_string(),
        "name": "KRT-Com test bot",
        "icon": null,
        "description": "",
        "bot_public": true,
        "bot_require_code_grant": false,
        "verify_key": "0000000000000000000000000000000000000000000000000000000000000000",
        "flags": 0
    })
}

fn ready_json(spec: &GuildSpec) -> Value {
    let mut user = user_json(spec.app_id, "krt-bot");
    user["bot"] = json!(true);
    json!({
        "v": 10,
        "user": user,
        "guilds": [{"id": spec.id.to_string(), "unavailable": true}],
        "session_id": "fake-session",
        "resume_gateway_url": "ws://127.0.0.1:9",
        "shard": [0, 1],
        "application": {"id": spec.app_id.to_string(), "flags": 0}
    })
}

fn voice_state_json(guild: u64, member: &FakeMember, channel: Option<u64>) -> Value {
    json!({
        "guild_id": guild.to_string(),
        "channel_id": channel.map(|c| c.to_string()),
        "user_id": member.id.to_string(),
        "member": member_json(member, false),
        "session_id": format!("voice-{}", member.id),
        "deaf": false,
        "mute": false,
        "self_deaf": false,
        "self_mute": false,
        "self_video": false,
        "suppress": false,
        "request_to_speak_timestamp": null
    })
}

fn guild_create_json(spec: &GuildSpec) -> Value {
    let voice_states: Vec<Value> = spec
        .voice_states
        .iter()
        .filter_map(|&(user, channel)| {
            let member = spec.member(user)?;
            let mut state = voice_state_json(spec.id, member, Some(channel));
            // GUILD_CREATE voice states carry neither guild id nor member.
            let object = state.as_object_mut()?;
            object.remove("guild_id");
            object.remove("member");
            Some(state)
        })
        .collect();
    json!({
        "id": spec.id.to_string(),
        "name": "KRT test guild",
        "icon": null,
        "owner_id": spec.app_id.to_string(),
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "system_channel_flags": 0,
        "premium_tier": 0,
        "nsfw_level": 0,
        "roles": spec.roles.iter().map(|(id, name)| role_json(*id, name)).collect::<Vec<_>>(),
        "emojis": [],
        "stickers": [],
        "features": [],
        "voice_states": voice_states,
        "members": spec.members.iter().map(|m| member_json(m, false)).collect::<Vec<_>>(),
        "channels": spec
            .channels
            .iter()
            .map(|(id, name, kind)| channel_json(spec.id, *id, name, *kind))
            .collect::<Vec<_>>(),
        "threads": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "preferred_locale": "en-US",
        "premium_progress_bar_enabled": false,
        "joined_at": "2025-01-01T00:00:00.000000+00:00",
        "large": false,
        "member_count": spec.members.len(),
        "unavailable": false
    })
}

fn option_json(
    option: &CommandOption,
    resolved: &mut HashMap<&'static str, serde_json::Map<String, Value>>,
) -> Value {
    match option {
        CommandOption::Str(name, value) => json!({"name": name, "type": 3, "value": value}),
        CommandOption::Int(name, value) => json!({"name": name, "type": 4, "value": value}),
        CommandOption::Bool(name, value) => json!({"name": name, "type": 5, "value": value}),
        CommandOption::User(name, member) => {
            let id = member.id.to_string();
            resolved
                .entry("users")
                .or_default()
                .insert(id.clone(), user_json(member.id, &member.username));
            let mut partial = member_json(member, true);
            if let Some(object) = partial.as_object_mut() {
                object.remove("user");
            }
            resolved
                .entry("members")
                .or_default()
                .insert(id.clone(), partial);
            json!({"name": name, "type": 6, "value": id})
        }
        CommandOption::Role(name, id, role_name) => {
            resolved
                .entry("roles")
                .or_default()
                .insert(id.to_string(), role_json(*id, role_name));
            json!({"name": name, "type": 8, "value": id.to_string()})
        }
        CommandOption::Channel(name, id, channel_name, kind) => {
            resolved.entry("channels").or_default().insert(
                id.to_string(),
                json!({"id": id.to_string(), "name": channel_name, "type": kind, "permissions": "0"}),
            );
            json!({"name": name, "type": 7, "value": id.to_string()})
        }
    }
}

fn interaction_json(
    spec: &GuildSpec,
    id: u64,
    member: &FakeMember,
    command: &str,
    options: &[CommandOption],
) -> Value {
    let mut resolved = HashMap::new();
    let option_values: Vec<Value> = options
        .iter()
        .map(|o| option_json(o, &mut resolved))
        .collect();
    let mut path = command.split_whitespace();
    let top = path.next().unwrap_or_default();
    let subcommands: Vec<&str> = path.collect();
    // Nest the options inside the subcommand (type 1) or group (type 2).
    let mut nested = option_values;
    for (depth, name) in subcommands.iter().enumerate().rev() {
        let kind = if depth + 1 == subcommands.len() { 1 } else { 2 };
        nested = vec![json!({"name": name, "type": kind, "options": nested})];
    }
    let resolved: serde_json::Map<String, Value> = resolved
        .into_iter()
        .map(|(key, map)| (key.to_owned(), Value::Object(map)))
        .collect();
    json!({
        "id": id.to_string(),
        "application_id": spec.app_id.to_string(),
        "type": 2,
        "token": format!("token-{id}"),
        "version": 1,
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "attachment_size_limit": 8_388_608,
        "app_permissions": "0",
        "channel_id": spec.channels.first().map_or_else(|| spec.id.to_string(), |c| c.0.to_string()),
        "guild_id": spec.id.to_string(),
        "member": member_json(member, true),
        "data": {
            "id": (spec.app_id + 1).to_string(),
            "name": top,
            "type": 1,
            "options": nested,
            "resolved": resolved,
            "guild_id": spec.id.to_string()
        }
    })
}

fn message_json(spec: &GuildSpec, content: &str) -> Value {
    let mut author = user_json(spec.app_id, "krt-bot");
    author["bot"] = json!(true);
    json!({
        "id": "910000000000000001",
        "channel_id": spec.channels.first().map_or_else(|| spec.id.to_string(), |c| c.0.to_string()),
        "author": author,
        "content": content,
        "timestamp": "2025-01-01T00:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0
    })
}

#[cfg(test)]
mod tests {
    use serenity::model::event::{Event, GatewayEvent};

    use super::*;

    fn spec() -> GuildSpec {
        let mut spec = GuildSpec::new(4242, 7777);
        spec.roles.push((55, "Officer".into()));
        spec.channels.push((100, "general".into(), TEXT_CHANNEL));
        spec.channels
            .push((101, "Alpha (1050)".into(), VOICE_CHANNEL));
        spec.members.push(FakeMember::new(1, "alice").with_role(55));
        spec.voice_states.push((1, 101));
        spec
    }

    /// Parses a dispatch the way serenity's shard does.
    fn parse_dispatch(event: &str, data: &Value) -> Result<Event, String> {
        let frame = json!({"op": 0, "s": 1, "t": event, "d": data});
        match serde_json::from_value::<GatewayEvent>(frame) {
            Ok(GatewayEvent::Dispatch(_, Event::Unknown(unknown))) => {
                Err(format!("{event} became Event::Unknown: {unknown:?}"))
            }
            Ok(GatewayEvent::Dispatch(_, event)) => Ok(event),
            Ok(other) => Err(format!("not a dispatch: {other:?}")),
            Err(error) => Err(error.to_string()),
        }
    }

    fn fixtures() -> Vec<(&'static str, Value)> {
        let spec = spec();
        let alice = spec.members[0].clone();
        vec![
            ("READY", ready_json(&spec)),
            ("GUILD_CREATE", guild_create_json(&spec)),
            (
                "VOICE_STATE_UPDATE",
                voice_state_json(spec.id, &alice, Some(101)),
            ),
            (
                "INTERACTION_CREATE",
                interaction_json(
                    &spec,
                    1,
                    &alice,
                    "radio kick",
                    &[
                        CommandOption::User("user", alice.clone()),
                        CommandOption::Str("reason", "spam".into()),
                        CommandOption::Role("role", 55, "Officer".into()),
                        CommandOption::Channel(
                            "channel",
                            101,
                            "Alpha (1050)".into(),
                            VOICE_CHANNEL,
                        ),
                    ],
                ),
            ),
        ]
    }

    #[test]
    fn fixtures_deserialize_as_known_events() {
        for (event, data) in fixtures() {
            let parsed = parse_dispatch(event, &data);
            assert!(parsed.is_ok(), "{event}: {parsed:?}");
        }
    }

    #[test]
    fn fixtures_break_without_required_fields() {
        let required = [
            ("READY", "session_id"),
            ("GUILD_CREATE", "owner_id"),
            ("GUILD_CREATE", "members"),
            ("VOICE_STATE_UPDATE", "session_id"),
            ("INTERACTION_CREATE", "token"),
        ];
        let fixtures = fixtures();
        for (event, field) in required {
            let (_, data) = fixtures.iter().find(|(name, _)| *name == event).unwrap();
            let mut broken = data.clone();
            broken.as_object_mut().unwrap().remove(field);
            assert!(
                parse_dispatch(event, &broken).is_err(),
                "{event} without {field} still parsed"
            );
        }
    }

    #[test]
    fn guild_create_keeps_channels_and_voice() {
        let Ok(Event::GuildCreate(created)) =
            parse_dispatch("GUILD_CREATE", &guild_create_json(&spec()))
        else {
            panic!("GUILD_CREATE did not parse");
        };
        assert_eq!(created.guild.channels.len(), 2);
        assert_eq!(created.guild.voice_states.len(), 1);
        assert_eq!(created.guild.roles.len(), 2);
    }

    #[test]
    fn interaction_resolves_options() {
        let spec = spec();
        let alice = spec.members[0].clone().moderator();
        let data = interaction_json(
            &spec,
            9,
            &alice,
            "freq create",
            &[
                CommandOption::Int("id", 1050),
                CommandOption::Channel("channel", 101, "Alpha (1050)".into(), VOICE_CHANNEL),
            ],
        );
        let Ok(Event::InteractionCreate(created)) = parse_dispatch("INTERACTION_CREATE", &data)
        else {
            panic!("INTERACTION_CREATE did not parse");
        };
        let command = created.interaction.command().expect("a slash command");
        assert_eq!(command.data.name, "freq");
        let member = command
            .member
            .as_ref()
            .expect("guild interactions carry the member");
        assert!(member.permissions.is_some_and(|p| p.manage_channels()));
        assert_eq!(member.roles.len(), 1, "roles come with the member");
        let options = command.data.options();
        assert_eq!(options.len(), 1, "one subcommand");
        assert_eq!(options[0].name, "create");
    }

    #[tokio::test]
    async fn guard_keeps_discord_local() {
        let client = guarded_http_client();
        for url in [
            "https://discord.com/api/v10/gateway",
            "https://gateway.discord.gg/",
        ] {
            let started = std::time::Instant::now();
            let error = client.get(url).send().await.expect_err("port 9 is closed");
            assert!(error.is_connect(), "{url}: {error}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{url} took {:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn rest_records_and_serves_gateway() {
        let fake = FakeDiscord::start(spec()).await.unwrap();
        let client = guarded_http_client();
        let gateway: Value = client
            .get(format!("{}/api/v10/gateway", fake.api_base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            gateway["url"]
                .as_str()
                .unwrap()
                .starts_with("ws://127.0.0.1:")
        );
        let missing = client
            .get(format!("{}/api/v10/users/@me/guilds", fake.api_base()))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
        let paths: Vec<String> = fake.calls().into_iter().map(|c| c.path).collect();
        assert_eq!(paths, ["/api/v10/gateway", "/api/v10/users/@me/guilds"]);
    }

    #[test]
    fn message_and_member_parse() {
        let spec = spec();
        let message: Result<serenity::model::channel::Message, _> =
            serde_json::from_value(message_json(&spec, "hello"));
        assert!(message.is_ok(), "{message:?}");
        let member: Result<serenity::model::guild::Member, _> =
            serde_json::from_value(member_json(&spec.members[0], false));
        assert!(member.is_ok(), "{member:?}");
        let app: Result<serenity::model::application::CurrentApplicationInfo, _> =
            serde_json::from_value(application_json(&spec));
        assert!(app.is_ok(), "{app:?}");
    }
}
