//! A configured radio frequency.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "frequencies")]
pub struct Model {
    /// Frequency number, 1000..=9999.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    /// Display name.
    pub name: String,
    /// Linked Discord voice channel id.
    pub channel_id: Option<String>,
    /// Discord role id required to use the frequency.
    pub role_id: Option<String>,
    /// Lowest rank that may use the frequency.
    pub min_rank: i16,
    /// One talker at a time when true.
    pub half_duplex: bool,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
