//! Start-up, shared state and gateway events of `krt-bot run`.
//!
//! [`start`] opens the database, starts the control-socket client and the
//! voice-state batcher, and connects serenity to Discord (or to the URL of
//! `discord_api_base`). [`RunningBot::shutdown`] stops the gateway, flushes
//! the batcher a last time and closes the control connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use krt_migrations::entities::frequencies;
use krt_shared::control::ControlCommand;
use krt_shared::keyfile::{self, KeyFileError};
use krt_shared::token::TokenSigner;
use krt_shared::{FreqId, UserIdKey};
use poise::serenity_prelude as serenity;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    IntoActiveModel, QueryFilter,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access;
use crate::batcher::{BatchConfig, Batcher, Directory, LiveState, MemberInfo, Update};
use crate::commands;
use crate::config::Config;
use crate::control_client::{ControlClient, SyncSource};
use crate::error::BotError;
use crate::store::{self, StoreError};

/// Gateway intents: guilds, guild members (privileged) and voice states.
pub fn intents() -> serenity::GatewayIntents {
    serenity::GatewayIntents::GUILDS
        | serenity::GatewayIntents::GUILD_MEMBERS
        | serenity::GatewayIntents::GUILD_VOICE_STATES
}

/// Counters that tests and logs read.
#[derive(Debug, Default)]
pub struct Counters {
    /// Commands rejected by the cooldown.
    pub rate_limited: AtomicU64,
}

/// State shared by commands, event handlers and background tasks.
pub struct Shared {
    /// Checked settings.
    pub config: Config,
    /// Database.
    pub db: DatabaseConnection,
    /// Relay control socket.
    pub control: ControlClient,
    /// Voice-state and member queue.
    pub batcher: Arc<Batcher>,
    /// Channel links and role ranks.
    pub directory: Arc<RwLock<Directory>>,
    /// Token signer, holding the private key.
    pub signer: TokenSigner,
    /// Key of the pseudonymous user ids.
    pub user_key: UserIdKey,
    /// Per-user command cooldown.
    pub cooldown: DefaultKeyedRateLimiter<u64>,
    /// When each rate-limited user last got a "slow down" reply.
    pub slow_down_replied: Mutex<HashMap<u64, Instant>>,
    /// Counters.
    pub counters: Counters,
    /// True once the slash commands are registered in the guild.
    pub registered: AtomicBool,
}

impl Shared {
    /// Reloads channel links and role ranks from the database.
    pub async fn reload_directory(&self) -> Result<(), BotError> {
        let rows = store::frequencies(&self.db).await?;
        let rank_roles = store::rank_roles(&self.db).await?;
        let mut directory = self.directory.write().unwrap_or_else(|p| p.into_inner());
        directory.channels = store::channel_map(&rows);
        directory.rank_roles = rank_roles;
        Ok(())
    }

    /// Sends the voice-channel grants of everyone stored in `channels`, after
    /// a frequency link changed.
    pub async fn reassign_channels(&self, channels: &[u64]) -> Result<(), BotError> {
        let mut changes = Vec::new();
        for &channel in channels {
            let users = store::users_in_channel(&self.db, channel).await?;
            let directory = self.directory.read().unwrap_or_else(|p| p.into_inner());
            changes.extend(
                users
                    .into_iter()
                    .map(|user| store::assignment(user, Some(channel), &directory.channels)),
            );
        }
        if !changes.is_empty() {
            self.control
                .notify(ControlCommand::Assign { changes })
                .await;
        }
        Ok(())
    }
}

/// Errors that stop the bot from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The keys in the data dir could not be created or read.
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Discord client could not be built or its gateway failed.
    #[error("Discord client failed: {0}")]
    Discord(Box<serenity::Error>),
    /// Discord rejected the token.
    #[error(
        "Discord rejected the bot token: set {} to the token from the Bot page of the developer portal",
        crate::config::TOKEN_VAR
    )]
    InvalidToken,
    /// Command registration failed, so the bot stopped.
    #[error(
        "failed to register the slash commands in guild {guild}: check the guild id and that \
         the bot was invited with the applications.commands scope"
    )]
    Registration {
        /// Configured guild.
        guild: u64,
    },
    /// The gateway lookup at `discord_api_base` failed. serenity would fall
    /// back to Discord's public gateway, so the bot stops instead.
    #[error(
        "gateway lookup at {base} failed ({detail}): check discord_api_base; \
         the bot does not fall back to Discord's own gateway"
    )]
    GatewayLookup {
        /// Configured API base.
        base: String,
        /// Underlying error.
        detail: String,
    },
    /// Discord rejected the intents, usually because the members intent is off.
    #[error(
        "Discord rejected the gateway intents: enable the Server Members intent on the Bot page \
         of the developer portal"
    )]
    DisallowedIntents,
}

/// Inputs of [`start`] besides the config.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Discord bot token.
    pub token: String,
    /// HTTP client for REST calls, replacing serenity's default one.
    pub http_client: Option<reqwest::Client>,
}

/// A started bot.
pub struct RunningBot {
    shared: Arc<Shared>,
    shard_manager: Arc<serenity::ShardManager>,
    client_task: JoinHandle<Result<(), serenity::Error>>,
    batcher_task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl RunningBot {
    /// Shared state, for inspection by tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits until the gateway client stops by itself, which means a fatal
    /// error such as a rejected token.
    pub async fn wait(&mut self) -> Result<(), StartError> {
        let result = (&mut self.client_task).await;
        gateway_result(result)?;
        if !self.shared.registered.load(Ordering::Relaxed) {
            return Err(StartError::Registration {
                guild: self.shared.config.guild_id,
            });
        }
        Ok(())
    }

    /// Stops the gateway, flushes pending voice states and closes the
    /// control connection.
    pub async fn shutdown(self) -> Result<(), StartError> {
        self.shard_manager.shutdown_all().await;
        let _ = self.stop.send(true);
        if let Err(error) = self.batcher_task.await {
            tracing::error!(%error, "voice-state batcher ended abnormally");
        }
        let result = self.client_task.await;
        tracing::info!("bot stopped");
        gateway_result(result)
    }
}

fn gateway_result(
    result: Result<Result<(), serenity::Error>, tokio::task::JoinError>,
) -> Result<(), StartError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(classify_gateway_error(error)),
        Err(join_error) => {
            let reason = if join_error.is_panic() {
                "gateway task panicked"
            } else {
                "gateway task was cancelled"
            };
            Err(StartError::Discord(Box::new(serenity::Error::Other(
                reason,
            ))))
        }
    }
}

fn classify_gateway_error(error: serenity::Error) -> StartError {
    match error {
        serenity::Error::Gateway(serenity::GatewayError::InvalidAuthentication) => {
            StartError::InvalidToken
        }
        serenity::Error::Gateway(serenity::GatewayError::DisallowedGatewayIntents)
        | serenity::Error::Gateway(serenity::GatewayError::InvalidGatewayIntents) => {
            StartError::DisallowedIntents
        }
        other => StartError::Discord(Box::new(other)),
    }
}

/// Opens everything and connects to Discord. Returns once the gateway
/// client runs; commands are registered when the gateway is ready.
pub async fn start(config: Config, options: StartOptions) -> Result<RunningBot, StartError> {
    keyfile::ensure_keys(&config.data_dir)?;
    let signer = keyfile::load_signer(&config.data_dir)?;
    let user_key = keyfile::load_user_id_key(&config.data_dir)?;
    let db = store::open(&config.database_url).await?;
    tracing::info!(data_dir = %config.data_dir.display(), guild = config.guild_id, "starting bot");

    let (stop, stopped) = watch::channel(false);
    let control = ControlClient::start(
        config.control_socket.clone(),
        sync_source(&db),
        stopped.clone(),
    );
    let directory = Arc::new(RwLock::new(Directory::default()));
    let batcher = Batcher::new(
        BatchConfig {
            interval: config.flush_interval,
            early_at: config.flush_pending,
            per_second: config.flushes_per_second,
            token_ttl: config.token_ttl,
        },
        db.clone(),
        control.clone(),
        Arc::clone(&directory),
        user_key.clone(),
    );
    // One command back every `command_period`, up to `command_burst` saved.
    let cooldown_quota = Quota::with_period(config.command_period)
        .unwrap_or_else(|| Quota::per_second(config.command_burst))
        .allow_burst(config.command_burst);
    let shared = Arc::new(Shared {
        config,
        db,
        control,
        batcher: Arc::clone(&batcher),
        directory,
        signer,
        user_key,
        cooldown: RateLimiter::keyed(cooldown_quota),
        slow_down_replied: Mutex::new(HashMap::new()),
        counters: Counters::default(),
        registered: AtomicBool::new(false),
    });
    if let Err(error) = shared.reload_directory().await {
        tracing::error!(%error, "failed to load channel links and ranks");
    }
    let batcher_task = tokio::spawn(batcher.run(stopped.clone()));
    tokio::spawn(forget_idle_users(Arc::clone(&shared), stopped));

    let mut client = build_client(&shared, &options).await?;
    shared.batcher.set_live_state(Arc::new(CacheState {
        cache: Arc::clone(&client.cache),
        guild: serenity::GuildId::new(shared.config.guild_id),
    }));
    let shard_manager = Arc::clone(&client.shard_manager);
    let client_task = tokio::spawn(async move { client.start().await });
    Ok(RunningBot {
        shared,
        shard_manager,
        client_task,
        batcher_task,
        stop,
    })
}

/// Drops the cooldown state of users who have been quiet, once a minute,
/// so the per-user maps do not grow with every member who ever ran a command.
async fn forget_idle_users(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    return;
                }
            }
        }
        shared.cooldown.retain_recent();
        let quiet_for = shared.config.command_period * shared.config.command_burst.get();
        let mut replied = shared
            .slow_down_replied
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        replied.retain(|_, at| at.elapsed() < quiet_for);
    }
}

fn sync_source(db: &DatabaseConnection) -> SyncSource {
    let db = db.clone();
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move {
            match store::sync_state(&db, store::now_ms()).await {
                Ok(state) => Some(state),
                Err(error) => {
                    tracing::error!(%error, "failed to read the state for a relay sync");
                    None
                }
            }
        })
    })
}

async fn build_client(
    shared: &Arc<Shared>,
    options: &StartOptions,
) -> Result<serenity::Client, StartError> {
    let mut http = serenity::HttpBuilder::new(&options.token);
    if let Some(base) = &shared.config.discord_api_base {
        // serenity's rate limiter ignores the proxy and would call Discord
        // directly, so the endpoint at `base` must do the rate limiting.
        http = http.proxy(base.clone()).ratelimiter_disabled(true);
    }
    if let Some(client) = &options.http_client {
        http = http.client(client.clone());
    }

    let guild = serenity::GuildId::new(shared.config.guild_id);
    let setup_shared = Arc::clone(shared);
    let framework = poise::Framework::builder()
        .options(poise::FrameworkOptions {
            commands: commands::all(),
            on_error: |error| Box::pin(commands::on_error(error)),
            command_check: Some(|ctx| Box::pin(commands::cooldown_check(ctx))),
            event_handler: |framework, event| Box::pin(on_event(framework, event)),
            ..Default::default()
        })
        .setup(move |ctx, ready, framework| {
            Box::pin(async move {
                let commands = &framework.options().commands;
                if let Err(error) = poise::builtins::register_in_guild(ctx, commands, guild).await {
                    // Without commands the bot is useless, so stop the
                    // gateway and let `RunningBot::wait` report it.
                    tracing::error!(%error, %guild, "failed to register slash commands; stopping");
                    let shard_manager = Arc::clone(framework.shard_manager());
                    tokio::spawn(async move { shard_manager.shutdown_all().await });
                    return Err(BotError::from(error));
                }
                setup_shared.registered.store(true, Ordering::Relaxed);
                tracing::info!(bot = %ready.user.name, %guild, "registered slash commands");
                Ok(setup_shared)
            })
        })
        .build();

    let http = http.build();
    if let Some(base) = &shared.config.discord_api_base {
        // serenity 0.12 falls back to wss://gateway.discord.gg when this
        // lookup fails, which would leave the configured endpoint; a failed
        // lookup here stops the bot before serenity repeats it.
        if let Err(error) = http.get_gateway().await {
            return Err(StartError::GatewayLookup {
                base: base.clone(),
                detail: error.to_string(),
            });
        }
    }

    serenity::ClientBuilder::new_with_http(http, intents())
        .framework(framework)
        .await
        .map_err(classify_gateway_error)
}

/// Current guild state from serenity's cache.
struct CacheState {
    cache: Arc<serenity::Cache>,
    guild: serenity::GuildId,
}

impl LiveState for CacheState {
    fn voice_channel(&self, user: u64) -> Option<Option<u64>> {
        let guild = self.cache.guild(self.guild)?;
        let state = guild.voice_states.get(&serenity::UserId::new(user));
        Some(state.and_then(|s| s.channel_id).map(|c| c.get()))
    }

    fn member(&self, user: u64) -> Option<MemberInfo> {
        let guild = self.cache.guild(self.guild)?;
        guild
            .members
            .get(&serenity::UserId::new(user))
            .map(member_info)
    }
}

fn member_info(member: &serenity::Member) -> MemberInfo {
    MemberInfo {
        display_name: member.display_name().to_owned(),
        roles: member.roles.iter().map(|r| r.get()).collect(),
    }
}

/// Gateway events: voice states, member changes and channel names go to the
/// batcher or the frequency table.
async fn on_event(
    framework: poise::FrameworkContext<'_, Arc<Shared>, BotError>,
    event: &serenity::FullEvent,
) -> Result<(), BotError> {
    let shared = framework.user_data;
    let guild = serenity::GuildId::new(shared.config.guild_id);
    match event {
        serenity::FullEvent::GuildCreate { guild: created, .. } if created.id == guild => {
            let voice = created
                .voice_states
                .values()
                .filter_map(|s| Some((s.user_id.get(), s.channel_id?.get())))
                .collect();
            let members = created
                .members
                .values()
                .map(|m| (m.user.id.get(), member_info(m)))
                .collect();
            tracing::info!(
                voice_states = created.voice_states.len(),
                members = created.members.len(),
                channels = created.channels.len(),
                "guild snapshot received"
            );
            for channel in created.channels.values() {
                link_channel(shared, channel).await?;
            }
            shared.batcher.push_snapshot(voice, members);
        }
        serenity::FullEvent::VoiceStateUpdate { new, .. } if new.guild_id == Some(guild) => {
            if let Some(member) = &new.member {
                shared
                    .batcher
                    .push(new.user_id.get(), Update::Seen(member_info(member)));
            }
            shared.batcher.push(
                new.user_id.get(),
                Update::Voice(new.channel_id.map(|c| c.get())),
            );
        }
        serenity::FullEvent::GuildMemberAddition { new_member } if new_member.guild_id == guild => {
            shared.batcher.push(
                new_member.user.id.get(),
                Update::Member(member_info(new_member)),
            );
        }
        serenity::FullEvent::GuildMemberUpdate { event: update, .. }
            if update.guild_id == guild =>
        {
            let display_name = update
                .nick
                .clone()
                .or_else(|| update.user.global_name.clone())
                .unwrap_or_else(|| update.user.name.clone());
            let roles = update.roles.iter().map(|r| r.get()).collect();
            // TODO: a role change updates the stored rank, but the member's
            // live tokens keep their old rank and frequencies until the next
            // /radio connect; the control protocol cannot change either.
            shared.batcher.push(
                update.user.id.get(),
                Update::Member(MemberInfo {
                    display_name,
                    roles,
                }),
            );
        }
        serenity::FullEvent::GuildMemberRemoval { guild_id, user, .. } if *guild_id == guild => {
            shared.batcher.push(user.id.get(), Update::Left);
        }
        serenity::FullEvent::ChannelCreate { channel } if channel.guild_id == guild => {
            link_channel(shared, channel).await?;
        }
        serenity::FullEvent::ChannelUpdate { new, .. } if new.guild_id == guild => {
            link_channel(shared, new).await?;
        }
        serenity::FullEvent::ChannelDelete { channel, .. } if channel.guild_id == guild => {
            unlink_channel(shared, channel.id.get()).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Links the frequency in a voice channel's name, such as `Alpha (1050) [3]`,
/// to the channel, creating the frequency when it does not exist yet.
async fn link_channel(shared: &Shared, channel: &serenity::GuildChannel) -> Result<(), BotError> {
    if channel.kind != serenity::ChannelType::Voice {
        return Ok(());
    }
    let channel_id = channel.id.get();
    let Some(link) = access::parse_channel_name(&channel.name) else {
        return Ok(());
    };

    // Keep a frequency linked elsewhere, and skip a write that changes nothing.
    let now = store::now_ms();
    let existing = frequencies::Entity::find_by_id(i32::from(link.freq))
        .one(&shared.db)
        .await?;
    let channel_text = channel_id.to_string();
    let row = match existing {
        Some(row) if row.channel_id.as_deref().is_some_and(|c| c != channel_text) => {
            tracing::warn!(
                freq = %link.freq,
                channel = channel_id,
                linked = ?row.channel_id,
                "channel name names a frequency linked to another channel; ignored"
            );
            return Ok(());
        }
        Some(row)
            if row.channel_id.as_deref() == Some(channel_text.as_str())
                && row.name == link.name
                && row.min_rank == i16::from(link.min_rank) =>
        {
            return Ok(());
        }
        Some(row) => {
            let mut active = row.into_active_model();
            active.name = Set(link.name.clone());
            active.channel_id = Set(Some(channel_text.clone()));
            active.min_rank = Set(i16::from(link.min_rank));
            active.updated_at_ms = Set(now);
            active.update(&shared.db).await?
        }
        None => {
            frequencies::ActiveModel {
                id: Set(i32::from(link.freq)),
                name: Set(link.name.clone()),
                channel_id: Set(Some(channel_text.clone())),
                role_id: Set(None),
                min_rank: Set(i16::from(link.min_rank)),
                half_duplex: Set(true),
                created_at_ms: Set(now),
                updated_at_ms: Set(now),
            }
            .insert(&shared.db)
            .await?
        }
    };

    // A renamed channel may have linked another frequency before.
    unlink_others(shared, channel_id, link.freq).await?;
    tracing::info!(freq = %link.freq, channel = channel_id, min_rank = link.min_rank, "linked voice channel by name");

    shared.reload_directory().await?;
    if let Some(config) = store::freq_config(&row) {
        shared
            .control
            .notify(ControlCommand::FreqUpsert { freq: config })
            .await;
    }
    shared.reassign_channels(&[channel_id]).await
}

async fn unlink_others(shared: &Shared, channel_id: u64, keep: FreqId) -> Result<(), BotError> {
    frequencies::Entity::update_many()
        .col_expr(
            frequencies::Column::ChannelId,
            Expr::value(Option::<String>::None),
        )
        .filter(frequencies::Column::ChannelId.eq(channel_id.to_string()))
        .filter(frequencies::Column::Id.ne(i32::from(keep)))
        .exec(&shared.db)
        .await?;
    Ok(())
}

/// Removes the link of a deleted channel; its frequency stays configured.
async fn unlink_channel(shared: &Shared, channel_id: u64) -> Result<(), BotError> {
    let result = frequencies::Entity::update_many()
        .col_expr(
            frequencies::Column::ChannelId,
            Expr::value(Option::<String>::None),
        )
        .filter(frequencies::Column::ChannelId.eq(channel_id.to_string()))
        .exec(&shared.db)
        .await?;
    if result.rows_affected > 0 {
        tracing::info!(
            channel = channel_id,
            "voice channel deleted; frequency unlinked"
        );
        shared.reload_directory().await?;
        shared.reassign_channels(&[channel_id]).await?;
    }
    Ok(())
}
