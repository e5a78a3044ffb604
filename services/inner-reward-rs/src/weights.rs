//! Per-segment weights: a lock-free store (arc-swap) read by every request, and the Redis
//! loader that fills it (full SCAN at start and every poll interval, pub/sub for hot reload).

use crate::exploration::{self, parse_exploration, ExplorationDoc};
use crate::metrics::Metrics;
use crate::scoring::{Weights, DEFAULT_SEGMENT};
use arc_swap::ArcSwap;
use futures_util::StreamExt;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Prefix of the weights document keys; the rest of the key is the segment.
pub const KEY_PREFIX: &str = "rewardloop:weights:";
/// Pub/sub channel announcing every weights write.
pub const UPDATES_CHANNEL: &str = "rewardloop:weights-updates";
/// `source` of the built-in defaults.
pub const BUILTIN_SOURCE: &str = "builtin-default";

const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// A validated weights document.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsDoc {
    pub version: u64,
    pub segment: String,
    pub weights: Weights,
    pub updated_at_ms: i64,
    pub source: String,
}

impl WeightsDoc {
    /// The built-in defaults for `segment`, version 0.
    pub fn builtin(segment: &str) -> Self {
        Self {
            version: 0,
            segment: segment.to_owned(),
            weights: Weights::BUILTIN,
            updated_at_ms: 0,
            source: BUILTIN_SOURCE.to_owned(),
        }
    }
}

/// Why a weights document was refused.
#[derive(Debug, Error, PartialEq)]
pub enum DocError {
    #[error("not a weights document: {0}")]
    Json(String),
    #[error("weight {name} = {value} is not finite")]
    NotFinite { name: &'static str, value: f64 },
    #[error("weight {name} = {value} is outside [{min}, {max}]")]
    OutOfBounds {
        name: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("document segment {doc:?} does not match key segment {key:?}")]
    SegmentMismatch { doc: String, key: String },
    #[error("segment must be non-empty")]
    EmptySegment,
}

#[derive(Deserialize)]
struct RawDoc {
    version: u64,
    segment: String,
    weights: Weights,
    #[serde(default)]
    updated_at_ms: i64,
    #[serde(default)]
    source: String,
}

/// Bounds from `docs/architecture.md`: click, dwell, relevance ∈ [0, 5]; skip ∈ [−5, 0].
pub fn validate_weights(w: &Weights) -> Result<(), DocError> {
    for (name, value, min, max) in [
        ("click", w.click, 0.0, 5.0),
        ("dwell", w.dwell, 0.0, 5.0),
        ("skip", w.skip, -5.0, 0.0),
        ("relevance", w.relevance, 0.0, 5.0),
    ] {
        if !value.is_finite() {
            return Err(DocError::NotFinite { name, value });
        }
        if !(min..=max).contains(&value) {
            return Err(DocError::OutOfBounds {
                name,
                value,
                min,
                max,
            });
        }
    }
    Ok(())
}

/// Parses and validates the document stored under `rewardloop:weights:<key_segment>`.
pub fn parse_doc(key_segment: &str, json: &[u8]) -> Result<WeightsDoc, DocError> {
    let raw: RawDoc = serde_json::from_slice(json).map_err(|e| DocError::Json(e.to_string()))?;
    if raw.segment.is_empty() {
        return Err(DocError::EmptySegment);
    }
    if raw.segment != key_segment {
        return Err(DocError::SegmentMismatch {
            doc: raw.segment,
            key: key_segment.to_owned(),
        });
    }
    validate_weights(&raw.weights)?;
    Ok(WeightsDoc {
        version: raw.version,
        segment: raw.segment,
        weights: raw.weights,
        updated_at_ms: raw.updated_at_ms,
        source: raw.source,
    })
}

/// A `rewardloop:weights-updates` message.
#[derive(Debug, Deserialize, PartialEq)]
pub struct UpdateMessage {
    pub segment: String,
    #[serde(default)]
    pub version: Option<u64>,
}

/// Parses a pub/sub announcement: `{"segment": ..., "version": ...}` (other fields ignored) or
/// a bare segment name.
pub fn parse_update(payload: &[u8]) -> Result<UpdateMessage, DocError> {
    let bare = std::str::from_utf8(payload).ok().filter(|s| {
        !s.is_empty()
            && s.len() <= crate::scoring::MAX_ID_BYTES
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'"')
    });
    if let Some(segment) = bare {
        return Ok(UpdateMessage {
            segment: segment.to_owned(),
            version: None,
        });
    }
    let m: UpdateMessage =
        serde_json::from_slice(payload).map_err(|e| DocError::Json(e.to_string()))?;
    if m.segment.is_empty() {
        return Err(DocError::EmptySegment);
    }
    Ok(m)
}

/// What [`WeightsStore::offer`] did with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Newer than the one in use: swapped in.
    Applied,
    /// Same version as the one in use: nothing to do.
    Unchanged,
    /// Older than the one in use: ignored.
    Stale,
}

type SegmentMap = HashMap<String, Arc<WeightsDoc>>;

/// Lock-free, copy-on-write map of segment -> weights document.
///
/// Readers do one atomic load and a hash lookup; writers (only the loader task) replace the whole
/// map, which is tiny (one entry per segment).
pub struct WeightsStore {
    map: ArcSwap<SegmentMap>,
    /// Exploration documents by segment (absent: no exploration), same copy-on-write scheme.
    explore: ArcSwap<ExplorationMap>,
}

/// An exploration document in use, with its segment's `explored_total` counter resolved once.
#[derive(Debug)]
pub struct ActiveExploration {
    pub doc: ExplorationDoc,
    pub explored: IntCounter,
}

type ExplorationMap = HashMap<String, Arc<ActiveExploration>>;

impl Default for WeightsStore {
    fn default() -> Self {
        Self::new()
    }
}

impl WeightsStore {
    /// A store holding only the built-in `default` document.
    pub fn new() -> Self {
        let mut m = SegmentMap::new();
        m.insert(
            DEFAULT_SEGMENT.to_owned(),
            Arc::new(WeightsDoc::builtin(DEFAULT_SEGMENT)),
        );
        Self {
            map: ArcSwap::from_pointee(m),
            explore: ArcSwap::from_pointee(ExplorationMap::new()),
        }
    }

    /// The exploration document of `segment`, if one is in use.
    pub fn exploration(&self, segment: &str) -> Option<Arc<ActiveExploration>> {
        let map = self.explore.load();
        if map.is_empty() {
            return None;
        }
        map.get(segment).cloned()
    }

    /// Swaps `doc` in for its segment if its version is newer than the one in use.
    pub fn offer_exploration(&self, doc: ExplorationDoc, explored: IntCounter) -> Offer {
        let active = Arc::new(ActiveExploration { doc, explored });
        let mut outcome = Offer::Applied;
        self.explore.rcu(|current| {
            outcome = match current.get(&active.doc.segment).map(|a| a.doc.version) {
                Some(v) if active.doc.version == v => Offer::Unchanged,
                Some(v) if active.doc.version < v => Offer::Stale,
                _ => Offer::Applied,
            };
            let mut next = ExplorationMap::clone(current);
            if outcome == Offer::Applied {
                next.insert(active.doc.segment.clone(), Arc::clone(&active));
            }
            next
        });
        outcome
    }

    /// Ends exploration for `segment`; true when a document was in use.
    pub fn remove_exploration(&self, segment: &str) -> bool {
        let mut removed = false;
        self.explore.rcu(|current| {
            removed = current.contains_key(segment);
            let mut next = ExplorationMap::clone(current);
            next.remove(segment);
            next
        });
        removed
    }

    /// Every segment with an exploration document and its version.
    pub fn exploration_versions(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .explore
            .load()
            .iter()
            .map(|(s, a)| (s.clone(), a.doc.version))
            .collect();
        v.sort();
        v
    }

    /// The document for `segment`, falling back to `default` (always present).
    pub fn get(&self, segment: &str) -> Arc<WeightsDoc> {
        let map = self.map.load();
        if let Some(doc) = map.get(segment) {
            return Arc::clone(doc);
        }
        map.get(DEFAULT_SEGMENT)
            .cloned()
            .unwrap_or_else(|| Arc::new(WeightsDoc::builtin(DEFAULT_SEGMENT)))
    }

    /// Swaps `doc` in if its version is newer than the one held for its segment.
    pub fn offer(&self, doc: WeightsDoc) -> Offer {
        let doc = Arc::new(doc);
        let mut outcome = Offer::Applied;
        self.map.rcu(|current| {
            let held = current.get(&doc.segment).map(|d| d.version);
            // The built-in default (version 0) yields to any stored document.
            let builtin = current
                .get(&doc.segment)
                .is_some_and(|d| d.source == BUILTIN_SOURCE && d.version == 0);
            outcome = match held {
                Some(v) if !builtin && doc.version == v => Offer::Unchanged,
                Some(v) if !builtin && doc.version < v => Offer::Stale,
                _ => Offer::Applied,
            };
            let mut next = SegmentMap::clone(current);
            if outcome == Offer::Applied {
                next.insert(doc.segment.clone(), Arc::clone(&doc));
            }
            next
        });
        outcome
    }

    /// Every segment and the version in use.
    pub fn versions(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .map
            .load()
            .iter()
            .map(|(s, d)| (s.clone(), d.version))
            .collect();
        v.sort();
        v
    }
}

/// Errors talking to Redis.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

async fn with_timeout<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, LoadError> {
    match tokio::time::timeout(REDIS_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LoadError::Timeout(REDIS_TIMEOUT)),
    }
}

/// Reads documents from Redis and offers them to the store.
#[derive(Clone)]
pub struct Loader {
    conn: ConnectionManager,
    store: Arc<WeightsStore>,
    metrics: Arc<Metrics>,
}

impl Loader {
    fn new(
        client: redis::Client,
        store: Arc<WeightsStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, LoadError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            store,
            metrics,
        })
    }

    /// Validates and offers one raw document; invalid documents are counted and logged.
    fn apply(&self, segment: &str, raw: &[u8]) {
        match parse_doc(segment, raw) {
            Ok(doc) => {
                let version = doc.version;
                let weights = doc.weights;
                match self.store.offer(doc) {
                    Offer::Applied => {
                        self.metrics.set_weights(segment, version, &weights);
                        tracing::info!(segment, version, "weights swapped in");
                    }
                    Offer::Unchanged => {}
                    Offer::Stale => {
                        let held = self.store.get(segment).version;
                        tracing::warn!(
                            segment,
                            version,
                            held,
                            "ignoring weights document older than the one in use"
                        );
                    }
                }
            }
            Err(e) => {
                self.metrics.weights_reload_errors.inc();
                tracing::warn!(segment, error = %e, "refusing invalid weights document; keeping last good");
            }
        }
    }

    /// Validates and applies one raw exploration document (None: the key is absent, which
    /// ends exploration for the segment). Invalid documents are counted and logged.
    fn apply_exploration(&self, segment: &str, raw: Option<&[u8]>) {
        let gauge = || {
            self.metrics
                .exploration_version
                .with_label_values(&[segment])
        };
        let Some(raw) = raw else {
            if self.store.remove_exploration(segment) {
                gauge().set(0);
                tracing::info!(segment, "exploration document removed; exploration off");
            }
            return;
        };
        match parse_exploration(segment, raw) {
            Ok(doc) => {
                let (version, slice, actions) = (doc.version, doc.slice, doc.actions.len());
                let explored = self.metrics.explored.with_label_values(&[segment]);
                match self.store.offer_exploration(doc, explored) {
                    Offer::Applied => {
                        gauge().set(i64::try_from(version).unwrap_or(i64::MAX));
                        tracing::info!(
                            segment,
                            version,
                            slice,
                            actions,
                            "exploration document swapped in"
                        );
                    }
                    Offer::Unchanged => {}
                    Offer::Stale => tracing::warn!(
                        segment,
                        version,
                        "ignoring exploration document older than the one in use"
                    ),
                }
            }
            Err(e) => {
                self.metrics.weights_reload_errors.inc();
                tracing::warn!(segment, error = %e, "refusing invalid exploration document; keeping the previous one");
            }
        }
    }

    /// Re-reads one segment's weights and exploration documents (one round trip).
    pub async fn reload_segment(&self, segment: &str) -> Result<(), LoadError> {
        let mut conn = self.conn.clone();
        let (weights, explore): (Option<Vec<u8>>, Option<Vec<u8>>) = with_timeout(
            redis::pipe()
                .cmd("GET")
                .arg(format!("{KEY_PREFIX}{segment}"))
                .cmd("GET")
                .arg(format!("{}{segment}", exploration::KEY_PREFIX))
                .query_async(&mut conn),
        )
        .await
        .inspect_err(|_| self.metrics.weights_reload_errors.inc())?;
        match weights {
            Some(raw) => self.apply(segment, &raw),
            None => tracing::debug!(segment, "no weights document in redis"),
        }
        self.apply_exploration(segment, explore.as_deref());
        Ok(())
    }

    /// The segments of every key matching `prefix*`.
    async fn scan_segments(&self, prefix: &str) -> Result<Vec<String>, LoadError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{prefix}*");
        let mut cursor: u64 = 0;
        let mut segments = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = with_timeout(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(100)
                    .query_async(&mut conn),
            )
            .await
            .inspect_err(|_| self.metrics.weights_reload_errors.inc())?;
            segments.extend(batch.into_iter().map(|k| k[prefix.len()..].to_owned()));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(segments)
    }

    /// SCANs every `rewardloop:weights:*` and `rewardloop:exploration:*` key and re-reads each
    /// segment (also those whose exploration document disappeared). Returns the number of
    /// weights documents found.
    pub async fn reload_all(&self) -> Result<usize, LoadError> {
        let mut weights = self.scan_segments(KEY_PREFIX).await?;
        weights.sort();
        weights.dedup();
        let mut segments = weights.clone();
        segments.extend(self.scan_segments(exploration::KEY_PREFIX).await?);
        segments.extend(
            self.store
                .exploration_versions()
                .into_iter()
                .map(|(s, _)| s),
        );
        segments.sort();
        segments.dedup();
        for segment in &segments {
            if let Err(e) = self.reload_segment(segment).await {
                // A key of the wrong type, or a dropped connection: keep going with the rest.
                tracing::warn!(segment, error = %e, "reading weights/exploration documents failed");
            }
        }
        Ok(weights.len())
    }
}

/// Starts the loader: an initial full load, a periodic full reload and the pub/sub listener.
/// Every task ends when `shutdown` turns true. Redis being down is logged, never fatal.
pub fn spawn(
    redis_url: &str,
    poll: Duration,
    store: Arc<WeightsStore>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, LoadError> {
    let client = redis::Client::open(redis_url)?;
    let loader = Loader::new(client.clone(), store, metrics)?;
    let (kick_tx, kick_rx) = mpsc::channel::<Option<String>>(64);
    Ok(vec![
        tokio::spawn(reload_loop(loader, poll, kick_rx, shutdown.clone())),
        tokio::spawn(subscribe_loop(client, poll, kick_tx, shutdown)),
    ])
}

/// Applies reload requests (`Some(segment)` or `None` for everything) and polls every `poll`.
async fn reload_loop(
    loader: Loader,
    poll: Duration,
    mut kicks: mpsc::Receiver<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut healthy = match loader.reload_all().await {
        Ok(n) => {
            tracing::info!(documents = n, versions = ?loader.store.versions(), "weights loaded from redis");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "redis unavailable at start; serving built-in default weights and retrying every {poll:?}");
            false
        }
    };
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let result = tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => loader.reload_all().await.map(|_| ()),
            kick = kicks.recv() => match kick {
                Some(Some(segment)) => loader.reload_segment(&segment).await,
                Some(None) => loader.reload_all().await.map(|_| ()),
                None => return,
            },
        };
        match (&result, healthy) {
            (Ok(()), false) => {
                tracing::info!(versions = ?loader.store.versions(), "redis reachable again; weights reloaded");
                healthy = true;
            }
            (Err(e), true) => {
                tracing::warn!(error = %e, "reading weights from redis failed; keeping the weights in use");
                healthy = false;
            }
            (Err(e), false) => tracing::debug!(error = %e, "redis still unavailable"),
            (Ok(()), true) => {}
        }
    }
}

/// Subscribes to the updates channel and forwards announcements; reconnects when the
/// subscription is lost, asking for a full reload after each (re)connect to cover the gap.
async fn subscribe_loop(
    client: redis::Client,
    retry: Duration,
    kicks: mpsc::Sender<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut logged_down = false;
    loop {
        let connected = tokio::time::timeout(REDIS_TIMEOUT, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(UPDATES_CHANNEL).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        match connected {
            Ok(Ok(pubsub)) => {
                tracing::info!(channel = UPDATES_CHANNEL, "subscribed to weights updates");
                logged_down = false;
                // Anything written while we were not subscribed.
                let _ = kicks.try_send(None);
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => match parse_update(msg.get_payload_bytes()) {
                                Ok(update) => {
                                    tracing::debug!(segment = %update.segment, version = ?update.version, "weights update announced");
                                    if kicks.send(Some(update.segment)).await.is_err() {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "unreadable weights-updates message; doing a full reload");
                                    let _ = kicks.try_send(None);
                                }
                            },
                            None => {
                                tracing::warn!("weights-updates subscription lost; reconnecting");
                                break;
                            }
                        },
                    }
                }
            }
            Ok(Err(e)) if !logged_down => {
                tracing::warn!(error = %e, "cannot subscribe to weights updates; retrying every {retry:?}");
                logged_down = true;
            }
            Err(_) if !logged_down => {
                tracing::warn!(
                    "subscribing to weights updates timed out; retrying every {retry:?}"
                );
                logged_down = true;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"version": 4, "segment": "default",
        "weights": {"click": 1.0, "dwell": 0.5, "skip": -0.3, "relevance": 0.8},
        "updated_at_ms": 1763888400000, "source": "outer-controller", "reason": "batch of 200 sessions"}"#;

    fn doc(segment: &str, version: u64, click: f64) -> WeightsDoc {
        WeightsDoc {
            version,
            segment: segment.into(),
            weights: Weights {
                click,
                ..Weights::BUILTIN
            },
            updated_at_ms: 1,
            source: "test".into(),
        }
    }

    #[test]
    fn parses_the_documented_shape() {
        let d = parse_doc("default", DOC.as_bytes()).expect("valid");
        assert_eq!(d.version, 4);
        assert_eq!(d.segment, "default");
        assert_eq!(d.weights, Weights::BUILTIN);
        assert_eq!(d.updated_at_ms, 1_763_888_400_000);
        assert_eq!(d.source, "outer-controller");
    }

    #[test]
    fn refuses_bad_json_and_missing_fields() {
        assert!(matches!(
            parse_doc("default", b"nope"),
            Err(DocError::Json(_))
        ));
        assert!(matches!(
            parse_doc("default", br#"{"version": 1, "segment": "default"}"#),
            Err(DocError::Json(_))
        ));
        assert!(matches!(
            parse_doc("default", br#"{"version": -1, "segment": "default", "weights": {"click": 1, "dwell": 1, "skip": 0, "relevance": 1}}"#),
            Err(DocError::Json(_))
        ));
    }

    #[test]
    fn refuses_out_of_bounds() {
        let cases = [
            ("click", 5.1),
            ("click", -0.1),
            ("dwell", 6.0),
            ("dwell", -1.0),
            ("skip", 0.1),
            ("skip", -5.5),
            ("relevance", 5.01),
            ("relevance", -0.01),
        ];
        for (name, value) in cases {
            let mut w = Weights::BUILTIN;
            match name {
                "click" => w.click = value,
                "dwell" => w.dwell = value,
                "skip" => w.skip = value,
                _ => w.relevance = value,
            }
            match validate_weights(&w) {
                Err(DocError::OutOfBounds { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}={value}: {other:?}"),
            }
        }
        let edges = Weights {
            click: 5.0,
            dwell: 0.0,
            skip: -5.0,
            relevance: 5.0,
        };
        assert_eq!(validate_weights(&edges), Ok(()));
    }

    #[test]
    fn refuses_non_finite() {
        let w = Weights {
            dwell: f64::NAN,
            ..Weights::BUILTIN
        };
        assert!(matches!(
            validate_weights(&w),
            Err(DocError::NotFinite { name: "dwell", .. })
        ));
        // JSON cannot carry NaN; an overflowing literal is refused by the parser.
        let raw = br#"{"version": 2, "segment": "default", "weights": {"click": 1e999, "dwell": 1, "skip": 0, "relevance": 1}}"#;
        assert!(parse_doc("default", raw).is_err());
    }

    #[test]
    fn refuses_segment_mismatch() {
        assert!(matches!(
            parse_doc("vip", DOC.as_bytes()),
            Err(DocError::SegmentMismatch { .. })
        ));
    }

    #[test]
    fn parses_update_messages() {
        assert_eq!(
            parse_update(br#"{"segment": "default", "version": 4}"#),
            Ok(UpdateMessage {
                segment: "default".into(),
                version: Some(4)
            })
        );
        assert!(parse_update(b"{}").is_err());
        assert_eq!(
            parse_update(b"vip"),
            Ok(UpdateMessage {
                segment: "vip".into(),
                version: None
            })
        );
        assert!(parse_update(b"two words").is_err());
        assert!(parse_update(b"").is_err());
        assert!(parse_update(br#"{"segment": ""}"#).is_err());
    }

    #[test]
    fn store_falls_back_to_default() {
        let s = WeightsStore::new();
        let d = s.get("vip");
        assert_eq!(d.segment, "default");
        assert_eq!(d.version, 0);
        assert_eq!(d.source, BUILTIN_SOURCE);
    }

    #[test]
    fn store_swaps_only_newer_versions() {
        let s = WeightsStore::new();
        assert_eq!(s.offer(doc("default", 3, 2.0)), Offer::Applied);
        assert_eq!(s.get("default").weights.click, 2.0);
        assert_eq!(s.offer(doc("default", 3, 4.0)), Offer::Unchanged);
        assert_eq!(s.offer(doc("default", 2, 4.0)), Offer::Stale);
        assert_eq!(s.get("default").weights.click, 2.0);
        assert_eq!(s.offer(doc("default", 5, 3.0)), Offer::Applied);
        assert_eq!(s.get("default").version, 5);

        assert_eq!(s.offer(doc("vip", 1, 0.5)), Offer::Applied);
        assert_eq!(s.get("vip").weights.click, 0.5);
        assert_eq!(s.get("other").segment, "default");
        assert_eq!(
            s.versions(),
            vec![("default".to_string(), 5), ("vip".to_string(), 1)]
        );
    }

    #[test]
    fn stored_version_zero_replaces_builtin() {
        let s = WeightsStore::new();
        assert_eq!(s.offer(doc("default", 0, 2.0)), Offer::Applied);
        assert_eq!(s.get("default").source, "test");
    }
}
