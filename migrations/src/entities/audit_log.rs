//! A moderator action.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Pseudonymous id of the moderator.
    pub actor: String,
    /// Command, such as `ban` or `freq create`.
    pub action: String,
    /// What the command acted on.
    pub target: String,
    /// Arguments and outcome.
    pub detail: String,
    /// Time of the action, Unix milliseconds.
    pub created_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
