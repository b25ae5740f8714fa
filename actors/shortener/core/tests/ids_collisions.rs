//! Codes of 10M consecutive counters never collide, and neighbouring counters get
//! unrelated-looking codes.
//!
//! The 10M run is the expensive test of this crate (~10^8 SipHash calls); it splits the
//! work over two threads and sorts halves, then merges, to stay bounded in debug builds.

use troupe_shortener::ids::{CODE_LEN, Code, CodeGen, IdKey};

const CODES_CHECKED: u64 = 10_000_000;
// Counters start high in the domain to include values from a node's late ranges.
const FIRST_COUNTER: u64 = 1_000_000_000_000;

fn generator() -> CodeGen {
    CodeGen::new(&IdKey::from_bytes(*b"collision-test-key-0123456789abc"))
}

/// Packs a code's 7 ASCII bytes into a u64 whose order equals the codes' order.
fn pack(code: &Code) -> u64 {
    let mut word = [0u8; 8];
    word[1..].copy_from_slice(code.as_str().as_bytes());
    u64::from_be_bytes(word)
}

fn sorted_codes(g: &CodeGen, counters: std::ops::Range<u64>) -> Vec<u64> {
    let mut codes: Vec<u64> = counters.map(|n| pack(&g.code_for(n).expect("counter inside the domain"))).collect();
    codes.sort_unstable();
    codes
}

#[test]
fn ten_million_consecutive_codes_never_collide() {
    let g = generator();
    let mid = FIRST_COUNTER + CODES_CHECKED / 2;
    let end = FIRST_COUNTER + CODES_CHECKED;
    let (low, high) = std::thread::scope(|s| {
        let low = s.spawn(|| sorted_codes(&g, FIRST_COUNTER..mid));
        let high = sorted_codes(&g, mid..end);
        (low.join().expect("worker thread"), high)
    });
    assert_eq!(low.len() + high.len(), CODES_CHECKED as usize);
    for half in [&low, &high] {
        if let Some(w) = half.windows(2).find(|w| w[0] >= w[1]) {
            panic!("collision inside a half: {:#x}", w[0]);
        }
    }
    // Merge walk: any value present in both halves is a collision.
    let (mut i, mut j) = (0, 0);
    while i < low.len() && j < high.len() {
        assert_ne!(low[i], high[j], "collision across halves");
        if low[i] < high[j] {
            i += 1;
        } else {
            j += 1;
        }
    }
}

#[test]
fn neighbouring_counters_get_codes_that_differ_almost_everywhere() {
    const PAIRS: u64 = 100_000;
    let g = generator();
    let mut differing_positions = 0u64;
    let mut prev = g.code_for(0).expect("in domain");
    for n in 1..=PAIRS {
        let code = g.code_for(n).expect("in domain");
        let diff = prev.as_str().bytes().zip(code.as_str().bytes()).filter(|(a, b)| a != b).count();
        differing_positions += diff as u64;
        prev = code;
    }
    let mean = differing_positions as f64 / PAIRS as f64;
    // Two independent uniform codes differ in 7 * 61/62 = 6.887 positions on average.
    eprintln!("mean differing positions between codes of n and n+1: {mean:.4} of {CODE_LEN}");
    assert!(mean > 6.8, "codes of consecutive counters share too many positions: {mean}");
}
