//! Notifications of the revisions other replicas commit: a PostgreSQL
//! `LISTEN` on the channel every activation notifies at commit.

use std::str::FromStr;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::pointers::REVISION_CHANNEL;

/// The `application_name` of the listening connection, so operators (and
/// tests) can find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "policyhub-listener";

/// A connection listening for committed revisions.
pub struct RevisionListener(PgListener);

/// What the listener heard.
pub enum Heard {
    /// A revision was committed somewhere.
    Revision,
    /// The connection dropped (and is re-established on the next call):
    /// notifications sent meanwhile are lost.
    Lost,
}

impl RevisionListener {
    /// Listens on its own connection to `database_url`.
    pub async fn connect(database_url: &str) -> anyhow::Result<Self> {
        let options =
            PgConnectOptions::from_str(database_url)?.application_name(LISTENER_APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(REVISION_CHANNEL).await?;
        Ok(RevisionListener(listener))
    }

    /// The next notification, or word that the connection dropped.
    pub async fn next(&mut self) -> anyhow::Result<Heard> {
        Ok(match self.0.try_recv().await? {
            Some(_) => Heard::Revision,
            None => Heard::Lost,
        })
    }
}
