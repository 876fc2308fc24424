//! Slash commands, their checks and the one error handler of the framework.
//!
//! Every reply is ephemeral, so only the member who ran the command can read it.

pub mod freq;
pub mod moderation;
pub mod radio;

use std::time::{Duration, Instant};

use poise::CreateReply;
use poise::serenity_prelude as serenity;

use crate::app::Shared;
use crate::error::BotError;

/// Command context of this bot.
pub type Context<'a> = poise::Context<'a, std::sync::Arc<Shared>, BotError>;

/// Framework error of this bot.
pub type FrameworkError<'a> = poise::FrameworkError<'a, std::sync::Arc<Shared>, BotError>;

/// Builds every command the bot registers.
pub fn all() -> Vec<poise::Command<std::sync::Arc<Shared>, BotError>> {
    vec![radio::radio(), freq::freq(), freq::rank()]
}

/// Sends an ephemeral reply.
pub async fn reply(ctx: Context<'_>, text: impl Into<String>) -> Result<(), BotError> {
    ctx.send(CreateReply::default().content(text).ephemeral(true))
        .await?;
    Ok(())
}

/// Name, roles and permissions of the member who ran the command.
///
/// The interaction's member payload carries them, so no REST call is made.
/// Only when the payload lacks the member is it fetched from Discord.
pub async fn author_member(ctx: Context<'_>) -> Result<serenity::Member, BotError> {
    if let Some(member) = ctx.author_member().await {
        return Ok(member.into_owned());
    }
    let guild = ctx.guild_id().ok_or_else(|| {
        BotError::Input("use this command in the server, not in a direct message".into())
    })?;
    tracing::debug!(user = %ctx.author().id, "interaction lacks member data; fetching it");
    Ok(guild.member(ctx, ctx.author().id).await?)
}

/// Role ids of a member as numbers.
pub fn role_ids(member: &serenity::Member) -> Vec<u64> {
    member.roles.iter().map(|role| role.get()).collect()
}

/// Returns true when `member` has Manage Channels (or Administrator) or
/// the configured moderator role.
pub fn is_moderator(member: &serenity::Member, moderator_role: Option<u64>) -> bool {
    let permitted = member.permissions.is_some_and(|p| {
        p.contains(serenity::Permissions::MANAGE_CHANNELS)
            || p.contains(serenity::Permissions::ADMINISTRATOR)
    });
    let has_role = moderator_role.is_some_and(|role| member.roles.iter().any(|r| r.get() == role));
    permitted || has_role
}

/// Check of every moderator command.
pub async fn moderator_check(ctx: Context<'_>) -> Result<bool, BotError> {
    let member = author_member(ctx).await?;
    Ok(is_moderator(&member, ctx.data().config.moderator_role_id))
}

/// Outcome of the cooldown check for one invocation.
#[derive(Clone, Copy)]
struct CooldownDecision(Option<Duration>);

/// Global check: the per-user cooldown.
///
/// poise runs global checks once per command of the tree (parent and
/// subcommand) and again before the action, so the first decision is kept
/// in the invocation data and one invocation takes one cell of the quota.
pub async fn cooldown_check(ctx: Context<'_>) -> Result<bool, BotError> {
    let earlier = ctx.invocation_data::<CooldownDecision>().await.map(|d| *d);
    let decision = match earlier {
        Some(decision) => decision,
        None => {
            let user = ctx.author().id.get();
            let wait = ctx.data().cooldown.check_key(&user).err().map(|not_until| {
                not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ))
            });
            ctx.set_invocation_data(CooldownDecision(wait)).await;
            CooldownDecision(wait)
        }
    };
    match decision.0 {
        None => Ok(true),
        Some(wait) => Err(BotError::SlowDown { wait }),
    }
}

/// Parses a frequency argument.
pub fn freq_arg(value: i64) -> Result<krt_shared::FreqId, BotError> {
    krt_shared::FreqId::new(value).map_err(|e| BotError::Input(e.to_string()))
}

/// The one error handler of the framework.
pub async fn on_error(error: FrameworkError<'_>) {
    match error {
        poise::FrameworkError::Command { error, ctx, .. } => {
            let command = ctx.command().qualified_name.to_string();
            if error.is_user_error() {
                tracing::debug!(command, user = %ctx.author().id, %error, "command rejected");
            } else {
                tracing::error!(command, user = %ctx.author().id, %error, "command failed");
            }
            send_error_reply(ctx, error.user_text()).await;
        }
        poise::FrameworkError::ArgumentParse {
            error, input, ctx, ..
        } => {
            let command = ctx.command().qualified_name.to_string();
            let text = match input {
                Some(input) => format!(
                    "Invalid value '{input}' for /{command}: {error}. Check the option and try again."
                ),
                None => format!(
                    "Invalid arguments for /{command}: {error}. Check the options and try again."
                ),
            };
            tracing::debug!(command, user = %ctx.author().id, %error, "argument rejected");
            send_error_reply(ctx, text).await;
        }
        poise::FrameworkError::CommandCheckFailed { error, ctx, .. } => {
            let command = ctx.command().qualified_name.to_string();
            match error {
                Some(BotError::SlowDown { wait }) => slow_down(ctx, wait).await,
                Some(error) => {
                    tracing::error!(command, user = %ctx.author().id, %error, "command check failed");
                    send_error_reply(ctx, error.user_text()).await;
                }
                None => {
                    tracing::info!(command, user = %ctx.author().id, "moderator command rejected");
                    let role = ctx
                        .data()
                        .config
                        .moderator_role_id
                        .map(|role| format!(" or the <@&{role}> role"))
                        .unwrap_or_default();
                    let text =
                        format!("You need the Manage Channels permission{role} to use /{command}.");
                    send_error_reply(ctx, text).await;
                }
            }
        }
        poise::FrameworkError::GuildOnly { ctx, .. } => {
            send_error_reply(
                ctx,
                "Use this command in the server, not in a direct message.".into(),
            )
            .await;
        }
        poise::FrameworkError::CommandStructureMismatch {
            description, ctx, ..
        } => {
            tracing::warn!(command = %ctx.command().qualified_name, description, "command options differ from the registered ones");
            send_error_reply(
                poise::Context::Application(ctx),
                "This command is out of date. Ask an administrator to restart the bot, which registers the commands again.".into(),
            )
            .await;
        }
        poise::FrameworkError::UnknownInteraction {
            framework,
            interaction,
            ..
        } => {
            tracing::warn!(command = %interaction.data.name, "unknown command; registrations out of date");
            let message = serenity::CreateInteractionResponseMessage::new()
                .content(
                    "This command is unknown to the bot. Ask an administrator to restart the bot, \
                     which registers the current commands.",
                )
                .ephemeral(true);
            let response = serenity::CreateInteractionResponse::Message(message);
            if let Err(error) = interaction
                .create_response(framework.serenity_context, response)
                .await
            {
                tracing::warn!(%error, "failed to reply to an unknown command");
            }
        }
        poise::FrameworkError::Setup { error, .. } => {
            tracing::error!(%error, "bot setup failed; commands are not registered");
        }
        poise::FrameworkError::EventHandler { error, event, .. } => {
            tracing::error!(event = event.snake_case_name(), %error, "event handler failed");
        }
        other => {
            if let Err(error) = poise::builtins::on_error(other).await {
                tracing::error!(%error, "failed to report a framework error");
            }
        }
    }
}

async fn send_error_reply(ctx: Context<'_>, text: String) {
    // An error may quote the user's input, which can be long.
    if let Err(error) = reply(ctx, radio::shorten_message(text)).await {
        tracing::warn!(user = %ctx.author().id, %error, "failed to send error reply");
    }
}

/// Replies to the first rejected command of a flood, and leaves the others
/// without a response until the flood is over.
async fn slow_down(ctx: Context<'_>, wait: Duration) {
    let user = ctx.author().id.get();
    let shared = ctx.data();
    let quiet_for = shared.config.command_period * shared.config.command_burst.get();
    let first_of_flood = {
        let mut replied = shared
            .slow_down_replied
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        replied.retain(|_, at| now.duration_since(*at) < quiet_for);
        match replied.get(&user) {
            Some(_) => false,
            None => {
                replied.insert(user, now);
                true
            }
        }
    };
    shared
        .counters
        .rate_limited
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if first_of_flood {
        tracing::info!(user, "command rate limit hit");
        send_error_reply(ctx, BotError::SlowDown { wait }.user_text()).await;
    } else {
        tracing::debug!(user, "command rate limit hit again; no response sent");
    }
}
