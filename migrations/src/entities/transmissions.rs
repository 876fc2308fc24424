//! One transmission: a talker holding the floor of a frequency.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "transmissions")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Frequency number.
    pub freq_id: i32,
    /// Pseudonymous id of the talker.
    pub user_id: String,
    /// First frame, Unix milliseconds.
    pub started_at_ms: i64,
    /// Last frame, Unix milliseconds.
    pub ended_at_ms: i64,
    /// Frames received from the talker.
    pub frames: i64,
    /// Copies of those frames dropped for slow listeners.
    pub frames_dropped: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
