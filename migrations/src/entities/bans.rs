//! A banned user; the bot issues no tokens to them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "bans")]
pub struct Model {
    /// Pseudonymous user id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// Why, as given by the moderator.
    pub reason: String,
    /// Pseudonymous id of the moderator.
    pub banned_by: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
