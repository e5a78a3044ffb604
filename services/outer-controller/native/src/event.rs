//! Scored actions and KPI events as the session window keeps them: the fields the outer loop uses
//! plus the record's own JSON bytes (the durable state stores these bytes, never re-serialised).
//!
//! [`parse_action`] is the native twin of `rewardloop_outer.fastevents._fast_action`: it accepts
//! exactly the common, well-formed shape that function accepts and yields the same values. Anything
//! else returns `None` and the caller takes the Python path (`parse_action`: the fast check, then the
//! pydantic model), which either rejects the record with the field named or hands over a validated
//! event -- so the native path never accepts what the model would reject, and never decides an odd case
//! differently from the reference.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// One scored action (the fields of `RewardEvent` the outer loop uses) and its JSON.
///
/// Compact, as the window keeps every event of its open and retained sessions: one buffer holds the
/// record's JSON and the string fields are spans of it (a JSON string without escapes is its own
/// text); only a string that is not verbatim in the JSON (escapes, or an action built from Python) is
/// appended to the buffer after the JSON. The optional exploration fields are stored unboxed with a
/// presence bit each. Read the fields through the accessors.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// the record's JSON (`raw_len` bytes), then the text of any string field that is not a span of it
    buf: Box<[u8]>,
    raw_len: u32,
    event_id: Span,
    request_id: Span,
    user_id: Span,
    item_id: Span,
    /// [`DEFAULT_SEGMENT`]: `"default"`
    segment: Span,
    pub position: i64,
    pub event_time_ms: i64,
    pub dwell_seconds: f64,
    pub predicted_relevance: f64,
    pub behavior_propensity: f64,
    pub reward: f64,
    pub weights_version: i64,
    explore_action: i64,
    explore_probability: f64,
    exploration_version: i64,
    pub clicked: bool,
    pub skipped: bool,
    /// bit 0: explore_action, 1: explore_probability, 2: exploration_version are set
    explore_set: u8,
}

/// Where a string field's text lies in [`Action::buf`] (always valid UTF-8: it was a `&str`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

/// The segment `"default"` (the usual one, and what an absent or empty segment reads as).
const DEFAULT_SEGMENT: Span = Span {
    start: u32::MAX,
    len: 0,
};

/// The bytes of [`Action::encode`]'s form before the buffer: two lengths, five spans (4+4 bytes
/// each), ten 8-byte numbers, three flags.
const ENCODED_FIXED: usize = 4 + 4 + 5 * 8 + 10 * 8 + 3;

/// The little-endian u32 at byte `i` of an encoded record.
fn u32_at(b: &[u8], i: usize) -> usize {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize
}

/// The records [`Action::encode`] wrote back to back into `enc`, one slice each (a record is the
/// fixed part and its buffer, whose length comes first).
pub fn encoded_actions(enc: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = enc;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (rec, tail) = rest.split_at(ENCODED_FIXED + u32_at(rest, 0));
        rest = tail;
        Some(rec)
    })
}

/// An action's fields as read (or as Python hands them over), before they are packed into an
/// [`Action`]. A borrowed string that lies within the record's bytes is stored as a span of them.
#[derive(Clone, Debug, Default)]
pub struct ActionFields<'a> {
    pub event_id: Cow<'a, str>,
    pub request_id: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    pub item_id: Cow<'a, str>,
    pub position: i64,
    pub event_time_ms: i64,
    pub clicked: bool,
    pub dwell_seconds: f64,
    pub skipped: bool,
    pub predicted_relevance: f64,
    pub behavior_propensity: f64,
    pub segment: Cow<'a, str>,
    pub reward: f64,
    pub weights_version: i64,
    pub explore_action: Option<i64>,
    pub explore_probability: Option<f64>,
    pub exploration_version: Option<i64>,
}

impl Action {
    /// Pack `f` with the record's JSON `raw` (a string of `f` borrowed from within `raw` is stored as
    /// a span of it, any other is copied after it); `None` when the buffer would not fit 32-bit
    /// offsets (a record of 4 GiB: never from Kafka).
    pub fn new(raw: &[u8], f: &ActionFields<'_>) -> Option<Action> {
        let raw_len = u32::try_from(raw.len()).ok()?;
        let base = raw.as_ptr() as usize;
        let verbatim = |s: &str| {
            let off = (s.as_ptr() as usize).wrapping_sub(base);
            (off < raw.len() && s.len() <= raw.len() - off).then_some(off)
        };
        let segment_default = f.segment == "default";
        let strs = [
            &f.event_id,
            &f.request_id,
            &f.user_id,
            &f.item_id,
            &f.segment,
        ];
        let extra: usize = strs
            .iter()
            .enumerate()
            .filter(|&(i, s)| verbatim(s).is_none() && !(i == 4 && segment_default))
            .map(|(_, s)| s.len())
            .sum();
        if raw.len() + extra >= u32::MAX as usize {
            return None;
        }
        let mut buf = Vec::with_capacity(raw.len() + extra);
        buf.extend_from_slice(raw);
        let mut span = |s: &str| {
            let start = match verbatim(s) {
                Some(off) => off,
                None => {
                    buf.extend_from_slice(s.as_bytes());
                    buf.len() - s.len()
                }
            };
            Span {
                start: start as u32,
                len: s.len() as u32,
            }
        };
        let event_id = span(&f.event_id);
        let request_id = span(&f.request_id);
        let user_id = span(&f.user_id);
        let item_id = span(&f.item_id);
        let segment = if segment_default {
            DEFAULT_SEGMENT
        } else {
            span(&f.segment)
        };
        Some(Action {
            buf: buf.into_boxed_slice(),
            raw_len,
            event_id,
            request_id,
            user_id,
            item_id,
            segment,
            position: f.position,
            event_time_ms: f.event_time_ms,
            dwell_seconds: f.dwell_seconds,
            predicted_relevance: f.predicted_relevance,
            behavior_propensity: f.behavior_propensity,
            reward: f.reward,
            weights_version: f.weights_version,
            explore_action: f.explore_action.unwrap_or(0),
            explore_probability: f.explore_probability.unwrap_or(0.0),
            exploration_version: f.exploration_version.unwrap_or(0),
            clicked: f.clicked,
            skipped: f.skipped,
            explore_set: u8::from(f.explore_action.is_some())
                | (u8::from(f.explore_probability.is_some()) << 1)
                | (u8::from(f.exploration_version.is_some()) << 2),
        })
    }

    /// Append the action's bytes in the form [`Action::decode`] reads back (a retained session's
    /// actions are kept so, compressed: `window::Frozen`). Little-endian: the buffer's and the JSON's
    /// lengths, the five spans, the ten numbers, the three flags, then the buffer.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.buf.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        for s in [
            self.event_id,
            self.request_id,
            self.user_id,
            self.item_id,
            self.segment,
        ] {
            out.extend_from_slice(&s.start.to_le_bytes());
            out.extend_from_slice(&s.len.to_le_bytes());
        }
        for x in [self.position, self.event_time_ms, self.weights_version] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in [self.explore_action, self.exploration_version] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in [
            self.dwell_seconds,
            self.predicted_relevance,
            self.behavior_propensity,
            self.reward,
            self.explore_probability,
        ] {
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        out.extend_from_slice(&[
            u8::from(self.clicked),
            u8::from(self.skipped),
            self.explore_set,
        ]);
        out.extend_from_slice(&self.buf);
    }

    /// The action of one record [`Action::encode`] wrote (one item of [`encoded_actions`]).
    pub fn decode(b: &[u8]) -> Action {
        let mut pos = 0;
        let mut take = |n: usize| {
            let s = &b[pos..pos + n];
            pos += n;
            s
        };
        let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap());
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap());
        let buf_len = u32_(take(4)) as usize;
        let raw_len = u32_(take(4));
        let mut spans = [DEFAULT_SEGMENT; 5];
        for sp in spans.iter_mut() {
            *sp = Span {
                start: u32_(take(4)),
                len: u32_(take(4)),
            };
        }
        let mut ints = [0i64; 5];
        for x in ints.iter_mut() {
            *x = u64_(take(8)) as i64;
        }
        let mut floats = [0f64; 5];
        for x in floats.iter_mut() {
            *x = f64::from_bits(u64_(take(8)));
        }
        let flags = take(3);
        let (clicked, skipped, explore_set) = (flags[0] != 0, flags[1] != 0, flags[2]);
        let buf: Box<[u8]> = take(buf_len).into();
        let [event_id, request_id, user_id, item_id, segment] = spans;
        let [position, event_time_ms, weights_version, explore_action, exploration_version] = ints;
        let [dwell_seconds, predicted_relevance, behavior_propensity, reward, explore_probability] =
            floats;
        Action {
            buf,
            raw_len,
            event_id,
            request_id,
            user_id,
            item_id,
            segment,
            position,
            event_time_ms,
            dwell_seconds,
            predicted_relevance,
            behavior_propensity,
            reward,
            weights_version,
            explore_action,
            explore_probability,
            exploration_version,
            clicked,
            skipped,
            explore_set,
        }
    }

    /// The JSON of one encoded record, without building the action.
    pub fn encoded_raw(b: &[u8]) -> &[u8] {
        &b[ENCODED_FIXED..ENCODED_FIXED + u32_at(b, 4)]
    }

    /// The event id of one encoded record, without building the action.
    pub fn encoded_event_id(b: &[u8]) -> &[u8] {
        let start = ENCODED_FIXED + u32_at(b, 8);
        &b[start..start + u32_at(b, 12)]
    }

    /// The record's JSON.
    #[inline]
    pub fn raw(&self) -> &[u8] {
        &self.buf[..self.raw_len as usize]
    }

    #[inline]
    fn text(&self, s: Span) -> &str {
        let b = &self.buf[s.start as usize..(s.start + s.len) as usize];
        // SAFETY: every span is the bytes of a `&str` (`Action::new`), at the same offsets
        unsafe { std::str::from_utf8_unchecked(b) }
    }

    #[inline]
    pub fn event_id(&self) -> &str {
        self.text(self.event_id)
    }

    /// `""` when the record has none.
    #[inline]
    pub fn request_id(&self) -> &str {
        self.text(self.request_id)
    }

    #[inline]
    pub fn user_id(&self) -> &str {
        self.text(self.user_id)
    }

    #[inline]
    pub fn item_id(&self) -> &str {
        self.text(self.item_id)
    }

    #[inline]
    pub fn segment(&self) -> &str {
        if self.segment == DEFAULT_SEGMENT {
            "default"
        } else {
            self.text(self.segment)
        }
    }

    #[inline]
    pub fn explore_action(&self) -> Option<i64> {
        (self.explore_set & 1 != 0).then_some(self.explore_action)
    }

    #[inline]
    pub fn explore_probability(&self) -> Option<f64> {
        (self.explore_set & 2 != 0).then_some(self.explore_probability)
    }

    #[inline]
    pub fn exploration_version(&self) -> Option<i64> {
        (self.explore_set & 4 != 0).then_some(self.exploration_version)
    }
}

/// A session's segment: `"default"` (the usual one) without an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Default,
    Other(Box<str>),
}

impl Segment {
    pub fn new(s: &str) -> Segment {
        if s == "default" {
            Segment::Default
        } else {
            Segment::Other(s.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Segment::Default => "default",
            Segment::Other(s) => s,
        }
    }
}

/// One delayed business event and its JSON (validated by the pydantic model in Python: KPIs are rare).
#[derive(Clone, Debug, PartialEq)]
pub struct Kpi {
    pub event_id: String,
    pub user_id: String,
    pub kind: String,
    pub event_time_ms: i64,
    pub revenue: Option<f64>,
    pub raw: Vec<u8>,
}

/// A JSON number as Python sees it: an int literal within 64 bits is an `int`, anything else a float.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            // the same rounding either way; i64 -> f64 is one instruction
            Num::Int(i) => match i64::try_from(i) {
                Ok(v) => v as f64,
                Err(_) => i as f64,
            },
            Num::Float(x) => x,
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Num, E> {
                Ok(Num::Int(v as i128))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Num, E> {
                Ok(Num::Int(v as i128))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Num, E> {
                Ok(Num::Float(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `parts`: a dict with the four numeric parts (other keys allowed, as in Python).
struct Parts;

impl<'de> Deserialize<'de> for Parts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the reward parts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Parts, A::Error> {
                let mut seen = [false; 4];
                let mut keys: Vec<Cow<'de, str>> = Vec::new();
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    if keys.contains(&k) {
                        return Err(de::Error::custom("duplicate key")); // Python keeps the last: fall back
                    }
                    let i = match k.as_ref() {
                        "click" => Some(0),
                        "dwell" => Some(1),
                        "skip" => Some(2),
                        "relevance" => Some(3),
                        _ => None,
                    };
                    keys.push(k);
                    match i {
                        Some(i) => {
                            let n: Num = m.next_value()?;
                            if !n.f().is_finite() {
                                return Err(de::Error::custom("not finite"));
                            }
                            seen[i] = true;
                        }
                        None => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if seen.iter().all(|&s| s) {
                    Ok(Parts)
                } else {
                    Err(de::Error::custom("missing part"))
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// A record's fields as read, before the checks both parsers share ([`Draft::check`]).
struct Draft<'a> {
    a: ActionFields<'a>,
    /// bit per required field (see [`REQUIRED`])
    got: u32,
    /// segment, request_id, session_id, explore_action/probability/version
    opt_seen: u32,
    n_keys: usize,
    /// dwell, relevance, propensity, reward, raw_reward
    nums: [f64; 5],
}

const REQUIRED: u32 = (1 << 15) - 1;

fn str_len_ok(s: &str) -> bool {
    let n = s.chars().count();
    n > 0 && n <= 256
}

impl<'a> Draft<'a> {
    fn new() -> Draft<'a> {
        Draft {
            a: ActionFields::default(),
            got: 0,
            opt_seen: 0,
            n_keys: 0,
            nums: [0.0; 5],
        }
    }

    /// The checks on the whole record (the per-value ones -- `scored_at_ms >= 0`, the explore fields'
    /// ranges, finite parts -- are made as each value is read); on success the action is complete.
    fn check(&mut self) -> bool {
        let Draft {
            a,
            got,
            opt_seen,
            n_keys,
            nums,
        } = self;
        if *got != REQUIRED {
            return false;
        }
        // Python: exactly 18 keys = the 15 required + segment, request_id, session_id (all str);
        // the explore fields are then absent. Any other count: each optional key is checked.
        if *n_keys == 18 && *opt_seen & 0b111 != 0b111 {
            return false;
        }
        let [dw, rel, prop, reward, _raw_reward] = *nums;
        if !(nums.iter().all(|x| x.is_finite())
            && str_len_ok(&a.event_id)
            && str_len_ok(&a.user_id)
            && str_len_ok(&a.item_id)
            && a.position >= 0
            && a.event_time_ms > 0
            && a.weights_version >= 0
            && dw >= 0.0
            && (0.0..=1.0).contains(&rel)
            && prop > 0.0
            && prop <= 1.0)
        {
            return false;
        }
        a.dwell_seconds = dw;
        a.predicted_relevance = rel;
        a.behavior_propensity = prop;
        a.reward = reward;
        if a.segment.is_empty() {
            a.segment = Cow::Borrowed("default");
        }
        true
    }

    /// The checked action with its JSON `raw` (the bytes the fields were read from).
    fn action(&self, raw: &[u8]) -> Option<Action> {
        Action::new(raw, &self.a)
    }
}

/// A JSON string, borrowed from the input when it has no escapes (serde's own `Cow<str>` always
/// copies).
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level record for serde_json, read in one pass; any deviation from the common shape is an
/// error (= fall back).
struct Fields<'de>(Draft<'de>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a reward event")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields<'de>, A::Error> {
                let bad = || de::Error::custom("not the common shape");
                let mut dr = Draft::new();
                let Draft {
                    a,
                    got,
                    opt_seen,
                    n_keys,
                    nums,
                } = &mut dr;
                let mut others: Vec<Cow<'de, str>> = Vec::new();
                let set = |got: &mut u32, bit: u32| -> Result<(), A::Error> {
                    if *got & (1 << bit) != 0 {
                        return Err(de::Error::custom("duplicate key"));
                    }
                    *got |= 1 << bit;
                    Ok(())
                };
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    *n_keys += 1;
                    match k.as_ref() {
                        "event_id" => {
                            set(got, 0)?;
                            a.event_id = m.next_value::<Text>()?.0;
                        }
                        "user_id" => {
                            set(got, 1)?;
                            a.user_id = m.next_value::<Text>()?.0;
                        }
                        "item_id" => {
                            set(got, 2)?;
                            a.item_id = m.next_value::<Text>()?.0;
                        }
                        "position" => {
                            set(got, 3)?;
                            a.position = m.next_value()?;
                        }
                        "event_time_ms" => {
                            set(got, 4)?;
                            a.event_time_ms = m.next_value()?;
                        }
                        "weights_version" => {
                            set(got, 5)?;
                            a.weights_version = m.next_value()?;
                        }
                        "scored_at_ms" => {
                            set(got, 6)?;
                            let sc: i64 = m.next_value()?;
                            if sc < 0 {
                                return Err(bad());
                            }
                        }
                        "clicked" => {
                            set(got, 7)?;
                            a.clicked = m.next_value()?;
                        }
                        "skipped" => {
                            set(got, 8)?;
                            a.skipped = m.next_value()?;
                        }
                        "parts" => {
                            set(got, 9)?;
                            m.next_value::<Parts>()?;
                        }
                        "dwell_seconds"
                        | "predicted_relevance"
                        | "behavior_propensity"
                        | "reward"
                        | "raw_reward" => {
                            let i = match k.as_ref() {
                                "dwell_seconds" => 0,
                                "predicted_relevance" => 1,
                                "behavior_propensity" => 2,
                                "reward" => 3,
                                _ => 4,
                            };
                            set(got, 10 + i)?;
                            nums[i as usize] = m.next_value::<Num>()?.f();
                        }
                        "segment" => {
                            set(opt_seen, 0)?;
                            a.segment = m.next_value::<Text>()?.0; // a str (null and other types: fall back)
                        }
                        "request_id" => {
                            set(opt_seen, 1)?;
                            a.request_id = m.next_value::<Text>()?.0;
                        }
                        "session_id" => {
                            set(opt_seen, 2)?;
                            m.next_value::<String>()?;
                        }
                        "explore_action" => {
                            set(opt_seen, 3)?;
                            a.explore_action = m.next_value()?;
                            if a.explore_action.is_some_and(|x| x < 0) {
                                return Err(bad());
                            }
                        }
                        "explore_probability" => {
                            set(opt_seen, 4)?;
                            let ep: Option<Num> = m.next_value()?;
                            a.explore_probability = ep.map(Num::f);
                            if a.explore_probability
                                .is_some_and(|x| !(x > 0.0 && x <= 1.0))
                            {
                                return Err(bad());
                            }
                        }
                        "exploration_version" => {
                            set(opt_seen, 5)?;
                            a.exploration_version = m.next_value()?;
                            if a.exploration_version.is_some_and(|x| x < 1) {
                                return Err(bad());
                            }
                        }
                        _ => {
                            if others.contains(&k) {
                                return Err(de::Error::custom("duplicate key"));
                            }
                            others.push(k);
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Fields(dr))
            }
        }
        d.deserialize_map(V)
    }
}

/// The [`Action`] of a record of the common, well-formed shape; `None` for anything else (the caller
/// asks the Python path). A record with raw newlines is left to Python too (it re-encodes it: the
/// state is newline-delimited).
///
/// Two parsers, one decision: [`fast::parse`] reads the usual layout (compact or space-separated JSON,
/// the known keys only, strings without escapes, plain numbers) and yields `Err(Defer)` on anything
/// else, which then goes through serde_json ([`parse_serde`]) -- so the fast reader only has to be
/// exact on what it accepts: whatever it accepts, serde_json accepts with bit-identical values (the
/// tests at the end of this file check that on randomized records).
pub fn parse_action(raw: &[u8]) -> Option<Action> {
    let mut d = Draft::new();
    match fast::parse(raw, &mut d) {
        Ok(()) if d.check() => d.action(raw),
        Ok(()) => None,
        Err(fast::Defer) => {
            if has_int_minus_zero(raw) {
                return None; // Python reads the int literal -0 as 0 (then 0.0); serde_json as -0.0
            }
            parse_serde(raw)
        }
    }
}

/// Does `raw` hold the integer literal `-0` (a `-0` followed by a delimiter)? A false positive (the
/// bytes inside a string) only sends the record to the Python path.
fn has_int_minus_zero(raw: &[u8]) -> bool {
    raw.windows(3).any(|w| {
        w[0] == b'-'
            && w[1] == b'0'
            && matches!(w[2], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
    }) || raw.ends_with(b"-0")
}

/// serde_json's reading of a record: the reference for [`fast::parse`].
fn parse_serde(raw: &[u8]) -> Option<Action> {
    if raw.iter().any(|&c| c == b'\n' || c == b'\r') {
        return None;
    }
    let mut f: Fields = serde_json::from_slice(raw).ok()?;
    if f.0.check() {
        f.0.action(raw)
    } else {
        None
    }
}

/// A hand-written reader for the usual layout of a reward event (see [`parse_action`]).
///
/// Fast where records are alike: keys are first compared with the one the scorer's field order
/// predicts (one masked compare of up to 24 bytes, no scan), strings are scanned eight bytes at a time,
/// and a decimal whose digits fit 2^53 is converted exactly in one division (Clinger's fast path);
/// other floats go to `fast_float2` (correctly rounded). Anything unusual defers to serde_json.
mod fast {
    use super::{Draft, Num};
    use std::borrow::Cow;

    /// Not the usual layout: let serde_json decide.
    pub struct Defer;

    type R<T> = Result<T, Defer>;

    // Key ids: 0..15 the bits of `Draft::got`; OPT + the bits of `Draft::opt_seen`.
    const OPT: u8 = 16;
    const N_IDS: usize = 22;

    /// The keys in the order the scorer writes them (`RewardEvent`'s field order), with their ids.
    const ORDER: [(&[u8], u8); 21] = [
        (b"event_id", 0),
        (b"request_id", OPT + 1),
        (b"user_id", 1),
        (b"session_id", OPT + 2),
        (b"item_id", 2),
        (b"position", 3),
        (b"event_time_ms", 4),
        (b"clicked", 7),
        (b"dwell_seconds", 10),
        (b"skipped", 8),
        (b"predicted_relevance", 11),
        (b"behavior_propensity", 12),
        (b"segment", OPT),
        (b"reward", 13),
        (b"raw_reward", 14),
        (b"parts", 9),
        (b"weights_version", 5),
        (b"scored_at_ms", 6),
        (b"explore_action", OPT + 3),
        (b"explore_probability", OPT + 4),
        (b"exploration_version", OPT + 5),
    ];

    /// `"key":` as three little-endian words and their masks, for a compare without a scan.
    struct Pat {
        bytes: [u8; 24],
        len: usize,
        w: [u64; 3],
        m: [u64; 3],
        id: u8,
    }

    const fn pat(key: &[u8], id: u8) -> Pat {
        let mut bytes = [0u8; 24];
        let len = key.len() + 3;
        assert!(len <= 24);
        bytes[0] = b'"';
        let mut j = 0;
        while j < key.len() {
            bytes[j + 1] = key[j];
            j += 1;
        }
        bytes[len - 2] = b'"';
        bytes[len - 1] = b':';
        let mut w = [0u64; 3];
        let mut m = [0u64; 3];
        let mut k = 0;
        while k < len {
            w[k / 8] |= (bytes[k] as u64) << (8 * (k % 8));
            m[k / 8] |= 0xff << (8 * (k % 8));
            k += 1;
        }
        Pat {
            bytes,
            len,
            w,
            m,
            id,
        }
    }

    const PATS: [Pat; 21] = {
        let mut out = [const {
            Pat {
                bytes: [0; 24],
                len: 0,
                w: [0; 3],
                m: [0; 3],
                id: 0,
            }
        }; 21];
        let mut i = 0;
        while i < ORDER.len() {
            out[i] = pat(ORDER[i].0, ORDER[i].1);
            i += 1;
        }
        out
    };

    /// For each key id, the position in [`ORDER`] of the key predicted to follow it.
    const NEXT: [usize; N_IDS] = {
        let mut out = [0usize; N_IDS];
        let mut i = 0;
        while i < ORDER.len() {
            out[ORDER[i].1 as usize] = i + 1;
            i += 1;
        }
        out
    };

    /// The id of a top-level key.
    #[inline]
    fn key_id(k: &[u8]) -> Option<u8> {
        ORDER.iter().find(|(name, _)| *name == k).map(|&(_, id)| id)
    }

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;

    /// The high bit of each byte of `x` (little-endian) that is `"`, `\` or a control character -- exact
    /// up to and including the lowest one (the borrows of the subtractions only spill above a match),
    /// which is all a scan for the first needs.
    #[inline]
    pub(super) fn special(x: u64) -> u64 {
        let q = x ^ (ONES * u64::from(b'"'));
        let bs = x ^ (ONES * u64::from(b'\\'));
        let zero = |v: u64| v.wrapping_sub(ONES) & !v;
        (zero(q) | zero(bs) | (x.wrapping_sub(ONES * 0x20) & !x)) & HIGH
    }

    /// How many of the bytes of `x` (little-endian), from the first, are ASCII digits (0..=8). The
    /// lowest flagged byte is exact: below it every byte is a digit, which neither carries nor borrows.
    #[inline]
    pub(super) fn leading_digits(x: u64) -> usize {
        let non_digit = (x.wrapping_add(ONES * 0x46) | x.wrapping_sub(ONES * 0x30)) & HIGH;
        (non_digit.trailing_zeros() / 8) as usize
    }

    const POW10_U64: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

    /// The value of eight ASCII digits (the first in the lowest byte of `x`).
    #[inline]
    pub(super) fn parse_eight(x: u64) -> u64 {
        const MASK: u64 = 0x0000_00ff_0000_00ff;
        const MUL1: u64 = 100 + (1_000_000 << 32);
        const MUL2: u64 = 1 + (10_000 << 32);
        let v = x - ONES * 0x30;
        let v = v * 10 + (v >> 8); // pairs of digits in every other byte
        let v1 = (v & MASK).wrapping_mul(MUL1);
        let v2 = ((v >> 16) & MASK).wrapping_mul(MUL2);
        u64::from((v1.wrapping_add(v2) >> 32) as u32)
    }

    /// The powers of ten that are exact in an f64.
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];

    /// A cursor over the record.
    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl<'a> P<'a> {
        #[inline]
        fn peek(&self) -> u8 {
            self.b.get(self.i).copied().unwrap_or(0)
        }

        /// Skip spaces and tabs (a raw newline: the caller declines the record, serde_json included).
        #[inline]
        fn ws(&mut self) {
            while matches!(self.peek(), b' ' | b'\t') {
                self.i += 1;
            }
        }

        #[inline]
        fn eat(&mut self, c: u8) -> R<()> {
            self.ws();
            if self.peek() == c {
                self.i += 1;
                Ok(())
            } else {
                Err(Defer)
            }
        }

        /// `"key":` of the predicted key, consumed (`Some(id)`), or `None` (nothing consumed).
        #[inline]
        fn predicted_key(&mut self, at: usize) -> Option<u8> {
            let p = PATS.get(at)?;
            let b = self.b;
            let i = self.i;
            let hit = match b.get(i..i + 24) {
                Some(c) => {
                    let word =
                        |k: usize| u64::from_le_bytes(c[8 * k..8 * k + 8].try_into().unwrap());
                    ((word(0) ^ p.w[0]) & p.m[0])
                        | ((word(1) ^ p.w[1]) & p.m[1])
                        | ((word(2) ^ p.w[2]) & p.m[2])
                        == 0
                }
                None => b[i..].starts_with(&p.bytes[..p.len]),
            };
            if hit {
                self.i = i + p.len;
                Some(p.id)
            } else {
                None
            }
        }

        /// A string without escapes or control characters, as its bytes, and whether they are all
        /// ASCII (else their UTF-8 is not yet checked). Eight bytes at a time.
        #[inline]
        fn str_bytes(&mut self) -> R<(&'a [u8], bool)> {
            self.eat(b'"')?;
            let b = self.b;
            let start = self.i;
            let mut i = start;
            let mut high = 0u64;
            while let Some(chunk) = b.get(i..i + 8) {
                let x = u64::from_le_bytes(chunk.try_into().unwrap());
                let m = special(x);
                if m != 0 {
                    let k = m.trailing_zeros() / 8; // the first special byte (exact: see `special`)
                    high |= x & ((1u64 << (8 * k)) - 1); // k < 8
                    i += k as usize;
                    break;
                }
                high |= x;
                i += 8;
            }
            loop {
                let c = *b.get(i).ok_or(Defer)?;
                if c == b'"' {
                    break;
                }
                if c == b'\\' || c < 0x20 {
                    return Err(Defer);
                }
                high |= u64::from(c);
                i += 1;
            }
            self.i = i + 1;
            Ok((&b[start..i], high & HIGH == 0))
        }

        #[inline]
        fn string(&mut self) -> R<&'a str> {
            let (s, ascii) = self.str_bytes()?;
            if ascii {
                // SAFETY: every byte is below 0x80
                Ok(unsafe { std::str::from_utf8_unchecked(s) })
            } else {
                std::str::from_utf8(s).map_err(|_| Defer)
            }
        }

        /// A key (general case) and its colon.
        #[inline]
        fn key(&mut self) -> R<&'a [u8]> {
            let (k, ascii) = self.str_bytes()?;
            if !ascii {
                return Err(Defer);
            }
            self.eat(b':')?;
            Ok(k)
        }

        #[inline]
        fn lit(&mut self, word: &[u8]) -> bool {
            if self.b[self.i..].starts_with(word) {
                self.i += word.len();
                true
            } else {
                false
            }
        }

        /// `null` (consumed: `true`) or the start of another value (`false`).
        #[inline]
        fn null(&mut self) -> bool {
            self.ws();
            self.lit(b"null")
        }

        #[inline]
        fn boolean(&mut self) -> R<bool> {
            self.ws();
            if self.lit(b"true") {
                Ok(true)
            } else if self.lit(b"false") {
                Ok(false)
            } else {
                Err(Defer)
            }
        }

        /// Digits from the cursor, accumulated into `m` while there are at most 19 (`n`: how many were
        /// read in all, these included); their count. Eight bytes at a time: a run of digits that ends
        /// within them is taken in one step too.
        #[inline]
        fn digits(&mut self, m: &mut u64, n: &mut usize) -> usize {
            let start = self.i;
            while let Some(c) = self.b.get(self.i..self.i + 8) {
                let x = u64::from_le_bytes(c.try_into().unwrap());
                let k = leading_digits(x);
                if *n + k > 19 {
                    break; // one at a time from here
                }
                if k == 8 {
                    *m = *m * 100_000_000 + parse_eight(x);
                } else if k > 0 {
                    // the k digits moved to the top, '0's below them
                    let low = 8 * (8 - k as u32);
                    let y = (x << low) | ((ONES * u64::from(b'0')) & ((1u64 << low) - 1));
                    *m = *m * POW10_U64[k] + parse_eight(y);
                }
                *n += k;
                self.i += k;
                if k < 8 {
                    return self.i - start;
                }
            }
            while let Some(&c) = self.b.get(self.i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                if *n < 19 {
                    *m = *m * 10 + u64::from(d);
                }
                *n += 1;
                self.i += 1;
            }
            self.i - start
        }

        /// A JSON number as serde_json reads it into a [`Num`]: an integer literal of at most 18 digits
        /// is `Int` (but `-0`, serde_json's float `-0.0`, defers -- note that Python reads it as the int
        /// 0); a finite float literal is `Float`, the nearest f64 (serde_json's `float_roundtrip`).
        /// Anything longer, odder or out of range defers.
        #[inline]
        fn number(&mut self) -> R<Num> {
            self.ws();
            let start = self.i;
            let neg = self.peek() == b'-';
            if neg {
                self.i += 1;
            }
            let mut m = 0u64; // the digits (while there are at most 19 of them)
            let mut n = 0usize; // how many digits
            match self.peek() {
                b'0' => {
                    self.i += 1;
                    n = 1;
                }
                b'1'..=b'9' => {
                    self.digits(&mut m, &mut n);
                }
                _ => return Err(Defer),
            }
            let mut frac = 0usize;
            if self.peek() == b'.' {
                self.i += 1;
                frac = self.digits(&mut m, &mut n);
                if frac == 0 {
                    return Err(Defer);
                }
            }
            let mut exp = false;
            if matches!(self.peek(), b'e' | b'E') {
                self.i += 1;
                if matches!(self.peek(), b'+' | b'-') {
                    self.i += 1;
                }
                let (mut e, mut ne) = (0u64, 0usize);
                let k = self.digits(&mut e, &mut ne);
                if k == 0 || k > 3 {
                    return Err(Defer);
                }
                exp = true;
            }
            if frac == 0 && !exp {
                if n > 18 {
                    return Err(Defer);
                }
                if neg && m == 0 {
                    return Err(Defer);
                }
                let v = m as i64;
                return Ok(Num::Int(if neg { -v } else { v } as i128));
            }
            if !exp && n <= 19 && m <= 1 << 53 && frac <= 22 {
                // exact operands, one correctly rounded division: the nearest f64
                let x = if m == 0 { 0.0 } else { m as f64 / POW10[frac] };
                return Ok(Num::Float(if neg { -x } else { x }));
            }
            let text = &self.b[start..self.i];
            if text.len() > 64 {
                return Err(Defer);
            }
            match fast_float2::parse::<f64, _>(text) {
                Ok(x) if x.is_finite() => Ok(Num::Float(x)),
                _ => Err(Defer),
            }
        }

        #[inline]
        fn int(&mut self) -> R<i64> {
            match self.number()? {
                Num::Int(v) => Ok(v as i64),
                Num::Float(_) => Err(Defer),
            }
        }

        /// `parts`: exactly the four numeric parts, each once and finite.
        fn parts(&mut self) -> R<()> {
            self.eat(b'{')?;
            let mut seen = 0u8;
            loop {
                let bit = match self.key()? {
                    b"click" => 1,
                    b"dwell" => 2,
                    b"skip" => 4,
                    b"relevance" => 8,
                    _ => return Err(Defer),
                };
                if seen & bit != 0 {
                    return Err(Defer);
                }
                seen |= bit;
                self.number()?; // finite: `number` defers on overflow
                self.ws();
                match self.peek() {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Defer),
                }
            }
            if seen == 15 {
                Ok(())
            } else {
                Err(Defer)
            }
        }
    }

    /// The record's fields in the usual layout into `d` (a new [`Draft`]), or `Err(Defer)`.
    pub fn parse<'a>(raw: &'a [u8], d: &mut Draft<'a>) -> Result<(), Defer> {
        let mut p = P { b: raw, i: 0 };
        p.eat(b'{')?;
        let mut at = 0; // the position in ORDER of the key expected next
        loop {
            p.ws();
            let id = match p.predicted_key(at) {
                Some(id) => id,
                None => key_id(p.key()?).ok_or(Defer)?,
            };
            at = NEXT[id as usize];
            d.n_keys += 1;
            let (mask, bit) = if id < OPT {
                (&mut d.got, id)
            } else {
                (&mut d.opt_seen, id - OPT)
            };
            if *mask & (1 << bit) != 0 {
                return Err(Defer); // a duplicate key
            }
            *mask |= 1 << bit;
            let a = &mut d.a;
            match id {
                0 => a.event_id = Cow::Borrowed(p.string()?),
                1 => a.user_id = Cow::Borrowed(p.string()?),
                2 => a.item_id = Cow::Borrowed(p.string()?),
                3 => a.position = p.int()?,
                4 => a.event_time_ms = p.int()?,
                5 => a.weights_version = p.int()?,
                6 => {
                    if p.int()? < 0 {
                        return Err(Defer);
                    }
                }
                7 => a.clicked = p.boolean()?,
                8 => a.skipped = p.boolean()?,
                9 => p.parts()?,
                10..=14 => d.nums[(id - 10) as usize] = p.number()?.f(),
                16 => a.segment = Cow::Borrowed(p.string()?),
                17 => a.request_id = Cow::Borrowed(p.string()?),
                18 => {
                    p.string()?;
                }
                19 => {
                    if !p.null() {
                        let v = p.int()?;
                        if v < 0 {
                            return Err(Defer);
                        }
                        a.explore_action = Some(v);
                    }
                }
                20 => {
                    if !p.null() {
                        let x = p.number()?.f();
                        if !(x > 0.0 && x <= 1.0) {
                            return Err(Defer);
                        }
                        a.explore_probability = Some(x);
                    }
                }
                21 => {
                    if !p.null() {
                        let v = p.int()?;
                        if v < 1 {
                            return Err(Defer);
                        }
                        a.exploration_version = Some(v);
                    }
                }
                _ => unreachable!("key ids come from ORDER"),
            }
            p.ws();
            match p.peek() {
                b',' => p.i += 1,
                b'}' => {
                    p.i += 1;
                    break;
                }
                _ => return Err(Defer),
            }
        }
        p.ws();
        if p.i == raw.len() {
            Ok(())
        } else {
            Err(Defer)
        }
    }
}

/// The fields of a stored KPI event's canonical JSON (restore: the record was validated when it came in).
#[derive(Deserialize)]
struct KpiFields {
    event_id: String,
    user_id: String,
    kind: String,
    event_time_ms: i64,
    revenue: Option<f64>,
}

pub fn parse_stored_kpi(raw: &[u8]) -> Result<Kpi, serde_json::Error> {
    let k: KpiFields = serde_json::from_slice(raw)?;
    Ok(Kpi {
        event_id: k.event_id,
        user_id: k.user_id,
        kind: k.kind,
        event_time_ms: k.event_time_ms,
        revenue: k.revenue,
        raw: raw.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    //! The fast reader against serde_json's reading (`parse_serde`, the reference the Python tests check
    //! against `fastevents._fast_action`): on randomized records, whatever the fast reader accepts,
    //! serde_json accepts with bit-identical values; the usual layouts stay on the fast path.
    use super::*;

    /// xorshift64*: deterministic, no dependency
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[self.below(xs.len())]
        }
        /// uniform in [0, 1)
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn chance(&mut self, p: f64) -> bool {
            self.unit() < p
        }
    }

    fn fast_only(raw: &[u8]) -> Result<Option<Action>, fast::Defer> {
        let mut d = Draft::new();
        fast::parse(raw, &mut d)?;
        Ok(if d.check() { d.action(raw) } else { None })
    }

    /// Equal fields, floats compared bit for bit (`-0.0` is not `0.0` here).
    fn same(a: &Action, b: &Action) -> bool {
        let bits = |x: Option<f64>| x.map(f64::to_bits);
        a.event_id() == b.event_id()
            && a.request_id() == b.request_id()
            && a.user_id() == b.user_id()
            && a.item_id() == b.item_id()
            && a.position == b.position
            && a.event_time_ms == b.event_time_ms
            && a.clicked == b.clicked
            && a.dwell_seconds.to_bits() == b.dwell_seconds.to_bits()
            && a.skipped == b.skipped
            && a.predicted_relevance.to_bits() == b.predicted_relevance.to_bits()
            && a.behavior_propensity.to_bits() == b.behavior_propensity.to_bits()
            && a.segment() == b.segment()
            && a.reward.to_bits() == b.reward.to_bits()
            && a.weights_version == b.weights_version
            && a.explore_action() == b.explore_action()
            && bits(a.explore_probability()) == bits(b.explore_probability())
            && a.exploration_version() == b.exploration_version()
            && a.raw() == b.raw()
    }

    /// Where the fast reader decides, it decides as serde_json does; `true` when it decided.
    fn agree(raw: &[u8]) -> bool {
        let Ok(fast) = fast_only(raw) else {
            return false;
        };
        let slow = parse_serde(raw);
        match (&fast, &slow) {
            (Some(f), Some(s)) => assert!(same(f, s), "{}", String::from_utf8_lossy(raw)),
            (None, None) => {}
            _ => panic!(
                "fast {:?} vs serde {:?}: {}",
                fast.is_some(),
                slow.is_some(),
                String::from_utf8_lossy(raw)
            ),
        }
        true
    }

    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "0.0",
        "-0.0",
        "1",
        "-1",
        "7",
        "0.5",
        "1.0",
        "1.5",
        "-2.5",
        "1e2",
        "1E2",
        "1e+2",
        "1e-2",
        "2.5E-3",
        "0e0",
        "1e308",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "1e309",
        "1e400",
        "-1e400",
        "1e-400",
        "4.9e-324",
        "2.4703282292062327e-324",
        "2.4703282292062328e-324",
        "2.2250738585072011e-308",
        "2.2250738585072014e-308",
        "9007199254740992",
        "9007199254740993",
        "9007199254740993.0",
        "9007199254740992.5",
        "1.00000000000000011102230246251565404236316680908203125",
        "1.00000000000000011102230246251565404236316680908203124",
        "1.00000000000000011102230246251565404236316680908203126",
        "0.30000000000000004",
        "0.1",
        "0.2",
        "123456789012345678",
        "1234567890123456789",
        "12345678901234567890",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
        "18446744073709551616",
        "00",
        "01",
        "-01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "1e0400",
        "1.5.2",
        "1x",
        "NaN",
        "Infinity",
        "24.067951835045506",
        "0.06310682188770933",
    ];

    const OTHERS: &[&str] = &[
        "null",
        "true",
        "false",
        "nul",
        "tru",
        "\"\"",
        "\"x\"",
        "\"default\"",
        "\"\u{e9}t\u{e9}\"",
        "\"a\\nb\"",
        "\"\\u00e9\"",
        "\"\\ud800\"",
        "\"a\tb\"",
        "\"a\\\"b\"",
        "[]",
        "{}",
        "[1,2]",
        "{\"click\":0.0,\"dwell\":0.0,\"skip\":0.0,\"relevance\":0.0}",
        "{\"click\":1,\"dwell\":2,\"skip\":3,\"relevance\":4,\"other\":5}",
        "{\"click\":1,\"dwell\":2,\"skip\":3}",
        "{\"click\":1,\"dwell\":2,\"skip\":3,\"relevance\":1e400}",
        "{\"click\":1,\"click\":2,\"dwell\":2,\"skip\":3,\"relevance\":4}",
        "{\"relevance\":4,\"skip\":3,\"dwell\":2,\"click\":-0}",
    ];

    /// A random number literal: digits around a point, an exponent, sometimes near an f64's halfway.
    fn random_number(r: &mut Rng) -> String {
        match r.below(4) {
            0 => r.pick(NUMBERS).to_string(),
            1 => {
                let x = f64::from_bits(r.next());
                if x.is_finite() {
                    format!("{x:?}")
                } else {
                    "1.25".into()
                }
            }
            2 => {
                // many exact digits of an f64, cut anywhere (halfway and near-halfway cases)
                let x = r.unit() * 10f64.powi(r.below(40) as i32 - 20);
                let s = format!("{x:.60e}");
                let (m, e) = s.split_once('e').unwrap();
                let keep = 3 + r.below(m.len() - 2);
                let mut m = m[..keep.min(m.len())].to_string();
                if r.chance(0.3) {
                    m.push(char::from(b'0' + r.below(10) as u8));
                }
                format!("{m}e{e}")
            }
            _ => {
                let mut s = String::new();
                if r.chance(0.3) {
                    s.push('-');
                }
                let int = r.below(22);
                for k in 0..=int {
                    s.push(
                        char::from(b'0' + r.below(10) as u8 + u8::from(k == 0 && int > 0)).min('9'),
                    );
                }
                if r.chance(0.7) {
                    s.push('.');
                    for _ in 0..=r.below(25) {
                        s.push(char::from(b'0' + r.below(10) as u8));
                    }
                }
                if r.chance(0.3) {
                    s.push(r.pick(&['e', 'E']));
                    s.push_str(r.pick(&["", "+", "-"]));
                    s.push_str(&r.below(400).to_string());
                }
                s
            }
        }
    }

    fn base(r: &mut Rng) -> Vec<(String, String)> {
        let mut kv: Vec<(String, String)> = vec![
            ("event_id", format!("\"e{}\"", r.below(1_000_000))),
            ("request_id", "\"r-x\"".into()),
            ("user_id", format!("\"u{}\"", r.below(50))),
            ("session_id", "\"s-u\"".into()),
            ("item_id", "\"i-x\"".into()),
            ("position", r.below(10).to_string()),
            (
                "event_time_ms",
                (1_763_888_400_000u64 + r.below(1_000_000) as u64).to_string(),
            ),
            ("clicked", r.pick(&["true", "false"]).to_string()),
            ("dwell_seconds", format!("{:?}", r.unit() * 30.0)),
            ("skipped", r.pick(&["true", "false"]).to_string()),
            ("predicted_relevance", "0.5".into()),
            ("behavior_propensity", "0.5".into()),
            (
                "segment",
                r.pick(&["\"default\"", "\"\"", "\"new\""]).to_string(),
            ),
            ("reward", format!("{:?}", r.unit() - 0.5)),
            ("raw_reward", "0.0".into()),
            (
                "parts",
                "{\"click\":0.0,\"dwell\":0.0,\"skip\":0.0,\"relevance\":0.0}".into(),
            ),
            ("weights_version", r.below(3).to_string()),
            ("scored_at_ms", "1763888400001".into()),
            ("explore_action", "null".into()),
            ("explore_probability", "null".into()),
            ("exploration_version", "null".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if r.chance(0.3) {
            kv[18].1 = r.below(20).to_string();
            kv[19].1 = r.pick(&["0.005", "1", "0.25", "1.0"]).to_string();
            kv[20].1 = (1 + r.below(3)).to_string();
        }
        if r.chance(0.3) {
            kv.truncate(18); // the scorer's usual record without the explore fields
        }
        kv
    }

    fn render(r: &mut Rng, kv: &[(String, String)], spaced: bool) -> Vec<u8> {
        let (colon, comma) = if spaced { (": ", ", ") } else { (":", ",") };
        let mut s = String::from("{");
        for (i, (k, v)) in kv.iter().enumerate() {
            if i > 0 {
                s.push_str(comma);
            }
            s.push_str(&format!("\"{k}\"{colon}{v}"));
            if r.chance(0.01) {
                s.push(r.pick(&[' ', '\t']));
            }
        }
        s.push('}');
        s.into_bytes()
    }

    fn mutate(r: &mut Rng, kv: &mut Vec<(String, String)>) {
        let keys: Vec<String> = kv.iter().map(|(k, _)| k.clone()).collect();
        for _ in 0..r.below(4) {
            match r.below(7) {
                0 if !kv.is_empty() => {
                    kv.remove(r.below(kv.len()));
                }
                1 | 2 if !kv.is_empty() => {
                    let i = r.below(kv.len());
                    kv[i].1 = if r.chance(0.6) {
                        random_number(r)
                    } else {
                        r.pick(OTHERS).to_string()
                    };
                }
                3 => {
                    let k = r.pick(&["extra", "explore_action", "explore_probability", "user_id"]);
                    kv.push((k.to_string(), random_number(r)));
                }
                4 if kv.len() > 1 => {
                    let (i, j) = (r.below(kv.len()), r.below(kv.len()));
                    kv.swap(i, j);
                }
                5 if !keys.is_empty() => {
                    let i = r.below(kv.len().max(1));
                    if let Some(e) = kv.get_mut(i) {
                        e.0 = format!("{}{}", e.0, r.pick(&["", "x", "\u{e9}"]));
                    }
                }
                _ => {}
            }
        }
    }

    fn corrupt(r: &mut Rng, raw: &mut Vec<u8>) {
        const BYTES: &[u8] = b"\"\\,:{}[]09.eE-+ \t\n\r\x00\x1f\x7f\x80\xc3\xa9\xffnt";
        for _ in 0..1 + r.below(3) {
            let i = r.below(raw.len() + 1);
            match r.below(3) {
                0 if i < raw.len() => raw[i] = r.pick(BYTES),
                1 if i < raw.len() => {
                    raw.remove(i);
                }
                _ => raw.insert(i, r.pick(BYTES)),
            }
        }
    }

    #[test]
    fn fast_reader_decides_as_serde_json_does() {
        let mut r = Rng(0x5eed_2026_1130);
        let (mut decided, mut accepted) = (0, 0);
        for i in 0..200_000 {
            let mut kv = base(&mut r);
            if i % 4 != 0 {
                mutate(&mut r, &mut kv);
            }
            let spaced = r.chance(0.1);
            let mut raw = render(&mut r, &kv, spaced);
            if i % 5 == 4 {
                corrupt(&mut r, &mut raw);
            }
            if agree(&raw) {
                decided += 1;
                accepted += usize::from(parse_serde(&raw).is_some());
            }
        }
        assert!(
            decided > 50_000 && accepted > 50_000,
            "{decided} {accepted}"
        );
    }

    #[test]
    fn encoded_actions_decode_to_the_same_actions() {
        // random records (escaped strings among them: text kept after the JSON), back to back
        let mut r = Rng(11);
        let mut actions = Vec::new();
        while actions.len() < 500 {
            let mut kv = base(&mut r);
            mutate(&mut r, &mut kv);
            let raw = render(&mut r, &kv, false);
            if let Some(a) = parse_serde(&raw) {
                actions.push(a);
            }
        }
        let mut enc = Vec::new();
        for a in &actions {
            a.encode(&mut enc);
        }
        let records: Vec<&[u8]> = encoded_actions(&enc).collect();
        assert_eq!(records.len(), actions.len());
        for (a, rec) in actions.iter().zip(records) {
            let b = Action::decode(rec);
            assert!(same(a, &b) && a.buf == b.buf, "{:?} vs {:?}", a, b);
            assert_eq!(Action::encoded_raw(rec), a.raw());
            assert_eq!(Action::encoded_event_id(rec), a.event_id().as_bytes());
        }
    }

    #[test]
    fn usual_records_take_the_fast_path() {
        let mut r = Rng(7);
        for i in 0..2_000 {
            let kv = base(&mut r);
            let raw = render(&mut r, &kv, i % 2 == 1);
            assert!(
                matches!(fast_only(&raw), Ok(Some(_))),
                "{}",
                String::from_utf8_lossy(&raw)
            );
            assert!(agree(&raw));
        }
    }

    #[test]
    fn numbers_read_as_serde_json_reads_them() {
        let mut r = Rng(42);
        let mut kv = base(&mut r);
        kv.truncate(18);
        let mut fast_floats = 0;
        for i in 0..300_000 {
            let lit = if i < NUMBERS.len() {
                NUMBERS[i].to_string()
            } else {
                random_number(&mut r)
            };
            // reward: any finite number; dwell_seconds: also its range; position: ints only
            let field = [13, 8, 5][i % 3];
            let saved = std::mem::replace(&mut kv[field].1, lit);
            let raw = render(&mut r, &kv, false);
            if agree(&raw) && field == 13 {
                fast_floats += 1;
            }
            kv[field].1 = saved;
        }
        assert!(fast_floats > 50_000, "{fast_floats}");
    }

    #[test]
    fn swar_helpers_match_a_byte_loop() {
        let mut r = Rng(99);
        const BYTES: &[u8] = b"0123456789\"\\ \x00\x1f\x20\x2f\x3a\x7f\x80\xb9\xba\xff.a";
        for _ in 0..200_000 {
            let mut b = [0u8; 8];
            for c in b.iter_mut() {
                *c = if r.chance(0.7) {
                    b'0' + r.below(10) as u8
                } else {
                    r.pick(BYTES)
                };
            }
            let x = u64::from_le_bytes(b);
            let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
            assert_eq!(fast::leading_digits(x), digits, "{b:?}");
            if digits == 8 {
                let v = b.iter().fold(0u64, |v, &c| v * 10 + u64::from(c - b'0'));
                assert_eq!(fast::parse_eight(x), v);
            }
            let first = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            let m = fast::special(x);
            assert_eq!(
                (m != 0).then(|| (m.trailing_zeros() / 8) as usize),
                first,
                "{b:?}"
            );
        }
    }
}
