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
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    pub event_id: String,
    pub request_id: String,
    pub user_id: String,
    pub item_id: String,
    pub position: i64,
    pub event_time_ms: i64,
    pub clicked: bool,
    pub dwell_seconds: f64,
    pub skipped: bool,
    pub predicted_relevance: f64,
    pub behavior_propensity: f64,
    pub segment: String,
    pub reward: f64,
    pub weights_version: i64,
    pub explore_action: Option<i64>,
    pub explore_probability: Option<f64>,
    pub exploration_version: Option<i64>,
    pub raw: Vec<u8>,
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
            Num::Int(i) => i as f64,
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

/// The top-level record, read in one pass; any deviation from the common shape is an error (= fall back).
struct Fields {
    a: Action,
}

const REQUIRED: u32 = (1 << 15) - 1;

fn str_len_ok(s: &str) -> bool {
    let n = s.chars().count();
    n > 0 && n <= 256
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a reward event")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
                let bad = || de::Error::custom("not the common shape");
                let mut got: u32 = 0; // bit per required field
                let mut opt_seen: u32 = 0; // segment, request_id, session_id, explore_action/probability/version
                let mut n_keys = 0usize;
                let mut a = Action {
                    event_id: String::new(),
                    request_id: String::new(),
                    user_id: String::new(),
                    item_id: String::new(),
                    position: 0,
                    event_time_ms: 0,
                    clicked: false,
                    dwell_seconds: 0.0,
                    skipped: false,
                    predicted_relevance: 0.0,
                    behavior_propensity: 0.0,
                    segment: String::new(),
                    reward: 0.0,
                    weights_version: 0,
                    explore_action: None,
                    explore_probability: None,
                    exploration_version: None,
                    raw: Vec::new(),
                };
                let mut nums = [0.0f64; 5]; // dwell, relevance, propensity, reward, raw_reward
                let mut others: Vec<Cow<'de, str>> = Vec::new();
                let set = |got: &mut u32, bit: u32| -> Result<(), A::Error> {
                    if *got & (1 << bit) != 0 {
                        return Err(de::Error::custom("duplicate key"));
                    }
                    *got |= 1 << bit;
                    Ok(())
                };
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    n_keys += 1;
                    match k.as_ref() {
                        "event_id" => {
                            set(&mut got, 0)?;
                            a.event_id = m.next_value()?;
                        }
                        "user_id" => {
                            set(&mut got, 1)?;
                            a.user_id = m.next_value()?;
                        }
                        "item_id" => {
                            set(&mut got, 2)?;
                            a.item_id = m.next_value()?;
                        }
                        "position" => {
                            set(&mut got, 3)?;
                            a.position = m.next_value()?;
                        }
                        "event_time_ms" => {
                            set(&mut got, 4)?;
                            a.event_time_ms = m.next_value()?;
                        }
                        "weights_version" => {
                            set(&mut got, 5)?;
                            a.weights_version = m.next_value()?;
                        }
                        "scored_at_ms" => {
                            set(&mut got, 6)?;
                            let sc: i64 = m.next_value()?;
                            if sc < 0 {
                                return Err(bad());
                            }
                        }
                        "clicked" => {
                            set(&mut got, 7)?;
                            a.clicked = m.next_value()?;
                        }
                        "skipped" => {
                            set(&mut got, 8)?;
                            a.skipped = m.next_value()?;
                        }
                        "parts" => {
                            set(&mut got, 9)?;
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
                            set(&mut got, 10 + i)?;
                            nums[i as usize] = m.next_value::<Num>()?.f();
                        }
                        "segment" => {
                            set(&mut opt_seen, 0)?;
                            a.segment = m.next_value()?; // a str (null and other types: fall back)
                        }
                        "request_id" => {
                            set(&mut opt_seen, 1)?;
                            a.request_id = m.next_value()?;
                        }
                        "session_id" => {
                            set(&mut opt_seen, 2)?;
                            m.next_value::<String>()?;
                        }
                        "explore_action" => {
                            set(&mut opt_seen, 3)?;
                            a.explore_action = m.next_value()?;
                            if a.explore_action.is_some_and(|x| x < 0) {
                                return Err(bad());
                            }
                        }
                        "explore_probability" => {
                            set(&mut opt_seen, 4)?;
                            let ep: Option<Num> = m.next_value()?;
                            a.explore_probability = ep.map(Num::f);
                            if a.explore_probability
                                .is_some_and(|x| !(x > 0.0 && x <= 1.0))
                            {
                                return Err(bad());
                            }
                        }
                        "exploration_version" => {
                            set(&mut opt_seen, 5)?;
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
                if got != REQUIRED {
                    return Err(bad());
                }
                // Python: exactly 18 keys = the 15 required + segment, request_id, session_id (all str);
                // the explore fields are then absent. Any other count: each optional key is checked.
                if n_keys == 18 && opt_seen & 0b111 != 0b111 {
                    return Err(bad());
                }
                let [dw, rel, prop, reward, raw_reward] = nums;
                let _ = raw_reward;
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
                    return Err(bad());
                }
                a.dwell_seconds = dw;
                a.predicted_relevance = rel;
                a.behavior_propensity = prop;
                a.reward = reward;
                if a.segment.is_empty() {
                    a.segment.push_str("default");
                }
                Ok(Fields { a })
            }
        }
        d.deserialize_map(V)
    }
}

/// The [`Action`] of a record of the common, well-formed shape; `None` for anything else (the caller
/// asks the Python path). A record with raw newlines is left to Python too (it re-encodes it: the
/// state is newline-delimited).
pub fn parse_action(raw: &[u8]) -> Option<Action> {
    if raw.iter().any(|&c| c == b'\n' || c == b'\r') {
        return None;
    }
    let f: Fields = serde_json::from_slice(raw).ok()?;
    let mut a = f.a;
    a.raw = raw.to_vec();
    Some(a)
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
