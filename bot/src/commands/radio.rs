//! `/radio` commands for every member: connect, frequencies, status.

use krt_shared::FreqSet;
use krt_shared::control::{ControlCommand, StatusReply};
use krt_shared::token::{Claims, MAX_TOKEN_LEN, new_token_id};

use super::{Context, author_member, reply, role_ids};
use crate::access;
use crate::cli::unix_now;
use crate::error::BotError;
use crate::store::{self, IssuedToken};

/// Maximum length of a frequency list in a reply, in characters.
const MAX_LIST_TEXT: usize = 600;

/// KRT-Com radio: tokens, frequencies and moderation.
#[poise::command(
    slash_command,
    guild_only,
    subcommand_required,
    subcommands(
        "connect",
        "frequencies",
        "status",
        "super::moderation::kick",
        "super::moderation::ban",
        "super::moderation::unban",
        "super::moderation::mute",
        "super::moderation::unmute",
        "super::moderation::log",
        "super::moderation::stats"
    )
)]
pub async fn radio(_ctx: Context<'_>) -> Result<(), BotError> {
    Ok(())
}

/// Get your personal radio token for the KRT-Com desktop client.
#[poise::command(slash_command, guild_only)]
pub async fn connect(ctx: Context<'_>) -> Result<(), BotError> {
    let shared = ctx.data();
    let member = author_member(ctx).await?;
    let user = shared.user_key.pseudonymize(ctx.author().id.get());
    if let Some(ban) = store::ban(&shared.db, user).await? {
        return Err(BotError::Banned { reason: ban.reason });
    }

    let roles = role_ids(&member);
    let rank = {
        let directory = shared.directory.read().unwrap_or_else(|p| p.into_inner());
        access::member_rank(&roles, &directory.rank_roles)
    };
    let rules: Vec<_> = store::frequencies(&shared.db)
        .await?
        .iter()
        .filter_map(store::freq_rule)
        .collect();
    let freqs = access::allowed_freqs(&rules, &roles, rank, shared.config.open_unconfigured);

    // A token issued in the second of a revocation would count as revoked.
    let now = unix_now();
    let issued_at = match store::revoked_before(&shared.db, user, store::now_ms()).await? {
        Some(before) if before >= now => before + 1,
        _ => now,
    };
    let expires_at = issued_at + shared.config.token_ttl.as_secs();
    let display_name = member.display_name().to_owned();
    let claims = Claims {
        sub: user,
        guild: shared.config.guild_id.to_string(),
        name: display_name.clone(),
        rank,
        freqs: freqs.clone(),
        iat: issued_at,
        exp: expires_at,
        jti: new_token_id(),
    };
    let token = shared.signer.sign(&claims);
    let text = format!(
        "Your KRT-Com radio token. Keep it private: anyone with it can talk as you.\n\
         ```\n{token}\n```\n\
         Relay: `{relay}`\n\
         Expires: <t:{expires_at}:f> ({expiry})\n\
         Rank {rank}, frequencies: {list}",
        relay = shared.config.relay_url,
        expiry = format_utc(expires_at),
        list = shorten(&freqs.to_string()),
    );
    // The token lists the frequencies as ranges, so every frequency closed
    // to this member among open ones adds a range.
    // TODO: send long tokens as an attachment, and raise the relay's limit.
    if token.len() > MAX_TOKEN_LEN || text.chars().count() > MAX_MESSAGE_CHARS {
        tracing::warn!(%user, bytes = token.len(), ranges = freqs.ranges().len(), "token too long to deliver");
        return Err(BotError::Input(format!(
            "your frequencies form {} ranges, too many for a token that fits in a Discord message: ask a moderator to give rank- and role-limited frequencies neighbouring numbers, so that they form fewer ranges",
            freqs.ranges().len()
        )));
    }
    store::record_token(
        &shared.db,
        &IssuedToken {
            token_id: &claims.jti,
            user,
            display_name: &display_name,
            rank,
            issued_at,
            expires_at,
        },
    )
    .await?;
    tracing::info!(%user, rank, token_id = %claims.jti, "issued token");
    reply(ctx, text).await
}

/// List the radio frequencies you may use.
#[poise::command(slash_command, guild_only)]
pub async fn frequencies(ctx: Context<'_>) -> Result<(), BotError> {
    let shared = ctx.data();
    let member = author_member(ctx).await?;
    let roles = role_ids(&member);
    let rank = {
        let directory = shared.directory.read().unwrap_or_else(|p| p.into_inner());
        access::member_rank(&roles, &directory.rank_roles)
    };
    let rows = store::frequencies(&shared.db).await?;
    let mut lines = Vec::new();
    for row in &rows {
        let Some(rule) = store::freq_rule(row) else {
            continue;
        };
        if access::may_use(&rule, &roles, rank) {
            let channel = row
                .channel_id
                .as_deref()
                .map(|c| format!(" (voice channel <#{c}>)"))
                .unwrap_or_default();
            lines.push(format!("**{}** {}{channel}", rule.id, rule.name));
        }
    }
    let mut text = if lines.is_empty() {
        "No configured frequency is open to you.".to_owned()
    } else {
        format!(
            "Frequencies you may use (rank {rank}):\n{}",
            lines.join("\n")
        )
    };
    if shared.config.open_unconfigured {
        text.push_str("\nEvery other frequency from 1000 to 9999 is open to all members.");
    }
    reply(ctx, shorten_message(text)).await
}

/// Show your live radio sessions and which frequencies are busy.
#[poise::command(slash_command, guild_only)]
pub async fn status(ctx: Context<'_>) -> Result<(), BotError> {
    let shared = ctx.data();
    let user = shared.user_key.pseudonymize(ctx.author().id.get());
    let status: StatusReply = shared
        .control
        .request_as(ControlCommand::Status {
            user_id: Some(user),
        })
        .await?;
    let mut text = if status.sessions.is_empty() {
        "You have no live radio session. Use /radio connect to get a token.".to_owned()
    } else {
        let mut text = format!("Your live sessions: {}", status.sessions.len());
        for session in &status.sessions {
            let joined = FreqSet::from_freqs(session.joined.iter().copied());
            let joined = if joined.is_empty() {
                "none".to_owned()
            } else {
                joined.to_string()
            };
            text.push_str(&format!(
                "\nSession {}: connected {} s, joined {joined}",
                session.session, session.connected_secs
            ));
        }
        text
    };
    let busy = FreqSet::from_freqs(status.busy.iter().copied());
    if busy.is_empty() {
        text.push_str("\nNo frequency is busy.");
    } else {
        text.push_str(&format!(
            "\nBusy frequencies: {}",
            shorten(&busy.to_string())
        ));
    }
    reply(ctx, shorten_message(text)).await
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn format_utc(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// Cuts a list to [`MAX_LIST_TEXT`] characters.
pub fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_LIST_TEXT {
        return text.to_owned();
    }
    let cut: String = text.chars().take(MAX_LIST_TEXT).collect();
    format!("{cut}, ...")
}

/// Discord's limit on the length of a message.
const MAX_MESSAGE_CHARS: usize = 2000;

/// Cuts a message to Discord's limit of 2000 characters.
pub fn shorten_message(text: String) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_MESSAGE_CHARS - 4).collect();
    cut.push_str("\n...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_utc_is_readable() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
    }

    #[test]
    fn long_text_is_cut() {
        let long = "1000,".repeat(400);
        assert!(shorten(&long).ends_with(", ..."));
        assert_eq!(shorten_message("x".repeat(3000)).chars().count(), 2000);
        assert_eq!(shorten_message("short".into()), "short");
    }
}
