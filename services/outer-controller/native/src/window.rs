//! The session window in Rust: the native twin of `rewardloop_outer.session_window.SessionWindow`
//! (read that module's doc for the rules; this file follows its code line by line).
//!
//! Byte-identical durable state: the header and event lines are written with [`crate::json`] exactly as
//! the Python window writes them with `orjson`, events are stored as their own JSON bytes, and every
//! order the lines or the closed sessions depend on is the reference's:
//!
//! * a session's actions and KPIs keep insertion order (Python dicts; [`EvSet`], O(1) de-dup by id);
//! * the due queue pops in `heapq` order over `(last_ms, user)` ([`DueQueue`]: a sorted run plus a
//!   heap, as in Python); the retained and pending heaps are min-heaps over the same tuples (equal
//!   tuples are interchangeable, so any min-heap yields the same sequence of values);
//! * open sessions close in `dict` insertion order in `close_all` (a sequence number per opening);
//! * pending KPIs keep dict order (a `Vec`, removal keeps the rest in order);
//! * dirty users are kept in insertion order (the Python set's order is hash-random; a delta's lines
//!   are grouped per user, and restoring is per user, so the per-user line groups are what must match).
//!
//! Integer arithmetic on event times is done in `i128` where Python's unbounded ints could exceed 64
//! bits (`last_ms + retention_ms` ...), so comparisons never wrap.
//!
//! Result codes of `add_action*` / `add_kpi` (also class attributes of [`NativeWindow`]):
//! `0` added, `1` duplicate, `2` unattributed, `3` amended, `4` pending, `5` late; `add_action_raw`
//! returns `-1` when the record is not of the common shape (the caller validates it in Python and calls
//! `add_action`).

use crate::closed::{Closed, ClosedCore};
use crate::event::{self, encoded_actions, Action, ActionFields, Kpi, Segment};
use crate::json;
use crate::uncovered::Uncovered;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySet};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::{Borrow, Cow};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

pub const ADDED: i64 = 0;
pub const DUPLICATE: i64 = 1;
pub const UNATTRIBUTED: i64 = 2;
pub const AMENDED: i64 = 3;
pub const PENDING: i64 = 4;
pub const LATE: i64 = 5;
pub const NOT_COMMON: i64 = -1;

// ------------------------------------------------------------------------------- insertion-ordered sets

/// An event with an id (the key of a session's `actions` / `kpis` dict).
pub trait Keyed {
    fn key(&self) -> &str;
}

impl Keyed for Action {
    fn key(&self) -> &str {
        self.event_id()
    }
}

impl Keyed for Kpi {
    fn key(&self) -> &str {
        &self.event_id
    }
}

/// A map key that is the event's id (no copy of the string).
struct ById<T>(Arc<T>);

impl<T: Keyed> Hash for ById<T> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.key().hash(h)
    }
}

impl<T: Keyed> PartialEq for ById<T> {
    fn eq(&self, o: &Self) -> bool {
        self.0.key() == o.0.key()
    }
}

impl<T: Keyed> Eq for ById<T> {}

impl<T: Keyed> Borrow<str> for ById<T> {
    fn borrow(&self) -> &str {
        self.0.key()
    }
}

/// The hasher of the window's maps: foldhash, seeded at random (user and event ids come from clients).
type Fold = foldhash::fast::RandomState;

/// An event id's hash for [`EvSet`]'s scan (one seed per process).
fn id_hash(id: &str) -> u64 {
    static SEED: OnceLock<Fold> = OnceLock::new();
    SEED.get_or_init(Fold::default).hash_one(id)
}

/// A hasher for keys that are hashes already ([`id_hash`]).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

/// The [`id_hash`]es of a user's retained actions.
type IdHashes = std::collections::HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>;

/// Up to this many events a scan of the ids' hashes (one contiguous array: no event is touched but on
/// a hash match) beats a map; above it an index keeps de-dup O(1).
const INDEX_AT: usize = 32;

/// A Python `dict[event_id, event]` that is only ever assigned to: insertion order, and assigning an
/// existing key replaces the value in place.
struct EvSet<T> {
    /// the events with the `id_hash` of their id
    items: Vec<(u64, Arc<T>)>,
    /// boxed: most sets never get one (8 bytes instead of 40 in every session)
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<ById<T>, usize, Fold>>>,
}

impl<T: Keyed> Default for EvSet<T> {
    fn default() -> Self {
        EvSet {
            items: Vec::new(),
            index: None,
        }
    }
}

impl<T: Keyed> EvSet<T> {
    /// The position of `id` (`h`: its `id_hash`).
    fn find(&self, id: &str, h: u64) -> Option<usize> {
        match &self.index {
            Some(ix) => ix.get(id).copied(),
            None => self
                .items
                .iter()
                .position(|(x, v)| *x == h && v.key() == id),
        }
    }

    fn contains(&self, id: &str) -> bool {
        let h = if self.index.is_none() { id_hash(id) } else { 0 };
        self.find(id, h).is_some()
    }

    fn insert(&mut self, v: Arc<T>) {
        let h = id_hash(v.key());
        if let Some(i) = self.find(v.key(), h) {
            if let Some(ix) = &mut self.index {
                ix.remove(v.key());
                ix.insert(ById(v.clone()), i);
            }
            self.items[i].1 = v; // the same id: the hash stays
            return;
        }
        let i = self.items.len();
        if let Some(ix) = &mut self.index {
            ix.insert(ById(v.clone()), i);
        }
        self.items.push((h, v));
        if self.index.is_none() && self.items.len() > INDEX_AT {
            let mut ix = HashMap::with_capacity_and_hasher(self.items.len() * 2, Fold::default());
            for (j, (_, x)) in self.items.iter().enumerate() {
                ix.insert(ById(x.clone()), j);
            }
            self.index = Some(Box::new(ix));
        }
    }

    /// The [`id_hash`]es of the events' ids.
    fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        self.items.iter().map(|(h, _)| *h)
    }

    /// The events in insertion order.
    fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<T>> {
        self.items.iter().map(|(_, v)| v)
    }

    /// Drop the spare capacity (a session that closed grows rarely).
    fn shrink(&mut self) {
        self.items.shrink_to_fit();
    }
}

/// A session's actions: as an [`EvSet`] while the session is open (or being changed), compressed once
/// it is retained. A closed session stays in the state for the whole attribution window (7 days by
/// default) with every action -- an amendment re-emits the complete session -- so the retained ones are
/// most of the state: ~850 bytes of memory per action as parsed [`Action`]s, far less as one LZ4 block
/// of their encoded form per session (`make bench-state`). Reading them back (an amendment's record, a
/// full state line, a de-duplication hit) decompresses; adding to one (a late action) thaws it.
enum Actions {
    Live(EvSet<Action>),
    Frozen(Frozen),
}

/// A retained session's actions: their [`Action::encode`] forms, concatenated in insertion order and
/// LZ4-compressed, and their ids' [`id_hash`]es (de-duplication and `retained_ids` read only these).
struct Frozen {
    block: Box<[u8]>,
    hashes: Box<[u64]>,
    /// the actions' JSON bytes in all (an expiry counts the lines it makes dead without decompressing)
    raw_bytes: usize,
}

impl Frozen {
    fn encoded(&self) -> Vec<u8> {
        // only ever our own block: a failure is a bug, not bad input
        lz4_flex::decompress_size_prepended(&self.block)
            .expect("a frozen session's block decompresses")
    }

    /// An action with this id among them (read from the encoded form, nothing parsed back).
    fn contains(&self, id: &str) -> bool {
        self.hashes.contains(&id_hash(id))
            && encoded_actions(&self.encoded())
                .any(|r| Action::encoded_event_id(r) == id.as_bytes())
    }

    /// The actions in insertion order.
    fn actions(&self) -> Vec<Arc<Action>> {
        encoded_actions(&self.encoded())
            .map(|r| Arc::new(Action::decode(r)))
            .collect()
    }

    fn thaw(&self) -> EvSet<Action> {
        let mut set = EvSet::default();
        for a in self.actions() {
            set.insert(a);
        }
        set
    }
}

impl Default for Actions {
    fn default() -> Self {
        Actions::Live(EvSet::default())
    }
}

impl Actions {
    /// As a retained session keeps them: compressed (`compress`), else parsed without spare capacity.
    fn retain(&mut self, compress: bool) {
        match self {
            Actions::Live(set) if !compress => set.shrink(),
            _ => self.freeze(),
        }
    }

    /// Compress them (a no-op when they are already).
    fn freeze(&mut self) {
        if let Actions::Live(set) = self {
            let mut enc = Vec::new();
            for a in set.iter() {
                a.encode(&mut enc);
            }
            let hashes = set.hashes().collect();
            let raw_bytes = set.iter().map(|a| a.raw().len()).sum();
            // a copy of the exact size: the compressor's buffer has room for the worst case, and
            // shrinking it in place (realloc) keeps the whole allocation
            let block = Box::from(&lz4_flex::compress_prepend_size(&enc)[..]);
            *self = Actions::Frozen(Frozen {
                block,
                hashes,
                raw_bytes,
            });
        }
    }

    /// The set, thawed for good when it was frozen (the caller changes it).
    fn live_mut(&mut self) -> &mut EvSet<Action> {
        if let Actions::Frozen(f) = self {
            *self = Actions::Live(f.thaw());
        }
        match self {
            Actions::Live(set) => set,
            Actions::Frozen(_) => unreachable!("thawed above"),
        }
    }

    fn contains(&self, id: &str) -> bool {
        match self {
            Actions::Live(set) => set.contains(id),
            Actions::Frozen(f) => f.contains(id),
        }
    }

    /// The [`id_hash`]es of the actions' ids, in insertion order (no allocation: read at every close).
    fn hashes(&self) -> impl Iterator<Item = u64> + '_ {
        let (live, frozen) = match self {
            Actions::Live(set) => (Some(set.hashes()), None),
            Actions::Frozen(f) => (None, Some(f.hashes.iter().copied())),
        };
        live.into_iter()
            .flatten()
            .chain(frozen.into_iter().flatten())
    }

    /// The actions in insertion order.
    fn to_vec(&self) -> Vec<Arc<Action>> {
        match self {
            Actions::Live(set) => set.iter().cloned().collect(),
            Actions::Frozen(f) => f.actions(),
        }
    }

    /// How many actions, and their JSON bytes in all (a frozen set is not decompressed).
    fn count_and_raw_bytes(&self) -> (usize, usize) {
        match self {
            Actions::Live(set) => (set.iter().len(), set.iter().map(|a| a.raw().len()).sum()),
            Actions::Frozen(f) => (f.hashes.len(), f.raw_bytes),
        }
    }

    /// Call `f` with each action's JSON, in insertion order (a frozen set is not parsed back).
    fn for_each_raw(&self, mut f: impl FnMut(&[u8])) {
        match self {
            Actions::Live(set) => set.iter().for_each(|a| f(a.raw())),
            Actions::Frozen(fr) => {
                encoded_actions(&fr.encoded()).for_each(|r| f(Action::encoded_raw(r)))
            }
        }
    }
}

// ------------------------------------------------------------------------------------------ sessions

/// `OpenSession`: an open session, or a retained closed one.
struct Session {
    segment: Segment,
    start_ms: i64,
    last_ms: i64,
    actions: Actions,
    kpis: EvSet<Kpi>,
    revision: i64,
    closed_at_ms: i64,
    amended: bool,
    key_ms: i64,
    baseline: Option<f64>,
    /// orjson bytes of the tuner dict
    tuner: Option<Vec<u8>>,
    sid: i64,
}

impl Session {
    fn new(segment: &str, t: i64, sid: i64) -> Session {
        Session {
            segment: Segment::new(segment),
            start_ms: t,
            last_ms: t,
            actions: Actions::default(),
            kpis: EvSet::default(),
            revision: 0,
            closed_at_ms: 0,
            amended: false,
            key_ms: 0,
            baseline: None,
            tuner: None,
            sid,
        }
    }

    /// Add `ev`; `true` when it moved `last_ms` (the session's due time).
    fn add(&mut self, ev: Arc<Action>) -> bool {
        let t = ev.event_time_ms;
        self.actions.live_mut().insert(ev);
        if t < self.start_ms {
            self.start_ms = t;
        }
        if t > self.last_ms {
            self.last_ms = t;
            return true;
        }
        false
    }

    /// `orjson.dumps(self.meta())`
    fn write_meta(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"i\":");
        json::write_i64(out, self.sid);
        out.extend_from_slice(b",\"g\":");
        json::write_str(out, self.segment.as_str());
        out.extend_from_slice(b",\"s\":");
        json::write_i64(out, self.start_ms);
        out.extend_from_slice(b",\"l\":");
        json::write_i64(out, self.last_ms);
        out.extend_from_slice(b",\"v\":");
        json::write_i64(out, self.revision);
        out.extend_from_slice(b",\"c\":");
        json::write_i64(out, self.closed_at_ms);
        out.extend_from_slice(b",\"m\":");
        json::write_bool(out, self.amended);
        out.extend_from_slice(b",\"q\":");
        json::write_i64(out, self.key_ms);
        out.extend_from_slice(b",\"b\":");
        // orjson writes a non-finite float as null
        json::write_opt_f64(out, self.baseline.filter(|b| b.is_finite()));
        out.extend_from_slice(b",\"t\":");
        match &self.tuner {
            Some(t) => out.extend_from_slice(t),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    /// `SessionWindow._snapshot`
    fn snapshot(&self, user: &Arc<str>, clock: i64) -> ClosedCore {
        let mut actions: Vec<Arc<Action>> = self.actions.to_vec();
        actions.sort_by(|a, b| {
            (a.event_time_ms, a.position, a.event_id()).cmp(&(
                b.event_time_ms,
                b.position,
                b.event_id(),
            ))
        });
        let mut kpis: Vec<Arc<Kpi>> = self.kpis.iter().cloned().collect();
        kpis.sort_by(|a, b| (a.event_time_ms, &a.event_id).cmp(&(b.event_time_ms, &b.event_id)));
        ClosedCore {
            user_id: user.clone(),
            segment: match actions.first() {
                Some(a) => Segment::new(a.segment()),
                None => self.segment.clone(),
            },
            start_ms: self.start_ms,
            end_ms: self.last_ms,
            closed_at_ms: clock,
            actions,
            kpis,
            revision: self.revision,
            key_ms: self.key_ms,
            baseline: self.baseline,
            tuner: self.tuner.clone(),
        }
    }
}

/// One user's state and change tracking (the Python window keeps these in separate dicts and sets).
struct UserEntry {
    key: Arc<str>,
    open: Option<Box<Session>>,
    /// when the open session was inserted (`dict` order of `_open`, for `close_all`)
    open_seq: u64,
    retained: Vec<Session>,
    /// `_pending[user]`: dict order
    pending: Vec<Arc<Kpi>>,
    /// `_appended[user]`: the event lines appended since the last commit (written out by `delta`), each
    /// run of one session's lines after a [`Line::Sid`]
    appended: Vec<Line>,
    /// the session of the last run in `appended` (when not empty)
    appended_sid: i64,
    dirty: bool,
    rewrite: bool,
    /// `_rchanged[user]`: the retained sessions (sids) whose metadata changed since the last commit (the
    /// delta writes an `r` line for each)
    rchanged: Vec<i64>,
    /// in `_amended_users`
    amended: bool,
    /// the ids of every retained session's actions (their [`id_hash`]): de-duplication looks into the
    /// retained sessions only on a hit, so its cost does not grow with the user's history (measured: at
    /// ~11 retained sessions a user, 1 of the 3.3 µs an action cost to add)
    retained_ids: IdHashes,
}

impl UserEntry {
    fn new(key: Arc<str>) -> UserEntry {
        UserEntry {
            key,
            open: None,
            open_seq: 0,
            retained: Vec::new(),
            pending: Vec::new(),
            appended: Vec::new(),
            appended_sid: 0,
            dirty: false,
            rewrite: false,
            rchanged: Vec::new(),
            amended: false,
            retained_ids: IdHashes::default(),
        }
    }

    fn has_state(&self) -> bool {
        self.open.is_some() || !self.retained.is_empty() || !self.pending.is_empty()
    }

    fn removable(&self) -> bool {
        !self.has_state() && !self.dirty && !self.amended
    }

    fn new_sid(&self) -> i64 {
        let mut top = self.open.as_ref().map_or(0, |o| o.sid);
        for r in &self.retained {
            top = top.max(r.sid);
        }
        top + 1
    }

    /// Index of the latest retained session (first of equal starts) with `start - lo <= t <= last + hi`.
    fn find_retained(&self, lo_pad: i128, t: i64, hi_pad: i128) -> Option<usize> {
        let t = t as i128;
        let mut best: Option<usize> = None;
        for (i, r) in self.retained.iter().enumerate() {
            if r.start_ms as i128 - lo_pad <= t
                && t <= r.last_ms as i128 + hi_pad
                && best.is_none_or(|b| r.start_ms > self.retained[b].start_ms)
            {
                best = Some(i);
            }
        }
        best
    }

    /// An action with this id in a retained session (`any(eid in r.actions for r in retained)`)?
    fn retained_action(&self, id: &str) -> bool {
        self.retained_ids.contains(&id_hash(id))
            && self.retained.iter().any(|r| r.actions.contains(id))
    }

    /// `retained_ids` anew (the retained list lost sessions, or was restored).
    fn index_retained(&mut self) {
        self.retained_ids = self
            .retained
            .iter()
            .flat_map(|r| r.actions.hashes())
            .collect();
    }

    fn kpi_known(&self, id: &str) -> bool {
        self.open.as_ref().is_some_and(|s| s.kpis.contains(id))
            || self.pending.iter().any(|k| k.event_id == id)
            || self.retained.iter().any(|r| r.kpis.contains(id))
    }
}

/// An event line appended to a user's state: `["a", user, sid, action]` / `["k", user, sid, kpi]`, the
/// `sid` given by the last `Sid` before it (16 bytes a line: most runs are one session's).
enum Line {
    Sid(i64),
    A(Arc<Action>),
    K(Arc<Kpi>),
}

/// `["<op>",<user>,` -- how every state line but `f`/`d` starts
fn line_start(out: &mut Vec<u8>, op: u8, user: &str) {
    out.extend_from_slice(b"[\"");
    out.push(op);
    out.extend_from_slice(b"\",");
    json::write_str(out, user);
    out.push(b',');
}

/// the open session's metadata, or `null`
fn open_meta(out: &mut Vec<u8>, o: Option<&Session>) {
    match o {
        Some(s) => s.write_meta(out),
        None => out.extend_from_slice(b"null"),
    }
}

fn event_line(out: &mut Vec<u8>, kind: u8, user: &str, sid: i64, raw: &[u8]) {
    line_start(out, kind, user);
    json::write_i64(out, sid);
    out.push(b',');
    out.extend_from_slice(raw);
    out.push(b']');
}

/// `_retained_line`: a retained session's metadata (replaces the one with its sid in a restore)
fn retained_line(out: &mut Vec<u8>, user: &str, r: &Session) {
    line_start(out, b'r', user);
    r.write_meta(out);
    out.push(b']');
}

/// `_open_line`: the open session's metadata
fn open_line(out: &mut Vec<u8>, user: &str, o: Option<&Session>) {
    line_start(out, b'o', user);
    open_meta(out, o);
    out.push(b']');
}

fn header_line(out: &mut Vec<u8>, user: &str, o: Option<&Session>, rs: &[Session]) {
    line_start(out, b'h', user);
    out.extend_from_slice(b"{\"o\":");
    open_meta(out, o);
    out.extend_from_slice(b",\"r\":[");
    for (i, r) in rs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        r.write_meta(out);
    }
    out.extend_from_slice(b"]}]");
}

/// `_event_lines_len`: the bytes of `n` event lines (`event_line`) of `user` and `sid` holding
/// `raw_bytes` of events in all
fn event_lines_len(user: &str, sid: i64, n: usize, raw_bytes: usize) -> usize {
    let mut head = Vec::new(); // user and sid as the lines write them
    json::write_str(&mut head, user);
    json::write_i64(&mut head, sid);
    raw_bytes + (head.len() + 8) * n // '["a",' user ',' sid ',' raw ']'
}

/// The bytes of `s`'s event lines (each action and KPI)
fn session_lines_len(user: &str, s: &Session) -> usize {
    let (n, bytes) = s.actions.count_and_raw_bytes();
    let kpi_bytes: usize = s.kpis.iter().map(|k| k.raw.len()).sum();
    event_lines_len(user, s.sid, n + s.kpis.iter().len(), bytes + kpi_bytes)
}

/// `_full_lines`, joined with `\n`
fn full_lines(out: &mut Vec<u8>, e: &UserEntry) {
    let user: &str = &e.key;
    header_line(out, user, e.open.as_deref(), &e.retained);
    for s in e.open.as_deref().into_iter().chain(e.retained.iter()) {
        s.actions.for_each_raw(|raw| {
            out.push(b'\n');
            event_line(out, b'a', user, s.sid, raw);
        });
        for k in s.kpis.iter() {
            out.push(b'\n');
            event_line(out, b'k', user, s.sid, &k.raw);
        }
    }
    for k in &e.pending {
        out.push(b'\n');
        event_line(out, b'k', user, 0, &k.raw);
    }
}

// ------------------------------------------------------------------------------------------ due queue

type Entry = (i64, Arc<str>);

/// `DueQueue`: a sorted run (appended only above its last key) plus a heap; pops the smaller head.
#[derive(Default)]
struct DueQueue {
    run: VecDeque<Entry>,
    heap: BinaryHeap<Reverse<Entry>>,
}

impl DueQueue {
    fn push(&mut self, key: i64, user: Arc<str>) {
        match self.run.back() {
            Some(b) if key <= b.0 => self.heap.push(Reverse((key, user))),
            _ => self.run.push_back((key, user)),
        }
    }

    fn due(&self, clock: i64, gap: i64) -> bool {
        let over = |k: i64| clock as i128 - k as i128 > gap as i128;
        self.run.front().is_some_and(|f| over(f.0))
            || self.heap.peek().is_some_and(|h| over(h.0 .0))
    }

    fn pop(&mut self) -> Option<Entry> {
        let heap_first = match (self.heap.peek(), self.run.front()) {
            (Some(h), Some(r)) => h.0 < *r,
            (Some(_), None) => true,
            _ => false,
        };
        if heap_first {
            self.heap.pop().map(|r| r.0)
        } else {
            self.run.pop_front()
        }
    }

    fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }
}

// --------------------------------------------------------------------------------------------- window

struct LateRec {
    kind: &'static str,
    reason: &'static str,
    user_id: String,
    event_id: String,
    event_time_ms: i64,
    clock_ms: i64,
    raw: Vec<u8>,
}

/// Everything but the per-user map (so helpers can borrow a user entry and this at once).
struct Core {
    gap: i64,
    lateness: Option<i64>,
    attribution: i64,
    retain: bool,
    retention: i128,
    kpi_settle: i128,
    /// retained sessions' actions LZ4-compressed ([`Actions::Frozen`]): about half the memory per
    /// stored event, ~1 µs more CPU per event (`OUTER_COMPRESS_RETAINED`)
    compress_retained: bool,
    max_event_ms: i64,
    due: DueQueue,
    /// (expiry clock, user)
    retained_heap: BinaryHeap<Reverse<(i128, Arc<str>)>>,
    /// (settle clock, user, kpi id)
    pending_heap: BinaryHeap<Reverse<(i128, Arc<str>, String)>>,
    closed: Vec<ClosedCore>,
    late: Vec<LateRec>,
    dirty: Vec<Arc<str>>,
    amended_users: Vec<Arc<str>>,
    open_seq: u64,
    open_count: usize,
    retained_count: usize,
    pending_count: usize,
    unattributed_kpis: i64,
    duplicates: i64,
    late_actions: i64,
    too_late_actions: i64,
    amendments: i64,
    kpis_pending: i64,
    /// bytes of event lines whose events left the state since the last commit (`_removed`)
    removed: usize,
}

impl Core {
    fn half(&self) -> i128 {
        (self.gap / 2) as i128 // gap > 0: floor division
    }

    fn too_late(&self, t: i64, clock: i64) -> bool {
        match self.lateness {
            Some(l) => clock as i128 - t as i128 > self.gap as i128 + l as i128,
            None => false,
        }
    }

    fn mark_dirty(&mut self, e: &mut UserEntry) {
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(e.key.clone());
        }
    }

    /// `_append`
    fn append(&mut self, e: &mut UserEntry, sid: i64, line: Line) {
        self.mark_dirty(e);
        if !e.rewrite {
            if e.appended.is_empty() || e.appended_sid != sid {
                e.appended.push(Line::Sid(sid));
                e.appended_sid = sid;
            }
            e.appended.push(line);
        }
    }

    /// `_mark_retained`: retained session `sid`'s metadata changed (the next delta writes its `r` line)
    fn mark_retained(&mut self, e: &mut UserEntry, sid: i64) {
        self.mark_dirty(e);
        if !e.rchanged.contains(&sid) {
            e.rchanged.push(sid);
        }
    }

    /// `_mark_rewrite`
    fn mark_rewrite(&mut self, e: &mut UserEntry) {
        self.mark_dirty(e);
        e.rewrite = true;
        e.appended = Vec::new();
    }

    fn mark_amended(&mut self, e: &mut UserEntry) {
        if !e.amended {
            e.amended = true;
            self.amended_users.push(e.key.clone());
        }
    }

    /// `_close_into`: close `s` (taking the user's pending KPIs it covers), queue its record, retain it.
    fn close_into(&mut self, e: &mut UserEntry, mut s: Session, clock: i64) {
        if !e.pending.is_empty() {
            let half = self.half();
            let (lo, hi) = (s.start_ms as i128 - half, s.last_ms as i128 + half);
            let before = e.pending.len();
            let mut keep = Vec::with_capacity(before);
            for kp in std::mem::take(&mut e.pending) {
                let t = kp.event_time_ms as i128;
                if lo <= t && t <= hi {
                    s.kpis.insert(kp);
                } else {
                    keep.push(kp);
                }
            }
            e.pending = keep;
            let taken = before - e.pending.len();
            self.pending_count -= taken;
            if taken > 0 {
                self.mark_rewrite(e);
            }
        }
        s.closed_at_ms = clock;
        if s.key_ms == 0 {
            s.key_ms = s.start_ms;
        }
        self.closed.push(s.snapshot(&e.key, clock));
        self.mark_dirty(e); // the `o` line (the open session may be gone)
        if self.retain {
            self.mark_retained(e, s.sid);
            s.amended = false;
            self.retained_heap
                .push(Reverse((s.last_ms as i128 + self.retention, e.key.clone())));
            s.actions.retain(self.compress_retained);
            s.kpis.shrink();
            e.retained_ids.extend(s.actions.hashes());
            e.retained.reserve_exact(1); // users have few retained sessions: no spare ones
            e.retained.push(s);
            self.retained_count += 1;
        } else {
            self.mark_rewrite(e); // its events leave the state
            self.removed += session_lines_len(&e.key, &s);
        }
    }

    fn kpi_line(&mut self, e: &mut UserEntry, sid: i64, ev: &Arc<Kpi>, moved: bool) {
        if moved {
            self.mark_rewrite(e);
        } else {
            self.append(e, sid, Line::K(ev.clone()));
        }
    }

    /// `_attribute`
    fn attribute(&mut self, e: &mut UserEntry, ev: Arc<Kpi>, settled: bool, moved: bool) -> i64 {
        let tk = ev.event_time_ms as i128;
        let half = self.half();
        if let Some(s) = e.open.as_mut() {
            if s.start_ms as i128 - half <= tk && (settled || tk <= s.last_ms as i128 + half) {
                let sid = s.sid;
                s.kpis.insert(ev.clone());
                self.kpi_line(e, sid, &ev, moved);
                return ADDED;
            }
        }
        let before_open = e
            .open
            .as_ref()
            .is_some_and(|s| tk < s.start_ms as i128 - half);
        if settled || before_open {
            if let Some(i) = e.find_retained(half, ev.event_time_ms, self.attribution as i128) {
                let r = &mut e.retained[i];
                r.kpis.insert(ev.clone());
                r.amended = true;
                let sid = r.sid;
                self.mark_amended(e);
                self.kpi_line(e, sid, &ev, moved);
                self.mark_retained(e, sid);
                return AMENDED;
            }
        }
        if settled {
            UNATTRIBUTED
        } else {
            PENDING
        }
    }

    fn unattributed(&mut self, ev: &Kpi, clock: i64) {
        self.unattributed_kpis += 1;
        self.late.push(LateRec {
            kind: "kpi",
            reason: "unattributed",
            user_id: ev.user_id.clone(),
            event_id: ev.event_id.clone(),
            event_time_ms: ev.event_time_ms,
            clock_ms: clock,
            raw: ev.raw.clone(),
        });
    }

    /// `_amend` (the caller marks the user dirty)
    fn amend(&mut self, user: &Arc<str>, r: &mut Session, clock: i64) -> ClosedCore {
        r.amended = false;
        r.revision += 1;
        r.closed_at_ms = clock;
        self.amendments += 1;
        r.snapshot(user, clock)
    }
}

type Users = HashMap<Arc<str>, UserEntry, Fold>;

fn gc(users: &mut Users, user: &str) {
    if users.get(user).is_some_and(|e| e.removable()) {
        users.remove(user);
    }
}

/// `_advance`: close the sessions the clock made due, settle pending KPIs, expire retained sessions.
fn advance(users: &mut Users, c: &mut Core, clock: i64) {
    while c.due.due(clock, c.gap) {
        let Some((last, user)) = c.due.pop() else {
            break;
        };
        let Some(e) = users.get_mut(&*user) else {
            continue;
        };
        if e.open.as_ref().is_none_or(|s| s.last_ms != last) {
            continue; // stale queue entry
        }
        let s = e.open.take().unwrap();
        c.open_count -= 1;
        c.close_into(e, *s, clock);
    }
    if !c.pending_heap.is_empty() {
        settle_pending(users, c, clock);
    }
    if c.retained_heap
        .peek()
        .is_some_and(|h| clock as i128 > h.0 .0)
    {
        expire_retained(users, c, clock);
    }
}

fn settle_pending(users: &mut Users, c: &mut Core, clock: i64) {
    while c
        .pending_heap
        .peek()
        .is_some_and(|h| clock as i128 > h.0 .0)
    {
        let Reverse((_, user, kid)) = c.pending_heap.pop().unwrap();
        let Some(e) = users.get_mut(&*user) else {
            continue;
        };
        let Some(pos) = e.pending.iter().position(|k| k.event_id == kid) else {
            continue;
        };
        let ev = e.pending.remove(pos);
        c.pending_count -= 1;
        c.mark_rewrite(e);
        if c.attribute(e, ev.clone(), true, true) == UNATTRIBUTED {
            c.unattributed(&ev, clock);
            c.removed += event_lines_len(&e.key, 0, 1, ev.raw.len());
        }
    }
}

fn expire_retained(users: &mut Users, c: &mut Core, clock: i64) {
    let clock128 = clock as i128;
    while c.retained_heap.peek().is_some_and(|h| clock128 > h.0 .0) {
        let Reverse((_, user)) = c.retained_heap.pop().unwrap();
        let Some(e) = users.get_mut(&*user) else {
            continue;
        };
        if e.retained.is_empty() {
            continue;
        }
        let retention = c.retention;
        let expired = |r: &Session| clock128 > r.last_ms as i128 + retention;
        let mut amended = Vec::new();
        let key = e.key.clone();
        for r in e.retained.iter_mut() {
            if r.amended && expired(r) {
                let snap = c.amend(&key, r, clock); // emit before forgetting it
                c.closed.push(snap);
                amended.push(r.sid);
            }
        }
        for sid in amended {
            c.mark_retained(e, sid);
        }
        for r in e.retained.iter().filter(|r| expired(r)) {
            c.removed += session_lines_len(&key, r);
        }
        let before = e.retained.len();
        e.retained.retain(|r| !expired(r));
        if e.retained.len() != before {
            e.index_retained();
            c.retained_count -= before - e.retained.len();
            c.mark_rewrite(e);
        }
    }
}

/// `_emit_amendments`
fn emit_amendments(users: &mut Users, c: &mut Core, clock: i64) -> Vec<ClosedCore> {
    let mut out = Vec::new();
    let mut amended = std::mem::take(&mut c.amended_users);
    amended.sort();
    for user in amended {
        let Some(e) = users.get_mut(&*user) else {
            continue;
        };
        e.amended = false;
        let mut sids = Vec::new();
        for r in e.retained.iter_mut() {
            if r.amended {
                out.push(c.amend(&user, r, clock));
                sids.push(r.sid);
            }
        }
        for sid in sids {
            c.mark_retained(e, sid);
        }
        gc(users, &user);
    }
    out
}

// ------------------------------------------------------------------------------------------ restore

#[derive(Deserialize)]
struct Meta {
    i: i64,
    g: String,
    s: i64,
    l: i64,
    v: i64,
    c: i64,
    m: bool,
    q: i64,
    #[serde(default)]
    b: Option<f64>,
    #[serde(default)]
    t: Option<Box<RawValue>>,
}

impl Meta {
    fn session(self) -> Session {
        Session {
            segment: Segment::new(&self.g),
            start_ms: self.s,
            last_ms: self.l,
            actions: Actions::default(),
            kpis: EvSet::default(),
            revision: self.v,
            closed_at_ms: self.c,
            amended: self.m,
            key_ms: self.q,
            baseline: self.b,
            tuner: self.t.map(|t| t.get().as_bytes().to_vec()),
            sid: self.i,
        }
    }
}

#[derive(Deserialize)]
struct Header {
    o: Option<Meta>,
    r: Vec<Meta>,
}

/// The third item of a state line, parsed (`what`: the error when there is none).
fn third<T: serde::de::DeserializeOwned>(x: &[&RawValue], what: &str) -> PyResult<T> {
    serde_json::from_str(x.get(2).ok_or_else(|| corrupt(what))?.get()).map_err(json_err)
}

/// A user's header in a restore (dict semantics of the Python version: a user seen before keeps its
/// place; a new one, or one an `f`/`d` line removed, goes last and starts without sessions).
fn header_of<'a>(
    order: &'a mut Vec<(String, Option<Header>)>,
    slot: &mut HashMap<String, usize>,
    user: String,
) -> &'a mut Header {
    let i = match slot.get(&user) {
        Some(&i) => i,
        None => {
            slot.insert(user.clone(), order.len());
            order.push((user, None));
            order.len() - 1
        }
    };
    order[i].1.get_or_insert_with(|| Header {
        o: None,
        r: Vec::new(),
    })
}

struct StoredEvent {
    is_action: bool,
    sid: i64,
    raw: Vec<u8>,
}

fn corrupt(msg: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("corrupt session state: {msg}"))
}

fn json_err(e: serde_json::Error) -> PyErr {
    corrupt(e)
}

// ------------------------------------------------------------------------------------------- Python

fn attr_i64(ev: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    ev.getattr(name)?
        .extract::<i64>()
        .map_err(|_| PyValueError::new_err(format!("{name}: not an integer within 64 bits")))
}

fn attr_opt_i64(ev: &Bound<'_, PyAny>, name: &str) -> PyResult<Option<i64>> {
    let v = ev.getattr(name)?;
    if v.is_none() {
        return Ok(None);
    }
    v.extract::<i64>()
        .map(Some)
        .map_err(|_| PyValueError::new_err(format!("{name}: not an integer within 64 bits")))
}

fn obj_i64(v: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    v.extract::<i64>()
        .map_err(|_| PyValueError::new_err(format!("{name}: not an integer within 64 bits")))
}

/// The session window of one shard, with its durable state lines (see the module doc).
#[pyclass(module = "rewardloop_outer_native")]
pub struct NativeWindow {
    users: Users,
    c: Core,
    /// `delta`'s output buffer, kept between checkpoints: a fresh multi-megabyte Vec per call cost more
    /// in page faults and regrowth copies than writing the lines
    scratch: Vec<u8>,
    /// of the last `delta`: the bytes of its superseding lines
    delta_garbage: usize,
    /// users the shard's snapshot does not cover yet (the engine's `StateLog`, for this window)
    uncovered: Uncovered,
}

impl NativeWindow {
    /// `close_due` without the Python objects (the batch record path, `emit::close_records`).
    pub(crate) fn close_due_core(&mut self, now_ms: i64) -> Vec<ClosedCore> {
        let clock = self.c.max_event_ms.max(now_ms);
        advance(&mut self.users, &mut self.c, clock);
        let mut out = std::mem::take(&mut self.c.closed);
        if self.c.retain {
            out.extend(emit_amendments(&mut self.users, &mut self.c, clock));
        }
        out
    }

    /// `SessionWindow.add_action` for a parsed action.
    pub fn add(&mut self, ev: Arc<Action>, now_ms: i64) -> i64 {
        let (users, c) = (&mut self.users, &mut self.c);
        let uid = ev.user_id();
        let eid = ev.event_id();
        // de-duplication against the user's open and retained sessions
        if let Some(e) = users.get(uid) {
            if e.open.as_ref().is_some_and(|s| s.actions.contains(eid)) || e.retained_action(eid) {
                c.duplicates += 1;
                return DUPLICATE;
            }
        }
        let t = ev.event_time_ms;
        if t > c.max_event_ms {
            c.max_event_ms = t;
        }
        let clock = if c.max_event_ms >= now_ms {
            c.max_event_ms
        } else {
            now_ms
        };
        if c.due.due(clock, c.gap)
            || c.pending_heap
                .peek()
                .is_some_and(|h| clock as i128 > h.0 .0)
        {
            advance(users, c, clock);
        }
        let gap = c.gap as i128;
        let t128 = t as i128;
        let mut has_open = false;
        if let Some(e) = users.get_mut(uid) {
            if e.open
                .as_ref()
                .is_some_and(|s| t128 > s.last_ms as i128 + gap)
            {
                let s = e.open.take().unwrap();
                c.open_count -= 1;
                c.close_into(e, *s, clock);
            }
            if let Some(s) = e.open.as_mut() {
                if t128 >= s.start_ms as i128 - gap {
                    let sid = s.sid;
                    if s.add(ev.clone()) {
                        c.due.push(t, e.key.clone()); // a new last_ms gets a queue entry
                    }
                    c.append(e, sid, Line::A(ev.clone()));
                    return ADDED;
                }
                has_open = true;
            }
            // before the open session's span, or no open session
            if c.retain {
                if let Some(i) = e.find_retained(gap, t, gap) {
                    c.late_actions += 1;
                    let r = &mut e.retained[i];
                    r.add(ev.clone());
                    r.actions.retain(c.compress_retained); // late actions are rare: at once
                    r.amended = true;
                    let sid = r.sid;
                    e.retained_ids.insert(id_hash(eid));
                    c.mark_amended(e);
                    c.append(e, sid, Line::A(ev.clone()));
                    c.mark_retained(e, sid);
                    return AMENDED;
                }
            }
        }
        if c.too_late(t, clock) {
            c.too_late_actions += 1;
            c.late.push(LateRec {
                kind: "action",
                reason: "beyond_allowed_lateness",
                user_id: ev.user_id().to_owned(),
                event_id: ev.event_id().to_owned(),
                event_time_ms: t,
                clock_ms: clock,
                raw: ev.raw().to_vec(),
            });
            return LATE;
        }
        if !users.contains_key(uid) {
            let key: Arc<str> = Arc::from(uid);
            users.insert(key.clone(), UserEntry::new(key));
        }
        let e = users.get_mut(uid).unwrap();
        let mut s = Session::new(ev.segment(), t, e.new_sid());
        let sid = s.sid;
        s.add(ev.clone());
        if !has_open {
            e.open = Some(Box::new(s));
            e.open_seq = c.open_seq;
            c.open_seq += 1;
            c.open_count += 1;
            c.due.push(t, e.key.clone());
            c.append(e, sid, Line::A(ev.clone()));
            return ADDED;
        }
        c.late_actions += 1;
        c.append(e, sid, Line::A(ev.clone()));
        c.close_into(e, s, clock);
        ADDED
    }

    /// `SessionWindow.add_kpi`
    pub fn add_kpi_event(&mut self, ev: Arc<Kpi>, now_ms: i64) -> i64 {
        let (users, c) = (&mut self.users, &mut self.c);
        let uid = ev.user_id.as_str();
        if users.get(uid).is_some_and(|e| e.kpi_known(&ev.event_id)) {
            c.duplicates += 1;
            return DUPLICATE;
        }
        if c.attribution == 0 {
            // legacy: the open session or nothing
            let Some(e) = users.get_mut(uid).filter(|e| e.open.is_some()) else {
                c.unattributed_kpis += 1;
                return UNATTRIBUTED;
            };
            let s = e.open.as_mut().unwrap();
            let sid = s.sid;
            s.kpis.insert(ev.clone());
            c.append(e, sid, Line::K(ev.clone()));
            return ADDED;
        }
        let clock = c.max_event_ms.max(now_ms);
        let settled = clock as i128 > ev.event_time_ms as i128 + c.kpi_settle;
        if !users.contains_key(uid) {
            let key: Arc<str> = Arc::from(uid);
            users.insert(key.clone(), UserEntry::new(key));
        }
        let e = users.get_mut(uid).unwrap();
        let result = c.attribute(e, ev.clone(), settled, false);
        if result == PENDING {
            if let Some(i) = e.pending.iter().position(|k| k.event_id == ev.event_id) {
                e.pending[i] = ev.clone();
            } else {
                e.pending.push(ev.clone());
                c.pending_count += 1;
            }
            c.pending_heap.push(Reverse((
                ev.event_time_ms as i128 + c.kpi_settle,
                e.key.clone(),
                ev.event_id.clone(),
            )));
            c.kpis_pending += 1;
            c.append(e, 0, Line::K(ev.clone()));
        } else if result == UNATTRIBUTED {
            c.unattributed(&ev, clock);
            gc(users, uid);
        }
        result
    }

    fn load(&mut self, user: &str, h: Header, evs: Vec<StoredEvent>) -> PyResult<()> {
        let (users, c) = (&mut self.users, &mut self.c);
        if !users.contains_key(user) {
            let key: Arc<str> = Arc::from(user);
            users.insert(key.clone(), UserEntry::new(key));
        }
        let e = users.get_mut(user).unwrap();
        let key = e.key.clone();
        let new_open = h.o.is_some();
        if let Some(m) = h.o {
            let s = m.session();
            c.due.push(s.last_ms, key.clone());
            if e.open.is_none() {
                e.open_seq = c.open_seq;
                c.open_seq += 1;
                c.open_count += 1;
            }
            e.open = Some(Box::new(s));
        }
        let rs: Vec<Session> = h.r.into_iter().map(Meta::session).collect();
        for r in &rs {
            c.retained_heap
                .push(Reverse((r.last_ms as i128 + c.retention, key.clone())));
        }
        let new_retained = !rs.is_empty();
        if new_retained {
            c.retained_count = c.retained_count - e.retained.len() + rs.len();
            let amended = rs.iter().any(|r| r.amended);
            e.retained = rs;
            if amended {
                c.mark_amended(e);
            }
        }
        for ev in evs {
            if ev.is_action {
                let a = event::parse_action(&ev.raw)
                    .ok_or_else(|| corrupt(format!("an action of {user:?} does not parse")))?;
                let s = find_session(e, new_open, new_retained, ev.sid)
                    .ok_or_else(|| corrupt(format!("no session {} for {user:?}", ev.sid)))?;
                s.actions.live_mut().insert(Arc::new(a));
                continue;
            }
            let k = Arc::new(event::parse_stored_kpi(&ev.raw).map_err(json_err)?);
            if ev.sid != 0 {
                let s = find_session(e, new_open, new_retained, ev.sid)
                    .ok_or_else(|| corrupt(format!("no session {} for {user:?}", ev.sid)))?;
                s.kpis.insert(k);
            } else {
                c.pending_heap.push(Reverse((
                    k.event_time_ms as i128 + c.kpi_settle,
                    key.clone(),
                    k.event_id.clone(),
                )));
                if let Some(i) = e.pending.iter().position(|x| x.event_id == k.event_id) {
                    e.pending[i] = k;
                } else {
                    e.pending.push(k);
                    c.pending_count += 1;
                }
            }
        }
        for r in e.retained.iter_mut() {
            // loaded (or thawed by a delta's events) as parsed actions
            r.actions.retain(c.compress_retained);
        }
        e.index_retained();
        gc(users, user);
        Ok(())
    }

    fn closed_list(out: Vec<ClosedCore>) -> Vec<Closed> {
        out.into_iter().map(|core| Closed { core }).collect()
    }
}

/// `sessions[sid]` of `SessionWindow._load`: the header's sessions (the open one first, then the retained
/// ones: a later one with the same number wins).
fn find_session(
    e: &mut UserEntry,
    new_open: bool,
    new_retained: bool,
    sid: i64,
) -> Option<&mut Session> {
    if new_retained {
        if let Some(i) = e.retained.iter().rposition(|r| r.sid == sid) {
            return Some(&mut e.retained[i]);
        }
    }
    if new_open {
        if let Some(s) = e.open.as_deref_mut().filter(|s| s.sid == sid) {
            return Some(s);
        }
    }
    None
}

fn session_dict<'py>(py: Python<'py>, s: &Session) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("i", s.sid)?;
    d.set_item("g", s.segment.as_str())?;
    d.set_item("s", s.start_ms)?;
    d.set_item("l", s.last_ms)?;
    d.set_item("v", s.revision)?;
    d.set_item("c", s.closed_at_ms)?;
    d.set_item("m", s.amended)?;
    d.set_item("q", s.key_ms)?;
    d.set_item("b", s.baseline)?;
    d.set_item("t", s.tuner.as_ref().map(|t| PyBytes::new(py, t)))?;
    d.set_item("actions", {
        let mut raws = Vec::new();
        s.actions.for_each_raw(|r| raws.push(PyBytes::new(py, r)));
        PyList::new(py, raws)?
    })?;
    d.set_item(
        "kpis",
        PyList::new(py, s.kpis.iter().map(|k| PyBytes::new(py, &k.raw)))?,
    )?;
    Ok(d)
}

#[pymethods]
impl NativeWindow {
    #[classattr]
    const ADDED: i64 = ADDED;
    #[classattr]
    const DUPLICATE: i64 = DUPLICATE;
    #[classattr]
    const UNATTRIBUTED: i64 = UNATTRIBUTED;
    #[classattr]
    const AMENDED: i64 = AMENDED;
    #[classattr]
    const PENDING: i64 = PENDING;
    #[classattr]
    const LATE: i64 = LATE;
    #[classattr]
    const NOT_COMMON: i64 = NOT_COMMON;

    #[new]
    #[pyo3(signature = (gap_ms, allowed_lateness_ms=None, attribution_window_ms=0, compress_retained=true))]
    fn new(
        gap_ms: i64,
        allowed_lateness_ms: Option<i64>,
        attribution_window_ms: i64,
        compress_retained: bool,
    ) -> PyResult<Self> {
        if gap_ms <= 0 {
            return Err(PyValueError::new_err("gap_ms must be > 0"));
        }
        if allowed_lateness_ms.is_some_and(|l| l < 0) {
            return Err(PyValueError::new_err("allowed_lateness_ms must be >= 0"));
        }
        if attribution_window_ms < 0 {
            return Err(PyValueError::new_err("attribution_window_ms must be >= 0"));
        }
        let lateness = allowed_lateness_ms.unwrap_or(0);
        Ok(NativeWindow {
            users: Users::default(),
            scratch: Vec::new(),
            delta_garbage: 0,
            uncovered: Uncovered::default(),
            c: Core {
                gap: gap_ms,
                lateness: allowed_lateness_ms,
                attribution: attribution_window_ms,
                retain: lateness != 0 || attribution_window_ms > 0,
                compress_retained,
                retention: (gap_ms as i128 + lateness as i128).max(attribution_window_ms as i128),
                kpi_settle: 2 * gap_ms as i128 + lateness as i128,
                max_event_ms: 0,
                due: DueQueue::default(),
                retained_heap: BinaryHeap::new(),
                pending_heap: BinaryHeap::new(),
                closed: Vec::new(),
                late: Vec::new(),
                dirty: Vec::new(),
                amended_users: Vec::new(),
                open_seq: 0,
                open_count: 0,
                retained_count: 0,
                pending_count: 0,
                unattributed_kpis: 0,
                duplicates: 0,
                late_actions: 0,
                too_late_actions: 0,
                amendments: 0,
                kpis_pending: 0,
                removed: 0,
            },
        })
    }

    /// Parse a scored action natively and add it: the result code, or -1 when the record is not of the
    /// common shape (validate it in Python, then call `add_action`).
    fn add_action_raw(&mut self, raw: &[u8], now_ms: i64) -> i64 {
        match event::parse_action(raw) {
            Some(a) => self.add(Arc::new(a), now_ms),
            None => NOT_COMMON,
        }
    }

    /// Add a validated `rewardloop_outer.fastevents.Action` (its attributes and `raw`); integers beyond
    /// 64 bits raise ValueError naming the field.
    fn add_action(&mut self, ev: &Bound<'_, PyAny>, now_ms: i64) -> PyResult<i64> {
        let s = |name: &str| -> PyResult<Cow<'static, str>> {
            Ok(Cow::Owned(ev.getattr(name)?.extract::<String>()?))
        };
        let f = |name: &str| -> PyResult<f64> { ev.getattr(name)?.extract::<f64>() };
        let b = |name: &str| -> PyResult<bool> { ev.getattr(name)?.extract::<bool>() };
        let ep = ev.getattr("explore_probability")?;
        let fields = ActionFields {
            event_id: s("event_id")?,
            request_id: s("request_id")?,
            user_id: s("user_id")?,
            item_id: s("item_id")?,
            position: attr_i64(ev, "position")?,
            event_time_ms: attr_i64(ev, "event_time_ms")?,
            clicked: b("clicked")?,
            dwell_seconds: f("dwell_seconds")?,
            skipped: b("skipped")?,
            predicted_relevance: f("predicted_relevance")?,
            behavior_propensity: f("behavior_propensity")?,
            segment: s("segment")?,
            reward: f("reward")?,
            weights_version: attr_i64(ev, "weights_version")?,
            explore_action: attr_opt_i64(ev, "explore_action")?,
            explore_probability: if ep.is_none() {
                None
            } else {
                Some(ep.extract::<f64>()?)
            },
            exploration_version: attr_opt_i64(ev, "exploration_version")?,
        };
        let raw = ev.getattr("raw")?.extract::<Vec<u8>>()?;
        let a = Action::new(&raw, &fields)
            .ok_or_else(|| PyValueError::new_err("raw: a record of 4 GiB or more"))?;
        Ok(self.add(Arc::new(a), now_ms))
    }

    /// Add a validated KPI event (`raw`: its canonical JSON).
    #[allow(clippy::too_many_arguments)]
    fn add_kpi(
        &mut self,
        event_id: String,
        user_id: String,
        kind: String,
        event_time_ms: &Bound<'_, PyAny>,
        revenue: Option<f64>,
        raw: Vec<u8>,
        now_ms: i64,
    ) -> PyResult<i64> {
        let k = Kpi {
            event_id,
            user_id,
            kind,
            event_time_ms: obj_i64(event_time_ms, "event_time_ms")?,
            revenue,
            raw,
        };
        Ok(self.add_kpi_event(Arc::new(k), now_ms))
    }

    /// Close (and return) every due session, the sessions closed by `add_action` since, and amended
    /// revisions, in closing order (not re-sorted).
    fn close_due(&mut self, now_ms: i64) -> Vec<Closed> {
        Self::closed_list(self.close_due_core(now_ms))
    }

    /// Close every open session regardless of the gap; sorted by (end_ms, session_key, revision).
    fn close_all(&mut self, now_ms: i64) -> Vec<Closed> {
        let clock = self.c.max_event_ms.max(now_ms);
        let mut open: Vec<(u64, Arc<str>)> = self
            .users
            .values()
            .filter(|e| e.open.is_some())
            .map(|e| (e.open_seq, e.key.clone()))
            .collect();
        open.sort();
        for (_, user) in open {
            let e = self.users.get_mut(&*user).unwrap();
            let s = e.open.take().unwrap();
            self.c.open_count -= 1;
            self.c.close_into(e, *s, clock);
        }
        let mut out = std::mem::take(&mut self.c.closed);
        if self.c.retain {
            out.extend(emit_amendments(&mut self.users, &mut self.c, clock));
        }
        let mut keyed: Vec<((i64, String, i64), ClosedCore)> = out
            .into_iter()
            .map(|c| ((c.end_ms, c.session_key(), c.revision), c))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0)); // stable, as Python's sort
        Self::closed_list(keyed.into_iter().map(|x| x.1).collect())
    }

    /// The late events since the last call: `(kind, reason, user_id, event_id, event_time_ms, clock_ms,
    /// raw)`.
    #[allow(clippy::type_complexity)]
    fn drain_late<'py>(
        &mut self,
        py: Python<'py>,
    ) -> Vec<(
        &'static str,
        &'static str,
        String,
        String,
        i64,
        i64,
        Bound<'py, PyBytes>,
    )> {
        std::mem::take(&mut self.c.late)
            .into_iter()
            .map(|l| {
                (
                    l.kind,
                    l.reason,
                    l.user_id,
                    l.event_id,
                    l.event_time_ms,
                    l.clock_ms,
                    PyBytes::new(py, &l.raw),
                )
            })
            .collect()
    }

    /// Remember revision 0's reward baseline on the retained session `key_ms` of `user_id`.
    pub(crate) fn set_baseline(&mut self, user_id: &str, key_ms: i64, baseline: f64) {
        let (users, c) = (&mut self.users, &mut self.c);
        if let Some(e) = users.get_mut(user_id) {
            let mut hit = Vec::new();
            for r in e.retained.iter_mut().filter(|r| r.key_ms == key_ms) {
                r.baseline = Some(baseline);
                hit.push(r.sid);
            }
            for sid in hit {
                c.mark_retained(e, sid);
            }
        }
    }

    /// Remember revision 0's tuner behaviour (`orjson.dumps` of the dict) on the retained session.
    pub(crate) fn set_tuner(&mut self, user_id: &str, key_ms: i64, tuner_json: &[u8]) {
        let (users, c) = (&mut self.users, &mut self.c);
        if let Some(e) = users.get_mut(user_id) {
            let mut hit = Vec::new();
            for r in e.retained.iter_mut().filter(|r| r.key_ms == key_ms) {
                r.tuner = Some(tuner_json.to_vec());
                hit.push(r.sid);
            }
            for sid in hit {
                c.mark_retained(e, sid);
            }
        }
    }

    /// The lines that bring a store from the last committed delta to now (dirty users, in the order they
    /// became dirty; or the given users).
    #[pyo3(signature = (users=None))]
    fn delta<'py>(&mut self, py: Python<'py>, users: Option<Vec<String>>) -> Bound<'py, PyBytes> {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        // the lines are written without the GIL (another thread can consume meanwhile)
        let this = &*self;
        let (out, garbage) = py.detach(move || {
            let garbage = delta_lines(this, users, &mut out);
            (out, garbage)
        });
        let blob = PyBytes::new(py, &out);
        self.scratch = out;
        self.delta_garbage = garbage + self.c.removed;
        blob
    }

    /// Of the last `delta`: the bytes of the store it makes dead (`SessionWindow.delta_garbage`: its
    /// superseding lines, see `delta_lines`, and the event lines of what left the state since the
    /// last commit).
    #[getter]
    fn delta_garbage(&self) -> usize {
        self.delta_garbage
    }

    /// A checkpoint's take in one call: the `delta` of the dirty users (empty: none), each of them
    /// marked uncovered from log blob `seq` (the blob this delta becomes), and `commit_delta`.
    fn take_delta<'py>(&mut self, py: Python<'py>, seq: u64) -> Bound<'py, PyBytes> {
        let blob = self.delta(py, None);
        for user in &self.c.dirty {
            self.uncovered.mark(user, seq);
        }
        self.commit_delta();
        blob
    }

    /// `users` have lines in log blob `seq` that the snapshot does not cover (a restore's bookkeeping).
    fn uncovered_mark(&mut self, users: Vec<String>, seq: u64) {
        for user in users {
            self.uncovered.mark(&Arc::from(user), seq);
        }
    }

    /// One checkpoint's compaction share: the users that hold the log back longest, removed from the
    /// uncovered ones, each with its full state (`None`: nothing left, remove it from the snapshot),
    /// until their states' bytes reach `budget`.
    fn compact_users<'py>(&mut self, py: Python<'py>, budget: i64) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut left = budget;
        while left > 0 {
            let Some(user) = self.uncovered.pop_front() else {
                break;
            };
            let state = self.user_state(py, &user);
            if let Some(st) = &state {
                left -= st.as_bytes().len() as i64;
            }
            out.append((&*user, state))?;
        }
        Ok(out)
    }

    /// The first log blob an uncovered user still needs (`None`: every user is covered).
    fn uncovered_front(&self) -> Option<u64> {
        self.uncovered.front()
    }

    #[getter]
    fn uncovered_len(&self) -> usize {
        self.uncovered.len()
    }

    /// (user, first uncovered blob), oldest first (tests).
    fn uncovered_items(&self) -> Vec<(String, u64)> {
        self.uncovered
            .iter()
            .map(|(u, s)| (u.to_string(), *s))
            .collect()
    }

    /// The last `delta` is durable: start tracking changes afresh.
    fn commit_delta(&mut self) {
        self.c.removed = 0;
        for user in std::mem::take(&mut self.c.dirty) {
            if let Some(e) = self.users.get_mut(&*user) {
                e.dirty = false;
                e.rewrite = false;
                e.rchanged = Vec::new();
                e.appended = Vec::new();
            }
            gc(&mut self.users, &user);
        }
    }

    /// One user's full state (newline-separated lines); `None` = nothing left.
    fn user_state<'py>(&self, py: Python<'py>, user: &str) -> Option<Bound<'py, PyBytes>> {
        let e = self.users.get(user).filter(|e| e.has_state())?;
        let mut out = Vec::new();
        full_lines(&mut out, e);
        Some(PyBytes::new(py, &out))
    }

    /// Every user with state.
    fn users<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
        PySet::new(
            py,
            self.users
                .values()
                .filter(|e| e.has_state())
                .map(|e| &*e.key),
        )
    }

    /// Rebuild the state from blobs of lines (a snapshot's user states, then deltas, in order); the
    /// number of users restored.
    fn restore(&mut self, blobs: &Bound<'_, PyAny>) -> PyResult<usize> {
        // dict semantics of the Python version: a header re-assigned keeps its place, f/d remove it
        let mut order: Vec<(String, Option<Header>)> = Vec::new();
        let mut slot: HashMap<String, usize> = HashMap::new();
        let mut events: HashMap<String, Vec<StoredEvent>> = HashMap::new();
        for blob in blobs.try_iter()? {
            let blob = blob?;
            let bytes: &[u8] = blob.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes();
            if bytes.is_empty() {
                continue;
            }
            for line in bytes.split(|&c| c == b'\n') {
                let x: Vec<&RawValue> = serde_json::from_slice(line).map_err(json_err)?;
                if x.len() < 2 {
                    return Err(corrupt("a line with fewer than 2 items"));
                }
                let op: &str = serde_json::from_str(x[0].get()).map_err(json_err)?;
                let user: String = serde_json::from_str(x[1].get()).map_err(json_err)?;
                match op {
                    "h" => {
                        let h: Header = third(&x, "a header without sessions")?;
                        *header_of(&mut order, &mut slot, user) = h;
                    }
                    "o" => {
                        // the open session's metadata; the retained list as before
                        let o: Option<Meta> = third(&x, "an open-session line without it")?;
                        header_of(&mut order, &mut slot, user).o = o;
                    }
                    "r" => {
                        // one retained session's metadata: replaced by its sid, or appended
                        let m: Meta = third(&x, "a retained-session line without it")?;
                        let h = header_of(&mut order, &mut slot, user);
                        match h.r.iter_mut().find(|old| old.i == m.i) {
                            Some(old) => *old = m,
                            None => h.r.push(m),
                        }
                    }
                    "a" | "k" => {
                        if x.len() != 4 {
                            return Err(corrupt("an event line without 4 items"));
                        }
                        let sid: i64 = serde_json::from_str(x[2].get()).map_err(json_err)?;
                        events.entry(user).or_default().push(StoredEvent {
                            is_action: op == "a",
                            sid,
                            raw: x[3].get().as_bytes().to_vec(),
                        });
                    }
                    "f" | "d" => {
                        if let Some(i) = slot.remove(&user) {
                            order[i].1 = None;
                        }
                        events.remove(&user);
                    }
                    _ => {
                        return Err(PyValueError::new_err(format!(
                            "unknown state line op {op:?}"
                        )))
                    }
                }
            }
        }
        let n = slot.len();
        for (user, h) in order {
            if let Some(h) = h {
                let evs = events.remove(&user).unwrap_or_default();
                self.load(&user, h, evs)?;
            }
        }
        Ok(n)
    }

    /// The users changed since the last `commit_delta`, in the order they became dirty.
    fn dirty_users(&self) -> Vec<String> {
        self.c.dirty.iter().map(|u| u.to_string()).collect()
    }

    fn has_dirty(&self) -> bool {
        !self.c.dirty.is_empty()
    }

    /// The open session's meta fields (`i g s l v c m q b t`; `t` as JSON bytes) and its events' JSON
    /// (`actions`, `kpis`, insertion order); `None`: no open session.
    fn open_session<'py>(
        &self,
        py: Python<'py>,
        user: &str,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        match self.users.get(user).and_then(|e| e.open.as_deref()) {
            Some(s) => session_dict(py, s).map(Some),
            None => Ok(None),
        }
    }

    /// The retained sessions of `user`, as `open_session` describes one.
    fn retained_sessions<'py>(
        &self,
        py: Python<'py>,
        user: &str,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        match self.users.get(user) {
            Some(e) => e.retained.iter().map(|r| session_dict(py, r)).collect(),
            None => Ok(Vec::new()),
        }
    }

    /// The user's pending KPI events' JSON (dict order).
    fn pending_kpis<'py>(&self, py: Python<'py>, user: &str) -> Vec<Bound<'py, PyBytes>> {
        match self.users.get(user) {
            Some(e) => e.pending.iter().map(|k| PyBytes::new(py, &k.raw)).collect(),
            None => Vec::new(),
        }
    }

    /// Entries in the due queue (stale ones included), for tests.
    fn due_len(&self) -> usize {
        self.c.due.len()
    }

    #[getter]
    fn get_max_event_ms(&self) -> i64 {
        self.c.max_event_ms
    }
    #[setter]
    fn set_max_event_ms(&mut self, v: i64) {
        self.c.max_event_ms = v;
    }
    #[getter]
    fn get_duplicates(&self) -> i64 {
        self.c.duplicates
    }
    #[setter]
    fn set_duplicates(&mut self, v: i64) {
        self.c.duplicates = v;
    }
    #[getter]
    fn get_late_actions(&self) -> i64 {
        self.c.late_actions
    }
    #[setter]
    fn set_late_actions(&mut self, v: i64) {
        self.c.late_actions = v;
    }
    #[getter]
    fn get_too_late_actions(&self) -> i64 {
        self.c.too_late_actions
    }
    #[setter]
    fn set_too_late_actions(&mut self, v: i64) {
        self.c.too_late_actions = v;
    }
    #[getter]
    fn get_unattributed_kpis(&self) -> i64 {
        self.c.unattributed_kpis
    }
    #[setter]
    fn set_unattributed_kpis(&mut self, v: i64) {
        self.c.unattributed_kpis = v;
    }
    #[getter]
    fn get_amendments(&self) -> i64 {
        self.c.amendments
    }
    #[setter]
    fn set_amendments(&mut self, v: i64) {
        self.c.amendments = v;
    }
    #[getter]
    fn get_kpis_pending(&self) -> i64 {
        self.c.kpis_pending
    }
    #[setter]
    fn set_kpis_pending(&mut self, v: i64) {
        self.c.kpis_pending = v;
    }
    #[getter]
    fn open_count(&self) -> usize {
        self.c.open_count
    }
    #[getter]
    fn retained_count(&self) -> usize {
        self.c.retained_count
    }
    #[getter]
    fn pending_kpi_count(&self) -> usize {
        self.c.pending_count
    }
    #[getter]
    fn gap_ms(&self) -> i64 {
        self.c.gap
    }
    #[getter]
    fn allowed_lateness_ms(&self) -> Option<i64> {
        self.c.lateness
    }
    #[getter]
    fn attribution_window_ms(&self) -> i64 {
        self.c.attribution
    }
    #[getter]
    fn retention_ms(&self) -> i128 {
        self.c.retention
    }
    #[getter]
    fn kpi_settle_ms(&self) -> i128 {
        self.c.kpi_settle
    }
    #[getter]
    fn retain(&self) -> bool {
        self.c.retain
    }
}

/// The lines of `NativeWindow.delta` (see there), appended to `out`; returns the bytes of its lines
/// that supersede earlier ones (`SessionWindow.delta_garbage`: all but the appended event lines,
/// newlines not counted).
fn delta_lines(win: &NativeWindow, users: Option<Vec<String>>, out: &mut Vec<u8>) -> usize {
    let mut garbage = 0;
    let mut one = |user: &str, out: &mut Vec<u8>| {
        if !out.is_empty() {
            out.push(b'\n');
        }
        let at = out.len();
        match win.users.get(user) {
            Some(e) if e.has_state() => {
                if e.rewrite {
                    out.extend_from_slice(b"[\"f\",");
                    json::write_str(out, user);
                    out.extend_from_slice(b"]\n");
                    full_lines(out, e);
                    // every line of the block, less the newlines between them
                    garbage += out.len() - at - out[at..].iter().filter(|&&b| b == b'\n').count();
                } else {
                    open_line(out, user, e.open.as_deref());
                    let mut newlines = 0;
                    if !e.rchanged.is_empty() {
                        // in the retained list's order
                        for r in e.retained.iter().filter(|r| e.rchanged.contains(&r.sid)) {
                            out.push(b'\n');
                            newlines += 1;
                            retained_line(out, user, r);
                        }
                    }
                    garbage += out.len() - at - newlines;
                    let mut sid = 0;
                    for l in &e.appended {
                        let (kind, raw) = match l {
                            Line::Sid(s) => {
                                sid = *s;
                                continue;
                            }
                            Line::A(a) => (b'a', a.raw()),
                            Line::K(k) => (b'k', &k.raw[..]),
                        };
                        out.push(b'\n');
                        event_line(out, kind, user, sid, raw);
                    }
                }
            }
            _ => {
                out.extend_from_slice(b"[\"d\",");
                json::write_str(out, user);
                out.push(b']');
                garbage += out.len() - at;
            }
        }
    };
    // every line is non-empty: `out.is_empty()` tells whether a separator is needed
    match users {
        Some(us) => us.iter().for_each(|u| one(u, out)),
        None => win.c.dirty.iter().for_each(|u| one(u, out)),
    }
    garbage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(id: &str, t: i64) -> Arc<Action> {
        let ms = 1_763_888_400_000 + t;
        let raw = format!(
            r#"{{"event_id":"{id}","request_id":"r","user_id":"u","session_id":"s","item_id":"i-{id}","position":0,"event_time_ms":{ms},"clicked":false,"dwell_seconds":1.5,"skipped":false,"predicted_relevance":0.5,"behavior_propensity":0.5,"segment":"default","reward":0.25,"raw_reward":0.25,"parts":{{"click":0.0,"dwell":0.0,"skip":0.0,"relevance":0.0}},"weights_version":3,"scored_at_ms":{ms},"explore_action":null,"explore_probability":null,"exploration_version":null}}"#
        );
        Arc::new(
            event::parse_action(raw.as_bytes())
                .unwrap_or_else(|| panic!("not the common shape: {raw}")),
        )
    }

    fn raws(acts: &Actions) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        acts.for_each_raw(|r| out.push(r.to_vec()));
        out
    }

    #[test]
    fn frozen_actions_read_back_as_they_were() {
        let mut acts = Actions::default();
        for i in 0..40 {
            acts.live_mut().insert(action(&format!("e{i}"), i)); // > INDEX_AT: an indexed set
        }
        acts.live_mut().insert(action("e3", 99)); // the same id: replaced in place
        let want = raws(&acts);
        let parsed = acts.to_vec();
        let hashes: Vec<u64> = acts.hashes().collect();
        acts.freeze();
        assert!(matches!(acts, Actions::Frozen(_)));
        assert_eq!(acts.hashes().collect::<Vec<_>>(), hashes);
        assert!(acts.contains("e39") && acts.contains("e0") && !acts.contains("e40"));
        assert_eq!(raws(&acts), want);
        let back = acts.to_vec();
        assert!(back.iter().zip(&parsed).all(|(a, b)| **a == **b) && back.len() == 40);
        acts.live_mut().insert(action("e40", 40)); // a late action thaws it
        assert!(matches!(acts, Actions::Live(_)) && acts.contains("e40") && acts.contains("e3"));
        assert_eq!(raws(&acts).len(), 41);
    }
}
