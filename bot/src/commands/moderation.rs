//! `/radio` commands for moderators: kick, ban, unban, mute, unmute, log,
//! stats. Each action is written to the audit log in the same transaction
//! as the change it records.

use krt_migrations::entities::{bans, mutes};
use krt_shared::UserId;
use krt_shared::control::{ControlCommand, StatsReply};
use poise::serenity_prelude as serenity;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, TransactionTrait};

use super::radio::{format_utc, shorten_message};
use super::{Context, freq_arg, moderator_check, reply};
use crate::cli::unix_now;
use crate::error::BotError;
use crate::store;

/// Maximum length of a reason, in characters.
const MAX_REASON: usize = 200;
/// Default and maximum number of rows of `/radio log`.
const LOG_DEFAULT: u64 = 10;
const LOG_MAX: u64 = 25;

fn reason_arg(reason: Option<String>) -> Result<String, BotError> {
    let reason = reason.unwrap_or_default().trim().to_owned();
    if reason.chars().count() > MAX_REASON {
        return Err(BotError::Input(format!(
            "invalid reason of {} characters: use at most {MAX_REASON}",
            reason.chars().count()
        )));
    }
    Ok(if reason.is_empty() {
        "no reason given".into()
    } else {
        reason
    })
}

fn actor(ctx: Context<'_>) -> UserId {
    ctx.data().user_key.pseudonymize(ctx.author().id.get())
}

/// Revokes every token of `target` and closes their live sessions.
async fn revoke_and_close(
    ctx: Context<'_>,
    target: UserId,
    action: &str,
    reason: &str,
    ban: bool,
) -> Result<(), BotError> {
    let shared = ctx.data();
    let before = unix_now();
    let min_expiry = store::now_ms() + shared.config.token_ttl.as_millis() as i64;
    let txn = shared.db.begin().await?;
    if ban {
        bans::Entity::delete_by_id(target.to_string())
            .exec(&txn)
            .await?;
        bans::ActiveModel {
            user_id: Set(target.to_string()),
            reason: Set(reason.to_owned()),
            banned_by: Set(actor(ctx).to_string()),
            created_at_ms: Set(store::now_ms()),
        }
        .insert(&txn)
        .await?;
    }
    store::revoke_user(&txn, target, before, reason, min_expiry).await?;
    store::audit(&txn, actor(ctx), action, &target.to_string(), reason).await?;
    txn.commit().await?;
    tracing::info!(action, actor = %actor(ctx), user = %target, "revoked tokens");
    shared
        .control
        .notify(ControlCommand::RevokeUser {
            user_id: target,
            before,
            reason: reason.to_owned(),
        })
        .await;
    Ok(())
}

/// Moderators: end a member's radio sessions and revoke their tokens.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn kick(
    ctx: Context<'_>,
    #[description = "Member to disconnect from the radio"] user: serenity::User,
    #[description = "Why (shown to the member, up to 200 characters)"] reason: Option<String>,
) -> Result<(), BotError> {
    let reason = reason_arg(reason)?;
    let target = ctx.data().user_key.pseudonymize(user.id.get());
    revoke_and_close(ctx, target, "radio kick", &reason, false).await?;
    reply(
        ctx,
        format!(
            "Kicked <@{}> from the radio: live sessions closed and tokens revoked. They can \
             reconnect with a new token from /radio connect.",
            user.id
        ),
    )
    .await
}

/// Moderators: ban a member from the radio. Ends their sessions and stops new tokens.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn ban(
    ctx: Context<'_>,
    #[description = "Member to ban from the radio"] user: serenity::User,
    #[description = "Why (shown to the member, up to 200 characters)"] reason: Option<String>,
) -> Result<(), BotError> {
    let reason = reason_arg(reason)?;
    let target = ctx.data().user_key.pseudonymize(user.id.get());
    revoke_and_close(ctx, target, "radio ban", &reason, true).await?;
    reply(
        ctx,
        format!(
            "Banned <@{}> from the radio: live sessions closed, tokens revoked, no new tokens \
             until /radio unban.",
            user.id
        ),
    )
    .await
}

/// Moderators: lift a radio ban so the member can get tokens again.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn unban(
    ctx: Context<'_>,
    #[description = "Member to unban"] user: serenity::User,
) -> Result<(), BotError> {
    let shared = ctx.data();
    let target = shared.user_key.pseudonymize(user.id.get());
    let txn = shared.db.begin().await?;
    let removed = bans::Entity::delete_by_id(target.to_string())
        .exec(&txn)
        .await?;
    if removed.rows_affected == 0 {
        txn.rollback().await?;
        return Err(BotError::Input(format!(
            "<@{}> is not banned from the radio: nothing to undo",
            user.id
        )));
    }
    store::audit(&txn, actor(ctx), "radio unban", &target.to_string(), "").await?;
    txn.commit().await?;
    tracing::info!(actor = %actor(ctx), user = %target, "unbanned");
    reply(
        ctx,
        format!(
            "Unbanned <@{}>. They can get a new token with /radio connect.",
            user.id
        ),
    )
    .await
}

/// Moderators: stop a member from transmitting on a frequency.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn mute(
    ctx: Context<'_>,
    #[description = "Member to mute"] user: serenity::User,
    #[description = "Frequency, 1000 to 9999"] freq: i64,
) -> Result<(), BotError> {
    set_mute(ctx, user, freq, true).await
}

/// Moderators: let a muted member transmit on a frequency again.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn unmute(
    ctx: Context<'_>,
    #[description = "Member to unmute"] user: serenity::User,
    #[description = "Frequency, 1000 to 9999"] freq: i64,
) -> Result<(), BotError> {
    set_mute(ctx, user, freq, false).await
}

async fn set_mute(
    ctx: Context<'_>,
    user: serenity::User,
    freq: i64,
    muted: bool,
) -> Result<(), BotError> {
    let freq = freq_arg(freq)?;
    let shared = ctx.data();
    let target = shared.user_key.pseudonymize(user.id.get());
    let txn = shared.db.begin().await?;

    let key = (target.to_string(), i32::from(freq));
    let existing = mutes::Entity::find_by_id(key.clone()).one(&txn).await?;
    match (muted, existing.is_some()) {
        (true, true) => {
            txn.rollback().await?;
            return Err(BotError::Input(format!(
                "<@{}> is already muted on {freq}: use /radio unmute to undo it",
                user.id
            )));
        }
        (false, false) => {
            txn.rollback().await?;
            return Err(BotError::Input(format!(
                "<@{}> is not muted on {freq}",
                user.id
            )));
        }
        (true, false) => {
            mutes::ActiveModel {
                user_id: Set(key.0.clone()),
                freq_id: Set(key.1),
                created_at_ms: Set(store::now_ms()),
            }
            .insert(&txn)
            .await?;
        }
        (false, true) => {
            mutes::Entity::delete_by_id(key).exec(&txn).await?;
        }
    }

    let action = if muted { "radio mute" } else { "radio unmute" };
    store::audit(
        &txn,
        actor(ctx),
        action,
        &target.to_string(),
        &format!("freq {freq}"),
    )
    .await?;
    txn.commit().await?;
    tracing::info!(action, actor = %actor(ctx), user = %target, %freq, "mute changed");

    shared
        .control
        .notify(ControlCommand::Mute {
            user_id: target,
            freq_id: freq,
            muted,
        })
        .await;

    let text = if muted {
        format!(
            "Muted <@{}> on {freq}: their transmissions there are dropped.",
            user.id
        )
    } else {
        format!("Unmuted <@{}> on {freq}.", user.id)
    };
    reply(ctx, text).await
}

/// Moderators: recent transmissions (who, when, how long).
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn log(
    ctx: Context<'_>,
    #[description = "Only this frequency, 1000 to 9999"] freq: Option<i64>,
    #[description = "Number of entries, 1 to 25 (default 10)"] limit: Option<i64>,
) -> Result<(), BotError> {
    let freq = freq.map(freq_arg).transpose()?;
    let limit = match limit {
        None => LOG_DEFAULT,
        Some(value) if (1..=LOG_MAX as i64).contains(&value) => value as u64,
        Some(value) => {
            return Err(BotError::Input(format!(
                "invalid limit {value}: use a number from 1 to {LOG_MAX}"
            )));
        }
    };
    let rows = store::recent_transmissions(&ctx.data().db, freq, limit).await?;
    if rows.is_empty() {
        let scope = freq.map(|f| format!(" on {f}")).unwrap_or_default();
        return reply(ctx, format!("No transmissions recorded{scope}.")).await;
    }
    let mut text = String::from("Recent transmissions, newest first:");
    for (row, name) in rows {
        let who =
            name.unwrap_or_else(|| format!("user {}", &row.user_id[..8.min(row.user_id.len())]));
        let seconds = (row.ended_at_ms - row.started_at_ms).max(0) as f64 / 1000.0;
        let started = (row.started_at_ms / 1000).max(0) as u64;
        text.push_str(&format!(
            "\n{} on **{}**: {who}, {seconds:.1} s ({} frames)",
            format_utc_seconds(started),
            row.freq_id,
            row.frames
        ));
    }
    reply(ctx, shorten_message(text)).await
}

fn format_utc_seconds(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format_utc(secs))
}

/// Moderators: relay load (sessions, frequencies, frames per second, drops).
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn stats(ctx: Context<'_>) -> Result<(), BotError> {
    let stats: StatsReply = ctx.data().control.request_as(ControlCommand::Stats).await?;
    let text = format!(
        "Relay up {uptime}: {sessions} sessions, {freqs} busy frequencies, {rate:.0} frames/s in.\n\
         Frames since start: {frames_in} in, {frames_out} out, {denied} refused by floor control \
         or mutes.\n\
         Dropped for slow listeners: {dropped} with a full queue, {late} that waited too long.",
        uptime = humantime::format_duration(std::time::Duration::from_secs(stats.uptime_secs)),
        sessions = stats.sessions,
        freqs = stats.frequencies,
        rate = stats.frames_in_per_sec,
        frames_in = stats.frames_in,
        frames_out = stats.frames_out,
        denied = stats.frames_denied,
        dropped = stats.frames_dropped,
        late = stats.frames_late,
    );
    reply(ctx, text).await
}
