//! First schema: frequencies, members, tokens, revocations, bans, mutes,
//! ranks, voice states, transmissions and the moderator audit log.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000001_initial"
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Frequencies {
    Table,
    Id,
    Name,
    ChannelId,
    RoleId,
    MinRank,
    HalfDuplex,
    CreatedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden, Clone, Copy)]
enum Members {
    Table,
    UserId,
    DisplayName,
    Rank,
    InGuild,
    UpdatedAtMs,
}

#[derive(DeriveIden, Clone, Copy)]
enum VoiceStates {
    Table,
    UserId,
    ChannelId,
    UpdatedAtMs,
}

#[derive(DeriveIden, Clone, Copy)]
enum Tokens {
    Table,
    TokenId,
    UserId,
    IssuedAtMs,
    ExpiresAtMs,
}

#[derive(DeriveIden, Clone, Copy)]
enum Revocations {
    Table,
    Id,
    TokenId,
    UserId,
    RevokedBefore,
    Reason,
    CreatedAtMs,
    ExpiresAtMs,
}

#[derive(DeriveIden, Clone, Copy)]
enum Bans {
    Table,
    UserId,
    Reason,
    BannedBy,
    CreatedAtMs,
}

#[derive(DeriveIden, Clone, Copy)]
enum Mutes {
    Table,
    UserId,
    FreqId,
    CreatedAtMs,
}

#[derive(DeriveIden, Clone, Copy)]
enum RankRoles {
    Table,
    RoleId,
    Rank,
}

#[derive(DeriveIden, Clone, Copy)]
enum Transmissions {
    Table,
    Id,
    FreqId,
    UserId,
    StartedAtMs,
    EndedAtMs,
    Frames,
    FramesDropped,
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditLog {
    Table,
    Id,
    Actor,
    Action,
    Target,
    Detail,
    CreatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Frequencies::Table)
                    .col(integer(Frequencies::Id).primary_key())
                    .col(string(Frequencies::Name))
                    .col(string_null(Frequencies::ChannelId))
                    .col(string_null(Frequencies::RoleId))
                    .col(small_integer(Frequencies::MinRank).default(0))
                    .col(boolean(Frequencies::HalfDuplex).default(true))
                    .col(big_integer(Frequencies::CreatedAtMs))
                    .col(big_integer(Frequencies::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Members::Table)
                    .col(string(Members::UserId).primary_key())
                    .col(string(Members::DisplayName))
                    .col(small_integer(Members::Rank).default(0))
                    .col(boolean(Members::InGuild).default(true))
                    .col(big_integer(Members::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(VoiceStates::Table)
                    .col(string(VoiceStates::UserId).primary_key())
                    .col(string_null(VoiceStates::ChannelId))
                    .col(big_integer(VoiceStates::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Tokens::Table)
                    .col(string(Tokens::TokenId).primary_key())
                    .col(string(Tokens::UserId))
                    .col(big_integer(Tokens::IssuedAtMs))
                    .col(big_integer(Tokens::ExpiresAtMs))
                    .to_owned(),
            )
            .await?;
        create_index(manager, "idx_tokens_user", Tokens::Table, &[Tokens::UserId]).await?;

        manager
            .create_table(
                Table::create()
                    .table(Revocations::Table)
                    .col(big_pk_auto(Revocations::Id))
                    .col(string_null(Revocations::TokenId))
                    .col(string_null(Revocations::UserId))
                    .col(big_integer_null(Revocations::RevokedBefore))
                    .col(string(Revocations::Reason))
                    .col(big_integer(Revocations::CreatedAtMs))
                    .col(big_integer(Revocations::ExpiresAtMs))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Bans::Table)
                    .col(string(Bans::UserId).primary_key())
                    .col(string(Bans::Reason))
                    .col(string(Bans::BannedBy))
                    .col(big_integer(Bans::CreatedAtMs))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Mutes::Table)
                    .col(string(Mutes::UserId))
                    .col(integer(Mutes::FreqId))
                    .col(big_integer(Mutes::CreatedAtMs))
                    .primary_key(Index::create().col(Mutes::UserId).col(Mutes::FreqId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RankRoles::Table)
                    .col(string(RankRoles::RoleId).primary_key())
                    .col(small_integer(RankRoles::Rank))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Transmissions::Table)
                    .col(big_pk_auto(Transmissions::Id))
                    .col(integer(Transmissions::FreqId))
                    .col(string(Transmissions::UserId))
                    .col(big_integer(Transmissions::StartedAtMs))
                    .col(big_integer(Transmissions::EndedAtMs))
                    .col(big_integer(Transmissions::Frames))
                    .col(big_integer(Transmissions::FramesDropped))
                    .to_owned(),
            )
            .await?;
        create_index(
            manager,
            "idx_transmissions_freq_started",
            Transmissions::Table,
            &[Transmissions::FreqId, Transmissions::StartedAtMs],
        )
        .await?;
        create_index(
            manager,
            "idx_transmissions_started",
            Transmissions::Table,
            &[Transmissions::StartedAtMs],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .col(big_pk_auto(AuditLog::Id))
                    .col(string(AuditLog::Actor))
                    .col(string(AuditLog::Action))
                    .col(string(AuditLog::Target))
                    .col(string(AuditLog::Detail))
                    .col(big_integer(AuditLog::CreatedAtMs))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = [
            AuditLog::Table.into_iden(),
            Transmissions::Table.into_iden(),
            RankRoles::Table.into_iden(),
            Mutes::Table.into_iden(),
            Bans::Table.into_iden(),
            Revocations::Table.into_iden(),
            Tokens::Table.into_iden(),
            VoiceStates::Table.into_iden(),
            Members::Table.into_iden(),
            Frequencies::Table.into_iden(),
        ];
        for table in tables {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

async fn create_index<T: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: &[T],
) -> Result<(), DbErr> {
    let mut index = Index::create();
    index.name(name).table(table);
    for &column in columns {
        index.col(column);
    }
    manager.create_index(index.to_owned()).await
}
