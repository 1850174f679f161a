//! The publication listener: one connection of its own per instance doing
//! `LISTEN loopai_artifacts`, relaying each notification to the instance's notification
//! hub, so a version published on any instance reaches the streams of every instance. The
//! connection is re-made when it breaks (backing off up to 5 s); after a reconnection the
//! latest version of every task is announced, since notifications sent meanwhile are lost
//! (clients compare with the versions they have, so a repeat is harmless).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{PgStorage, ARTIFACT_CHANNEL};
use crate::storage::Published;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn parse(payload: &str) -> Option<Published> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    Some(Published {
        task: value.get("task")?.as_str()?.to_owned(),
        version: u32::try_from(value.get("version")?.as_u64()?).ok()?,
    })
}

impl PgStorage {
    /// Starts relaying publications to `tx` until the storage is dropped.
    pub(crate) fn listen(&self, tx: broadcast::Sender<Published>) {
        let Some(handle) = self.handle() else { return };
        let config = self.config.clone();
        let place = self.place.clone();
        handle.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut first = true;
            loop {
                match listen_once(&config, &place, &tx, first).await {
                    Ok(()) => {
                        log::warn!(
                            "database {place}: the notification connection closed; reconnecting"
                        );
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => log::warn!(
                        "database {place}: notifications: {e}; retrying in {} ms",
                        backoff.as_millis()
                    ),
                }
                first = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
    }
}

/// One connection's life: LISTEN, (after a reconnection) announce the latest versions,
/// relay until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    place: &str,
    tx: &broadcast::Sender<Published>,
    first: bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (msg_tx, mut msg_rx) = tokio::sync::mpsc::unbounded_channel();
    // Drive the connection, forwarding its notifications.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if msg_tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("notification connection: {e}");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {ARTIFACT_CHANNEL}"))
        .await?;
    if !first {
        let rows = client
            .query(
                "SELECT task_id, max(version) FROM artifact_versions GROUP BY task_id",
                &[],
            )
            .await?;
        for row in rows {
            let version: i64 = row.get(1);
            let _ = tx.send(Published {
                task: row.get(0),
                version: u32::try_from(version).unwrap_or(u32::MAX),
            });
        }
        log::info!("database {place}: notifications resumed");
    }
    while let Some(payload) = msg_rx.recv().await {
        match parse(&payload) {
            // No receiver is fine: nobody listens.
            Some(published) => {
                let _ = tx.send(published);
            }
            None => {
                log::warn!("database {place}: {ARTIFACT_CHANNEL}: unreadable payload {payload:?}")
            }
        }
    }
    driver.abort();
    drop(client);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_read_and_bad_ones_refused() {
        assert_eq!(
            parse(r#"{"task": "spam", "version": 3}"#),
            Some(Published {
                task: "spam".into(),
                version: 3
            })
        );
        assert_eq!(parse(r#"{"task": "spam"}"#), None);
        assert_eq!(parse(r#"{"task": "spam", "version": 5000000000}"#), None);
        assert_eq!(parse("not json"), None);
    }
}
