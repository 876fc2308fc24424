//! The rank that a Discord role confers.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rank_roles")]
pub struct Model {
    /// Discord role id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub role_id: String,
    /// Rank of members holding the role.
    pub rank: i16,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
