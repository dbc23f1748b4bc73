//! Wake-ups when outbox rows commit. On PostgreSQL a transaction that writes outbox rows also
//! sends `NOTIFY` on [`OUTBOX_CHANNEL`], which the server delivers at commit; a listener on its
//! own connection (sqlx's `any` pool cannot listen) turns that into a wake-up. SQLite has no such
//! thing: there, and whenever the listening connection is down, the deliverer's poll finds the
//! rows instead, so a lost notification only delays a row, never loses it.

use super::outbox::OUTBOX_CHANNEL;
use super::{Backend, Store, StoreError};
use sqlx::postgres::PgListener;

/// A connection listening on [`OUTBOX_CHANNEL`].
pub struct OutboxListener {
    listener: PgListener,
}

impl std::fmt::Debug for OutboxListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxListener")
            .field("channel", &OUTBOX_CHANNEL)
            .finish()
    }
}

impl Store {
    /// A listener for committed outbox rows: `None` on SQLite, which cannot notify.
    pub async fn outbox_listener(&self) -> Result<Option<OutboxListener>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let connect = |source| StoreError::Connect {
            url: self.url.redacted(),
            source,
        };
        let mut listener = PgListener::connect(self.url.expose())
            .await
            .map_err(connect)?;
        listener.listen(OUTBOX_CHANNEL).await.map_err(connect)?;
        Ok(Some(OutboxListener { listener }))
    }
}

impl OutboxListener {
    /// Waits for the next commit that wrote outbox rows. A lost connection is re-established
    /// (and the channel listened to again) on the next call; what was notified meanwhile is
    /// gone, which is why the caller also polls.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.listener
            .recv()
            .await
            .map(drop)
            .map_err(|source| StoreError::Query {
                op: "waiting for outbox notifications",
                source,
            })
    }
}
