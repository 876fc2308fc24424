//! A guild member as last seen by the bot.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "members")]
pub struct Model {
    /// Pseudonymous user id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// Nickname or user name.
    pub display_name: String,
    /// Highest rank among the member's roles.
    pub rank: i16,
    /// False once the member left the guild.
    pub in_guild: bool,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
