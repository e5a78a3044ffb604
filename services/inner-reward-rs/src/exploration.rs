//! The exploration slice: per-user sticky exploratory weight actions written by the outer
//! controller (`rewardloop:exploration:<segment>`, contract in `docs/architecture.md`).
//!
//! With `h(s) = fmix64(fnv1a64(s))`, a user is in the slice iff `h("<version>:<user_id>") / 2^64
//! < slice`; a user in the slice is scored with `actions[h("<version>:<user_id>:action") %
//! len(actions)]`. FNV-1a so that the Python side can recompute it with no dependency, and
//! MurmurHash3's 64-bit finalizer on top because FNV-1a alone spreads the last bytes of a key
//! badly into the high bits: for `user-0..user-19999` at version 7 a 10 % slice held 8.5 %
//! of the users (13.7 % at version 8); with the finalizer 10.4 % / 10.1 %. The assignment needs
//! no allocation (the version's digits and the user id are hashed as a byte stream).

use crate::scoring::Weights;
use crate::weights::{validate_weights, DocError};
use serde::Deserialize;

/// Prefix of the exploration document keys; the rest of the key is the segment.
pub const KEY_PREFIX: &str = "rewardloop:exploration:";
/// Largest allowed `slice`.
pub const MAX_SLICE: f64 = 0.2;
/// Most actions in one document.
pub const MAX_ACTIONS: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Streaming 64-bit FNV-1a.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl Fnv1a64 {
    pub fn write(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// Hashes the decimal digits of `n` (no allocation).
    pub fn write_decimal(self, n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.write(&digits[i..])
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv1a64::default().write(bytes).finish()
}

/// MurmurHash3's 64-bit finalizer (`fmix64`): full avalanche of every input bit.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The assignment hash: `fmix64(fnv1a64(bytes))`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

/// One exploratory weight action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub id: u64,
    pub weights: Weights,
}

/// A validated exploration document.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplorationDoc {
    pub version: u64,
    pub segment: String,
    pub slice: f64,
    pub actions: Vec<Action>,
    pub updated_at_ms: i64,
    pub source: String,
}

/// What a feedback is scored with under an exploration document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment<'a> {
    /// The action (Some: the user is in the slice) or None: the segment's weights.
    pub action: Option<&'a Action>,
    /// Behaviour probability of what was served: `slice / len(actions)` for an action,
    /// `1 − slice` for the segment's weights.
    pub probability: f64,
    pub version: u64,
}

impl ExplorationDoc {
    /// The sticky assignment of `user_id` (same answer for the whole life of this version).
    pub fn assign(&self, user_id: &str) -> Assignment<'_> {
        let base = Fnv1a64::default()
            .write_decimal(self.version)
            .write(b":")
            .write(user_id.as_bytes());
        // h / 2^64 in f64 (correctly rounded, as Python's `h / 2**64`).
        let u = fmix64(base.finish()) as f64 / 18_446_744_073_709_551_616.0;
        if u < self.slice && !self.actions.is_empty() {
            let h2 = fmix64(base.write(b":action").finish());
            let n = self.actions.len() as u64;
            let action = &self.actions[(h2 % n) as usize];
            Assignment {
                action: Some(action),
                probability: self.slice / n as f64,
                version: self.version,
            }
        } else {
            Assignment {
                action: None,
                probability: 1.0 - self.slice,
                version: self.version,
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    id: u64,
    weights: Weights,
}

#[derive(Deserialize)]
struct RawDoc {
    version: u64,
    slice: f64,
    actions: Vec<RawAction>,
    #[serde(default)]
    updated_at_ms: i64,
    #[serde(default)]
    source: String,
}

/// Why an exploration document was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExplorationError {
    #[error("not an exploration document: {0}")]
    Json(String),
    #[error("version must be >= 1, got 0")]
    Version,
    #[error("slice must be finite and in [0, {MAX_SLICE}], got {0}")]
    Slice(f64),
    #[error("actions must hold 1..={MAX_ACTIONS} entries, got {0}")]
    ActionCount(usize),
    #[error("action id {0} appears more than once")]
    DuplicateId(u64),
    #[error("action {id}: {source}")]
    Weights { id: u64, source: DocError },
}

/// Parses and validates the document stored under `rewardloop:exploration:<segment>`.
pub fn parse_exploration(segment: &str, json: &[u8]) -> Result<ExplorationDoc, ExplorationError> {
    let raw: RawDoc =
        serde_json::from_slice(json).map_err(|e| ExplorationError::Json(e.to_string()))?;
    if raw.version == 0 {
        return Err(ExplorationError::Version);
    }
    if !raw.slice.is_finite() || !(0.0..=MAX_SLICE).contains(&raw.slice) {
        return Err(ExplorationError::Slice(raw.slice));
    }
    if raw.actions.is_empty() || raw.actions.len() > MAX_ACTIONS {
        return Err(ExplorationError::ActionCount(raw.actions.len()));
    }
    let mut ids: Vec<u64> = raw.actions.iter().map(|a| a.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(ExplorationError::DuplicateId(w[0]));
    }
    for a in &raw.actions {
        validate_weights(&a.weights)
            .map_err(|source| ExplorationError::Weights { id: a.id, source })?;
    }
    Ok(ExplorationDoc {
        version: raw.version,
        segment: segment.to_owned(),
        slice: raw.slice,
        actions: raw
            .actions
            .into_iter()
            .map(|a| Action {
                id: a.id,
                weights: a.weights,
            })
            .collect(),
        updated_at_ms: raw.updated_at_ms,
        source: raw.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(version: u64, slice: f64, n: u64) -> ExplorationDoc {
        ExplorationDoc {
            version,
            segment: "default".into(),
            slice,
            actions: (0..n)
                .map(|id| Action {
                    id: id * 10,
                    weights: Weights::BUILTIN,
                })
                .collect(),
            updated_at_ms: 1,
            source: "test".into(),
        }
    }

    /// The vectors quoted in docs/architecture.md (computed independently in Python).
    #[test]
    fn hash_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"3:u-1"), 0xdbc4_c20a_ad1e_a87d);
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(stable_hash(b"3:u-1"), 0xace6_ea11_c301_61f0);
        assert_eq!(
            Fnv1a64::default().write_decimal(3).write(b":u-1").finish(),
            fnv1a64(b"3:u-1")
        );
        for n in [0u64, 7, 10, 12_345, u64::MAX] {
            assert_eq!(
                Fnv1a64::default().write_decimal(n).finish(),
                fnv1a64(n.to_string().as_bytes())
            );
        }
    }

    #[test]
    fn assignment_follows_the_documented_definition() {
        let d = doc(3, 0.2, 3);
        for i in 0..2000 {
            let user = format!("u-{i}");
            let h1 = stable_hash(format!("3:{user}").as_bytes());
            let h2 = stable_hash(format!("3:{user}:action").as_bytes());
            let a = d.assign(&user);
            if (h1 as f64) / 2f64.powi(64) < 0.2 {
                let want = &d.actions[(h2 % 3) as usize];
                assert_eq!(a.action, Some(want), "{user}");
                assert!((a.probability - 0.2 / 3.0).abs() < 1e-15);
            } else {
                assert_eq!(a.action, None, "{user}");
                assert!((a.probability - 0.8).abs() < 1e-15);
            }
            assert_eq!(a.version, 3);
        }
    }

    /// Assignments computed by the Python side (`rewardloop_common.exploration.assign(3, 0.2,
    /// [10, 11], user)`): both languages must serve a user the same action.
    #[test]
    fn assignment_matches_the_python_implementation() {
        let mut d = doc(3, 0.2, 2);
        d.actions[0].id = 10;
        d.actions[1].id = 11;
        for (user, want) in [
            ("u-0", None),
            ("u-8", None),
            ("u-9", Some(11)),
            ("u-10", Some(10)),
            ("u-11", None),
        ] {
            let a = d.assign(user);
            assert_eq!(a.action.map(|a| a.id), want, "{user}");
            let p = if want.is_some() { 0.1 } else { 0.8 };
            assert!((a.probability - p).abs() < 1e-12, "{user}");
        }
    }

    #[test]
    fn assignment_is_sticky_and_the_slice_has_the_right_size() {
        let d = doc(7, 0.1, 4);
        let users: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let first: Vec<_> = users
            .iter()
            .map(|u| d.assign(u).action.map(|a| a.id))
            .collect();
        let again: Vec<_> = users
            .iter()
            .map(|u| d.assign(u).action.map(|a| a.id))
            .collect();
        assert_eq!(first, again, "same version, same user: same action");
        let explored = first.iter().filter(|a| a.is_some()).count() as f64 / users.len() as f64;
        assert!((explored - 0.1).abs() < 0.01, "slice share {explored}");
        let mut per_action = [0usize; 4];
        for id in first.iter().flatten() {
            per_action[(*id / 10) as usize] += 1;
        }
        let in_slice: usize = per_action.iter().sum();
        for n in per_action {
            let share = n as f64 / (in_slice as f64 / 4.0);
            assert!((share - 1.0).abs() < 0.15, "{per_action:?}");
        }
        // A new version re-draws the slice.
        let d2 = doc(8, 0.1, 4);
        let moved = users
            .iter()
            .filter(|u| d.assign(u).action.is_some() != d2.assign(u).action.is_some())
            .count();
        assert!(moved > 1000, "a new version re-draws ({moved})");
        // Slice 0: nobody explores.
        let d0 = doc(9, 0.0, 4);
        assert!(users.iter().all(|u| d0.assign(u).action.is_none()));
    }

    const DOC: &str = r#"{"version": 3, "slice": 0.05,
        "actions": [{"id": 0, "weights": {"click": 1.1, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}},
                    {"id": 1, "weights": {"click": 0.9, "dwell": 0.6, "skip": -0.3, "relevance": 0.8}}],
        "updated_at_ms": 1763888400000, "source": "outer-controller"}"#;

    #[test]
    fn parses_the_documented_shape() {
        let d = parse_exploration("default", DOC.as_bytes()).expect("valid");
        assert_eq!((d.version, d.slice, d.actions.len()), (3, 0.05, 2));
        assert_eq!(d.actions[1].id, 1);
        assert_eq!(d.actions[1].weights.dwell, 0.6);
        assert_eq!(d.source, "outer-controller");
    }

    #[test]
    fn refuses_invalid_documents() {
        let v: serde_json::Value = serde_json::from_str(DOC).expect("json");
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut d = v.clone();
            f(&mut d);
            parse_exploration("default", d.to_string().as_bytes())
        };
        assert!(matches!(
            parse_exploration("default", b"nope"),
            Err(ExplorationError::Json(_))
        ));
        assert_eq!(
            with(&|d| d["version"] = 0.into()),
            Err(ExplorationError::Version)
        );
        assert!(matches!(
            with(&|d| d["version"] = (-1).into()),
            Err(ExplorationError::Json(_))
        ));
        assert_eq!(
            with(&|d| d["slice"] = 0.21.into()),
            Err(ExplorationError::Slice(0.21))
        );
        assert_eq!(
            with(&|d| d["slice"] = (-0.1).into()),
            Err(ExplorationError::Slice(-0.1))
        );
        assert_eq!(
            with(&|d| d["actions"] = serde_json::json!([])),
            Err(ExplorationError::ActionCount(0))
        );
        let many: Vec<_> = (0..257)
            .map(|i| serde_json::json!({"id": i, "weights": {"click": 1, "dwell": 1, "skip": 0, "relevance": 1}}))
            .collect();
        assert_eq!(
            with(&|d| d["actions"] = serde_json::Value::Array(many.clone())),
            Err(ExplorationError::ActionCount(257))
        );
        assert_eq!(
            with(&|d| d["actions"][1]["id"] = 0.into()),
            Err(ExplorationError::DuplicateId(0))
        );
        assert!(matches!(
            with(&|d| d["actions"][1]["weights"]["skip"] = 0.5.into()),
            Err(ExplorationError::Weights { id: 1, .. })
        ));
        assert!(matches!(
            with(&|d| d["actions"][0]["id"] = (-3).into()),
            Err(ExplorationError::Json(_))
        ));
        assert!(with(&|d| d["slice"] = 0.0.into()).is_ok());
        assert!(with(&|d| d["slice"] = 0.2.into()).is_ok());
    }
}
