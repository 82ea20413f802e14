//! The size of a replica's pool of database connections.

use serde::{Deserialize, Serialize};

/// The most connections a replica's pool opens to the database, from 1 to
/// [`PoolSize::MAX`]. On PostgreSQL a replica holds up to this many, plus
/// the connection it listens for the others' activations on and the one
/// holding its leadership locks: every replica counts against the
/// server's `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub struct PoolSize(u32);

impl PoolSize {
    /// The most a pool may be given: more than a PostgreSQL server is
    /// usually configured to accept from every client together, so a larger
    /// value is a mistake (a misplaced digit), not a plan.
    pub const MAX: u32 = 1_000;

    /// The connections, as a count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for PoolSize {
    fn default() -> Self {
        PoolSize(10)
    }
}

impl TryFrom<u64> for PoolSize {
    type Error = String;

    fn try_from(size: u64) -> Result<Self, Self::Error> {
        match u32::try_from(size) {
            Ok(size @ 1..=PoolSize::MAX) => Ok(PoolSize(size)),
            _ => Err(format!(
                "a pool of {size} connections is refused: give from 1 to {}",
                PoolSize::MAX
            )),
        }
    }
}

impl From<PoolSize> for u32 {
    fn from(size: PoolSize) -> u32 {
        size.0
    }
}
