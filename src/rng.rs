//! Small non-cryptographic randomness: retry jitter and request ids.

/// SplitMix64's increment.
pub(crate) const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output mix.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One SplitMix64 step from `z`.
pub(crate) fn splitmix64(z: u64) -> u64 {
    mix(z.wrapping_add(GAMMA))
}

/// A seed from the OS. Without OS randomness it falls back to the clock,
/// which only weakens uniqueness across processes started at once.
pub(crate) fn os_seed() -> u64 {
    let mut buf = [0u8; 8];
    if getrandom::fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        buf = nanos.to_le_bytes();
    }
    u64::from_le_bytes(buf)
}
