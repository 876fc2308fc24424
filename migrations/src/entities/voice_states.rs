//! The last voice channel of each member.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "voice_states")]
pub struct Model {
    /// Pseudonymous user id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// Discord voice channel id, or none when not in voice.
    pub channel_id: Option<String>,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
