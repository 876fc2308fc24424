//! A revoked token, or every token of a user issued before a time.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "revocations")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Revoked token id, for a single-token revocation.
    pub token_id: Option<String>,
    /// User, for a user-wide revocation.
    pub user_id: Option<String>,
    /// Tokens of `user_id` with an issue time at or before this Unix second are revoked.
    pub revoked_before: Option<i64>,
    /// Why, as given by the moderator.
    pub reason: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Time after which every token it covers has expired, Unix milliseconds.
    pub expires_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
