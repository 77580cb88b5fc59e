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
    splitmix64(fnv1a(fnv1a(FNV_OFFSET_BASIS, &seed.to_le_bytes()), bytes))
}

/// Continues a 64-bit FNV-1a hash from `state` over `bytes`.
fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
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
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite (http://www.isthe.com/chongo/tech/comp/fnv/).
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn values_are_pinned() {
        // If these change, every session in a running cluster moves on upgrade: never change them.
        assert_eq!(stable_hash(KEY_SEED, b"session-1"), 0x4662_c39a_b55f_beae);
        assert_eq!(stable_hash(OFFSET_SEED, b"node-1"), 0x1e19_32af_7f4c_0e14);
        assert_eq!(stable_hash(SKIP_SEED, b"node-1"), 0xe1de_81a0_85d9_0af2);
    }
}
