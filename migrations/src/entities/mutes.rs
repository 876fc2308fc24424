//! A moderator mute of one user on one frequency.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mutes")]
pub struct Model {
    /// Pseudonymous user id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// Frequency number.
    #[sea_orm(primary_key, auto_increment = false)]
    pub freq_id: i32,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
