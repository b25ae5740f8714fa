//! Lab (b): how fast an attacker enumerates links under sequential vs permuted codes.
//!
//! Model: `links` links were created from consecutive counters starting at a random
//! offset (a node's range). The attacker owns one of them, so knows one code, and guesses:
//! - `Increment`: the codes next to the known one (+1, -1, +2, -2, ...), the natural attack
//!   on sequential IDs;
//! - `Random`: uniform random 7-character codes.
//!
//! Under `Sequential`, a code is the Base62 of the counter; under `Permuted` it is the
//! production scheme ([`crate::ids::CodeGen`]) with a random key the attacker lacks. The
//! result is the fraction of the other links found after each number of guesses. For any
//! strategy against permuted codes the expectation is guesses x links / 62^7 links found.

use std::collections::HashSet;

use super::LabError;
use super::rng::SplitMix64;
use crate::ids::{CodeGen, DOMAIN_SIZE, IdKey};

/// Most links per run (the set of codes is held in memory).
pub const LINKS_MAX: u64 = 10_000_000;
/// Most guesses per run.
pub const GUESSES_MAX: u64 = 100_000_000;
const CHECKPOINTS: u64 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum IdScheme {
    Sequential,
    Permuted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Strategy {
    Increment,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EnumerationParams {
    pub links: u64,
    pub guesses: u64,
    pub seed: u64,
}

/// Fraction of links found vs guesses, for one scheme and one strategy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EnumerationCurve {
    pub scheme: IdScheme,
    pub strategy: Strategy,
    /// `(guesses made, fraction of the other links found)`, ascending.
    pub points: Vec<(u64, f64)>,
    pub links_found: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EnumerationResult {
    pub params: EnumerationParams,
    pub curves: Vec<EnumerationCurve>,
    /// Expected fraction found by `guesses` guesses against permuted codes.
    pub expected_permuted_fraction: f64,
}

/// Runs all four scheme x strategy combinations.
pub fn enumeration(params: EnumerationParams) -> Result<EnumerationResult, LabError> {
    if params.links < 2 || params.links > LINKS_MAX {
        return Err(LabError::BadParams(format!("links must lie in [2, {LINKS_MAX}]")));
    }
    if params.guesses == 0 || params.guesses > GUESSES_MAX {
        return Err(LabError::BadParams(format!("guesses must lie in [1, {GUESSES_MAX}]")));
    }
    let mut rng = SplitMix64::new(params.seed);
    let offset = rng.below(DOMAIN_SIZE - params.links);
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let generator = CodeGen::new(&IdKey::from_bytes(key));
    let own_index = rng.below(params.links);
    let mut curves = Vec::with_capacity(4);
    for scheme in [IdScheme::Sequential, IdScheme::Permuted] {
        let code_value = |counter: u64| -> Result<u64, LabError> {
            Ok(match scheme {
                IdScheme::Sequential => counter,
                IdScheme::Permuted => crate::ids::decode(&generator.code_for(counter)?),
            })
        };
        let mut codes = HashSet::with_capacity(params.links as usize);
        for i in 0..params.links {
            codes.insert(code_value(offset + i)?);
        }
        let known = code_value(offset + own_index)?;
        for strategy in [Strategy::Increment, Strategy::Random] {
            let mut guess_rng = SplitMix64::new(params.seed ^ 0xA5A5);
            curves.push(attack(&codes, known, params, scheme, strategy, &mut guess_rng));
        }
    }
    let expected = (params.guesses as f64 / DOMAIN_SIZE as f64).min(1.0);
    Ok(EnumerationResult { params, curves, expected_permuted_fraction: expected })
}

fn attack(
    codes: &HashSet<u64>,
    known: u64,
    params: EnumerationParams,
    scheme: IdScheme,
    strategy: Strategy,
    rng: &mut SplitMix64,
) -> EnumerationCurve {
    let others = (params.links - 1) as f64;
    let step = params.guesses.div_ceil(CHECKPOINTS).max(1);
    let mut found: HashSet<u64> = HashSet::new();
    let mut points = vec![(0, 0.0)];
    for g in 1..=params.guesses {
        let guess = match strategy {
            // g = 1, 2, 3, 4 ... -> +1, -1, +2, -2 ...
            Strategy::Increment => {
                let distance = g.div_ceil(2);
                if g % 2 == 1 { known.checked_add(distance) } else { known.checked_sub(distance) }
            }
            Strategy::Random => Some(rng.below(DOMAIN_SIZE)),
        };
        if let Some(value) = guess.filter(|&v| v < DOMAIN_SIZE && v != known)
            && codes.contains(&value)
        {
            found.insert(value);
        }
        if g % step == 0 || g == params.guesses {
            points.push((g, found.len() as f64 / others));
        }
    }
    EnumerationCurve { scheme, strategy, points, links_found: found.len() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_fall_to_incrementing_permuted_ids_do_not() {
        let r = enumeration(EnumerationParams { links: 2_000, guesses: 4_000, seed: 3 }).expect("valid params");
        let curve = |scheme, strategy| {
            r.curves.iter().find(|c| c.scheme == scheme && c.strategy == strategy).expect("all four curves")
        };
        let seq_inc = curve(IdScheme::Sequential, Strategy::Increment);
        assert_eq!(seq_inc.links_found, 1_999, "4000 guesses around the known code find every other link");
        assert_eq!(seq_inc.points.last().map(|p| p.1), Some(1.0));
        // 4000 guesses x 2000 links / 3.5e12 codes: expected 2.3e-6 links.
        assert_eq!(curve(IdScheme::Permuted, Strategy::Increment).links_found, 0);
        assert_eq!(curve(IdScheme::Permuted, Strategy::Random).links_found, 0);
        assert_eq!(curve(IdScheme::Sequential, Strategy::Random).links_found, 0);
        assert!(seq_inc.points.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn rejects_unbounded_runs() {
        assert!(enumeration(EnumerationParams { links: 1, guesses: 10, seed: 0 }).is_err());
        assert!(enumeration(EnumerationParams { links: 10, guesses: GUESSES_MAX + 1, seed: 0 }).is_err());
    }
}
