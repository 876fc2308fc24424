//! `/freq` and `/rank` commands for moderators.

use krt_migrations::entities::{frequencies, rank_roles};
use krt_shared::FreqId;
use krt_shared::control::ControlCommand;
use krt_shared::token::MAX_RANK;
use poise::serenity_prelude as serenity;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter,
    TransactionTrait,
};

use super::radio::shorten_message;
use super::{Context, freq_arg, moderator_check, reply};
use crate::access;
use crate::error::BotError;
use crate::store;

/// Maximum length of a frequency name, in characters.
const MAX_NAME: usize = 32;

/// Moderators: create, edit, delete and list radio frequencies.
#[poise::command(
    slash_command,
    guild_only,
    subcommand_required,
    subcommands("create", "edit", "delete", "list")
)]
pub async fn freq(_ctx: Context<'_>) -> Result<(), BotError> {
    Ok(())
}

/// Moderators: set the rank that a role gives its members.
#[poise::command(slash_command, guild_only, subcommand_required, subcommands("set"))]
pub async fn rank(_ctx: Context<'_>) -> Result<(), BotError> {
    Ok(())
}

fn name_arg(name: &str) -> Result<String, BotError> {
    let name = name.trim();
    let length = name.chars().count();
    if length > MAX_NAME {
        // Too long to quote in a reply.
        return Err(BotError::Input(format!(
            "invalid name of {length} characters: use 1 to {MAX_NAME} printable characters"
        )));
    }
    if length == 0 || name.chars().any(char::is_control) || name.chars().all(is_invisible) {
        return Err(BotError::Input(format!(
            "invalid name '{name}': use 1 to {MAX_NAME} printable characters"
        )));
    }
    Ok(name.to_owned())
}

/// Returns whether `c` is white space or a zero-width or direction mark,
/// all of which render as nothing.
fn is_invisible(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// Rejects the @everyone role, whose id is the guild's. Discord lists it in
/// no member's roles, so a rank or a requirement on it would never apply.
fn role_arg(ctx: Context<'_>, role: &serenity::Role) -> Result<u64, BotError> {
    if ctx
        .guild_id()
        .is_some_and(|guild| guild.get() == role.id.get())
    {
        return Err(BotError::Input(
            "invalid role @everyone: Discord lists it in no member's roles, so it cannot carry a rank or limit a frequency. Pick another role.".into(),
        ));
    }
    Ok(role.id.get())
}

fn rank_arg(option: &str, value: i64) -> Result<u8, BotError> {
    u8::try_from(value)
        .ok()
        .filter(|rank| *rank <= MAX_RANK)
        .ok_or_else(|| {
            BotError::Input(format!(
                "invalid {option} {value}: use a number from 0 to {MAX_RANK}"
            ))
        })
}

fn voice_channel_arg(channel: &serenity::PartialChannel) -> Result<u64, BotError> {
    if channel.kind != serenity::ChannelType::Voice {
        let name = channel.name.as_deref().unwrap_or("?");
        return Err(BotError::Input(format!(
            "invalid channel #{name}: pick a voice channel"
        )));
    }
    Ok(channel.id.get())
}

/// Fails when another frequency already links `channel`.
async fn check_channel_free(
    db: &impl sea_orm::ConnectionTrait,
    channel: u64,
    freq: FreqId,
) -> Result<(), BotError> {
    let other = frequencies::Entity::find()
        .filter(frequencies::Column::ChannelId.eq(channel.to_string()))
        .filter(frequencies::Column::Id.ne(i32::from(freq)))
        .one(db)
        .await?;
    match other {
        Some(row) => Err(BotError::Input(format!(
            "channel <#{channel}> is already linked to frequency {}: unlink it there first with /freq edit",
            row.id
        ))),
        None => Ok(()),
    }
}

fn describe(row: &frequencies::Model) -> String {
    let mut text = format!("**{}** {}", row.id, row.name);
    if let Some(channel) = &row.channel_id {
        text.push_str(&format!(", channel <#{channel}>"));
    }
    if let Some(role) = &row.role_id {
        text.push_str(&format!(", role <@&{role}>"));
    }
    if row.min_rank > 0 {
        text.push_str(&format!(", min rank {}", row.min_rank));
    }
    text.push_str(if row.half_duplex {
        ", half duplex"
    } else {
        ", full duplex"
    });
    text
}

/// Tells the relay about a changed frequency and regrants affected channels.
async fn publish(
    ctx: Context<'_>,
    row: &frequencies::Model,
    channels: &[u64],
) -> Result<(), BotError> {
    let shared = ctx.data();
    shared.reload_directory().await?;
    if let Some(config) = store::freq_config(row) {
        shared
            .control
            .notify(ControlCommand::FreqUpsert { freq: config })
            .await;
    }
    shared.reassign_channels(channels).await
}

/// Moderators: create a frequency, optionally linked to a voice channel or limited to a role or rank.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn create(
    ctx: Context<'_>,
    #[description = "Frequency number, 1000 to 9999"] id: i64,
    #[description = "Display name, up to 32 characters"] name: String,
    #[description = "Voice channel whose members get this frequency"]
    #[channel_types("Voice")]
    channel: Option<serenity::PartialChannel>,
    #[description = "Only members with this role may use it"] role: Option<serenity::Role>,
    #[description = "Lowest rank that may use it, 0 to 100 (default 0)"] min_rank: Option<i64>,
    #[description = "One talker at a time (default true)"] half_duplex: Option<bool>,
) -> Result<(), BotError> {
    let freq = freq_arg(id)?;
    let name = name_arg(&name)?;
    let min_rank = rank_arg("min_rank", min_rank.unwrap_or(0))?;
    let channel = channel.as_ref().map(voice_channel_arg).transpose()?;
    let role = role.as_ref().map(|r| role_arg(ctx, r)).transpose()?;
    let shared = ctx.data();

    let txn = shared.db.begin().await?;
    if frequencies::Entity::find_by_id(i32::from(freq))
        .one(&txn)
        .await?
        .is_some()
    {
        txn.rollback().await?;
        return Err(BotError::Input(format!(
            "frequency {freq} already exists: change it with /freq edit or remove it with /freq delete"
        )));
    }
    if let Some(channel) = channel {
        check_channel_free(&txn, channel, freq).await?;
    }
    let now = store::now_ms();
    let row = frequencies::ActiveModel {
        id: Set(i32::from(freq)),
        name: Set(name),
        channel_id: Set(channel.map(|c| c.to_string())),
        role_id: Set(role.map(|r| r.to_string())),
        min_rank: Set(i16::from(min_rank)),
        half_duplex: Set(half_duplex.unwrap_or(true)),
        created_at_ms: Set(now),
        updated_at_ms: Set(now),
    }
    .insert(&txn)
    .await?;
    let actor = shared.user_key.pseudonymize(ctx.author().id.get());
    store::audit(
        &txn,
        actor,
        "freq create",
        &freq.to_string(),
        &describe(&row),
    )
    .await?;
    txn.commit().await?;
    tracing::info!(%freq, %actor, "frequency created");

    publish(ctx, &row, &channel.into_iter().collect::<Vec<_>>()).await?;
    reply(ctx, format!("Created {}.", describe(&row))).await
}

/// Returns the name of the voice channel `channel` when that name names
/// `freq`, such as `Alpha (1050) [3]`. The bot then takes the frequency's
/// name and minimum rank from the channel at every start and channel
/// change, so an edit of them would not last.
fn naming_channel(ctx: Context<'_>, channel: Option<u64>, freq: FreqId) -> Option<String> {
    let channel = serenity::ChannelId::new(channel?);
    let name = ctx.guild()?.channels.get(&channel)?.name.clone();
    let link = access::parse_channel_name(&name)?;
    (link.freq == freq).then_some(name)
}

/// Moderators: change a frequency's name, channel, role, minimum rank or duplex mode.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
#[allow(clippy::too_many_arguments)]
pub async fn edit(
    ctx: Context<'_>,
    #[description = "Frequency number, 1000 to 9999"] id: i64,
    #[description = "New display name, up to 32 characters"] name: Option<String>,
    #[description = "New linked voice channel"]
    #[channel_types("Voice")]
    channel: Option<serenity::PartialChannel>,
    #[description = "New required role"] role: Option<serenity::Role>,
    #[description = "New lowest rank, 0 to 100"] min_rank: Option<i64>,
    #[description = "One talker at a time"] half_duplex: Option<bool>,
    #[description = "Remove the voice channel link"] unlink_channel: Option<bool>,
    #[description = "Remove the role requirement"] clear_role: Option<bool>,
) -> Result<(), BotError> {
    let freq = freq_arg(id)?;
    let name = name.as_deref().map(name_arg).transpose()?;
    let min_rank = min_rank.map(|r| rank_arg("min_rank", r)).transpose()?;
    let channel = channel.as_ref().map(voice_channel_arg).transpose()?;
    let role = role.as_ref().map(|r| role_arg(ctx, r)).transpose()?;
    if channel.is_some() && unlink_channel == Some(true) {
        return Err(BotError::Input(
            "conflicting options: give either channel or unlink_channel, not both".into(),
        ));
    }
    if role.is_some() && clear_role == Some(true) {
        return Err(BotError::Input(
            "conflicting options: give either role or clear_role, not both".into(),
        ));
    }
    let changes_name_rank_or_link =
        name.is_some() || min_rank.is_some() || unlink_channel == Some(true);
    let changes_nothing = !changes_name_rank_or_link
        && channel.is_none()
        && role.is_none()
        && clear_role.is_none()
        && half_duplex.is_none();
    let shared = ctx.data();

    let txn = shared.db.begin().await?;
    let Some(row) = frequencies::Entity::find_by_id(i32::from(freq))
        .one(&txn)
        .await?
    else {
        txn.rollback().await?;
        return Err(BotError::Input(format!(
            "frequency {freq} not found: create it with /freq create"
        )));
    };
    if changes_nothing {
        txn.rollback().await?;
        return Err(BotError::Input(format!(
            "nothing to change for frequency {freq}: give at least one option"
        )));
    }
    let old_channel: Option<u64> = row.channel_id.as_deref().and_then(|c| c.parse().ok());
    if changes_name_rank_or_link && let Some(channel_name) = naming_channel(ctx, old_channel, freq)
    {
        txn.rollback().await?;
        return Err(BotError::Input(format!(
            "frequency {freq} takes its name and minimum rank from the name of its voice channel '{channel_name}': rename the channel to change them, or remove ({freq}) from the channel's name to unlink it"
        )));
    }
    let mut active = row.into_active_model();
    if let Some(name) = name {
        active.name = Set(name);
    }
    if let Some(channel) = channel {
        check_channel_free(&txn, channel, freq).await?;
        active.channel_id = Set(Some(channel.to_string()));
    }
    if unlink_channel == Some(true) {
        active.channel_id = Set(None);
    }
    if let Some(role) = role {
        active.role_id = Set(Some(role.to_string()));
    }
    if clear_role == Some(true) {
        active.role_id = Set(None);
    }
    if let Some(min_rank) = min_rank {
        active.min_rank = Set(i16::from(min_rank));
    }
    if let Some(half_duplex) = half_duplex {
        active.half_duplex = Set(half_duplex);
    }
    active.updated_at_ms = Set(store::now_ms());
    let row = active.update(&txn).await?;
    let actor = shared.user_key.pseudonymize(ctx.author().id.get());
    store::audit(&txn, actor, "freq edit", &freq.to_string(), &describe(&row)).await?;
    txn.commit().await?;
    tracing::info!(%freq, %actor, "frequency edited");

    let new_channel: Option<u64> = row.channel_id.as_deref().and_then(|c| c.parse().ok());
    let mut channels: Vec<u64> = old_channel.into_iter().chain(new_channel).collect();
    channels.dedup();
    publish(ctx, &row, &channels).await?;
    reply(ctx, format!("Updated {}.", describe(&row))).await
}

/// Moderators: delete a frequency's settings. Its listeners are removed from it.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn delete(
    ctx: Context<'_>,
    #[description = "Frequency number, 1000 to 9999"] id: i64,
) -> Result<(), BotError> {
    let freq = freq_arg(id)?;
    let shared = ctx.data();
    let txn = shared.db.begin().await?;
    let Some(row) = frequencies::Entity::find_by_id(i32::from(freq))
        .one(&txn)
        .await?
    else {
        txn.rollback().await?;
        return Err(BotError::Input(format!(
            "frequency {freq} not found: see the configured ones with /freq list"
        )));
    };
    frequencies::Entity::delete_by_id(i32::from(freq))
        .exec(&txn)
        .await?;
    let actor = shared.user_key.pseudonymize(ctx.author().id.get());
    store::audit(
        &txn,
        actor,
        "freq delete",
        &freq.to_string(),
        &describe(&row),
    )
    .await?;
    txn.commit().await?;
    tracing::info!(%freq, %actor, "frequency deleted");

    shared.reload_directory().await?;
    shared
        .control
        .notify(ControlCommand::FreqDelete { freq_id: freq })
        .await;
    let channels: Vec<u64> = row
        .channel_id
        .as_deref()
        .and_then(|c| c.parse().ok())
        .into_iter()
        .collect();
    shared.reassign_channels(&channels).await?;
    reply(ctx, format!("Deleted frequency {freq} ({}).", row.name)).await
}

/// Moderators: list every configured frequency with its settings.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn list(ctx: Context<'_>) -> Result<(), BotError> {
    let rows = store::frequencies(&ctx.data().db).await?;
    if rows.is_empty() {
        return reply(
            ctx,
            "No frequency is configured. Add one with /freq create.",
        )
        .await;
    }
    let lines: Vec<String> = rows.iter().map(describe).collect();
    reply(
        ctx,
        shorten_message(format!("Configured frequencies:\n{}", lines.join("\n"))),
    )
    .await
}

/// Moderators: set the rank a role gives. A member's rank is the highest among their roles.
#[poise::command(slash_command, guild_only, check = "moderator_check")]
pub async fn set(
    ctx: Context<'_>,
    #[description = "Role"] role: serenity::Role,
    #[description = "Rank, 0 to 100; 0 removes the role's rank"] rank: i64,
) -> Result<(), BotError> {
    let rank = rank_arg("rank", rank)?;
    role_arg(ctx, &role)?;
    let shared = ctx.data();

    let txn = shared.db.begin().await?;
    rank_roles::Entity::delete_by_id(role.id.to_string())
        .exec(&txn)
        .await?;
    if rank > 0 {
        rank_roles::ActiveModel {
            role_id: Set(role.id.to_string()),
            rank: Set(i16::from(rank)),
        }
        .insert(&txn)
        .await?;
    }
    let actor = shared.user_key.pseudonymize(ctx.author().id.get());
    store::audit(
        &txn,
        actor,
        "rank set",
        &role.id.to_string(),
        &format!("rank {rank}"),
    )
    .await?;
    txn.commit().await?;
    tracing::info!(role = %role.id, rank, %actor, "role rank set");

    shared.reload_directory().await?;
    // Live tokens keep their old rank until the member's next /radio connect.
    reply(
        ctx,
        format!(
            "Role <@&{}> now gives rank {rank}. Members get it with their next token from /radio connect.",
            role.id
        ),
    )
    .await
}
