//! The last known course catalog on disk (ids, titles and terms, in either
//! `FEEDBACK_CATALOG` mode), in the spool's sled database: the spool is
//! ingest's one volume, and its store already gives every disk call a
//! deadline and survives disk errors. One value, written only when the
//! catalog changed, durable before the call returns; read once at start,
//! before ingest serves. A copy of ids only, as older versions wrote it,
//! still loads (`catalog::SavedCourse`).

use super::store::Store;
use super::SpoolError;
use crate::catalog::Saved;

/// The tree the copy lives in; nothing else writes it.
const CATALOG_TREE: &str = "catalog";
/// Its one key.
const KEY: &[u8] = b"courses";

/// The catalog's copy on disk; the only way to it.
#[derive(Clone)]
pub struct CatalogCopy {
    store: Store,
}

impl CatalogCopy {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    /// The copy saved last, if any. Bytes that no longer decode are no copy:
    /// the next read from MySQL writes a good one over them.
    pub async fn load(&self) -> Result<Option<Saved>, SpoolError> {
        let bytes = self
            .store
            .call(|disk| disk.db.open_tree(CATALOG_TREE)?.get(KEY))
            .await?;
        Ok(
            bytes.and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(saved) => Some(saved),
                Err(err) => {
                    tracing::warn!(%err, "the catalog's copy on disk does not decode; ignoring it");
                    None
                }
            }),
        )
    }

    /// Replaces the copy with `saved`; returns once it is on disk.
    pub async fn save(&self, saved: &Saved) -> Result<(), SpoolError> {
        let value = serde_json::to_vec(saved).expect("a catalog serialises");
        self.store
            .durable(move |disk| {
                disk.db.open_tree(CATALOG_TREE)?.insert(KEY, value)?;
                Ok(())
            })
            .await
    }
}
