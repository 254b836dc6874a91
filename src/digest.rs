//! A small stable hash (FNV-1a, 64 bits, finished with MurmurHash3's fmix64): the same value
//! on every build and version, for what instances must agree on (bucket owners) or compare
//! (the profile set each one loaded). Not for secrets.

/// The hash of `parts` (each part delimited, so `("ab", "c")` and `("a", "bc")` differ).
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV alone mixes the last bytes poorly into the high bits.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_delimited() {
        assert_eq!(fnv64(&[b"kindling"]), 10_744_042_741_005_277_237);
        assert_ne!(fnv64(&[b"ab", b"c"]), fnv64(&[b"a", b"bc"]));
    }
}
