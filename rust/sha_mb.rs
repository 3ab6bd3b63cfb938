//! Multi-buffer SHA-256 (16 messages at once) and SHA-512 (8 messages at once) of 4096-byte
//! messages with AVX-512.
//!
//! Each 512-bit register holds the same state word (or message schedule word) of 16 (or 8)
//! independent messages, one per 32-bit (64-bit) lane, so one instruction advances every
//! message by the same step. Rotations are single `vprord`/`vprorq` instructions and the
//! three-input functions (Ch, Maj, the XOR of three rotations) are single `vpternlog`s.
//! Message words are gathered into lanes with an in-register transpose of 16x16 dwords (8x8
//! qwords), not with gather instructions.
//!
//! fs-verity hashes many equal-sized blocks, which is exactly the multi-buffer case; on CPUs
//! with AVX-512 this outruns single-stream SHA-NI for SHA-256 and the scalar/AVX2 SHA-512 by
//! a wide margin. The final padding block of a 4096-byte message is the same for every
//! message; its schedule is a compile-time constant.

/// Size of every message hashed here.
pub const MSG_LEN: usize = 4096;
/// Messages per SHA-256 batch.
pub const SHA256_LANES: usize = 16;
/// Messages per SHA-512 batch.
pub const SHA512_LANES: usize = 8;

/// Whether the AVX-512 code can run on this CPU.
#[inline]
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// SHA-256 of the first `16 * k` whole 4096-byte blocks of `data` (the largest such `k`),
/// written to `out` (32 bytes each). Returns how many blocks were hashed: 0 when AVX-512 is
/// not available or there are fewer than 16 blocks.
pub fn sha256_4k_blocks(data: &[u8], out: &mut [u8]) -> usize {
    let n = data.len() / MSG_LEN;
    assert!(out.len() >= n * 32, "output too small");
    let batches = n / SHA256_LANES;
    #[cfg(target_arch = "x86_64")]
    if batches > 0 && avx512_available() {
        for b in 0..batches {
            let base = b * SHA256_LANES;
            // SAFETY: AVX-512F/BW were detected; every pointer addresses a whole 4096-byte
            // input block or a 32-byte output slot inside the checked slices.
            unsafe {
                let ins = core::array::from_fn(|l| data.as_ptr().add((base + l) * MSG_LEN));
                let outs = core::array::from_fn(|l| out.as_mut_ptr().add((base + l) * 32));
                imp::sha256_x16(&ins, &outs);
            }
        }
        return batches * SHA256_LANES;
    }
    let _ = batches;
    0
}

/// SHA-512 of the first `8 * k` whole 4096-byte blocks of `data`, as [`sha256_4k_blocks`].
pub fn sha512_4k_blocks(data: &[u8], out: &mut [u8]) -> usize {
    let n = data.len() / MSG_LEN;
    assert!(out.len() >= n * 64, "output too small");
    let batches = n / SHA512_LANES;
    #[cfg(target_arch = "x86_64")]
    if batches > 0 && avx512_available() {
        for b in 0..batches {
            let base = b * SHA512_LANES;
            // SAFETY: as in sha256_4k_blocks.
            unsafe {
                let ins = core::array::from_fn(|l| data.as_ptr().add((base + l) * MSG_LEN));
                let outs = core::array::from_fn(|l| out.as_mut_ptr().add((base + l) * 64));
                imp::sha512_x8(&ins, &outs);
            }
        }
        return batches * SHA512_LANES;
    }
    let _ = batches;
    0
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::MSG_LEN;
    use crate::sha256x::{H0 as H256, K as K256, PAD_WK as PAD256_WK};
    use core::arch::x86_64::*;

    const K512: [u64; 80] = [
        0x428a2f98d728ae22,
        0x7137449123ef65cd,
        0xb5c0fbcfec4d3b2f,
        0xe9b5dba58189dbbc,
        0x3956c25bf348b538,
        0x59f111f1b605d019,
        0x923f82a4af194f9b,
        0xab1c5ed5da6d8118,
        0xd807aa98a3030242,
        0x12835b0145706fbe,
        0x243185be4ee4b28c,
        0x550c7dc3d5ffb4e2,
        0x72be5d74f27b896f,
        0x80deb1fe3b1696b1,
        0x9bdc06a725c71235,
        0xc19bf174cf692694,
        0xe49b69c19ef14ad2,
        0xefbe4786384f25e3,
        0x0fc19dc68b8cd5b5,
        0x240ca1cc77ac9c65,
        0x2de92c6f592b0275,
        0x4a7484aa6ea6e483,
        0x5cb0a9dcbd41fbd4,
        0x76f988da831153b5,
        0x983e5152ee66dfab,
        0xa831c66d2db43210,
        0xb00327c898fb213f,
        0xbf597fc7beef0ee4,
        0xc6e00bf33da88fc2,
        0xd5a79147930aa725,
        0x06ca6351e003826f,
        0x142929670a0e6e70,
        0x27b70a8546d22ffc,
        0x2e1b21385c26c926,
        0x4d2c6dfc5ac42aed,
        0x53380d139d95b3df,
        0x650a73548baf63de,
        0x766a0abb3c77b2a8,
        0x81c2c92e47edaee6,
        0x92722c851482353b,
        0xa2bfe8a14cf10364,
        0xa81a664bbc423001,
        0xc24b8b70d0f89791,
        0xc76c51a30654be30,
        0xd192e819d6ef5218,
        0xd69906245565a910,
        0xf40e35855771202a,
        0x106aa07032bbd1b8,
        0x19a4c116b8d2d0c8,
        0x1e376c085141ab53,
        0x2748774cdf8eeb99,
        0x34b0bcb5e19b48a8,
        0x391c0cb3c5c95a63,
        0x4ed8aa4ae3418acb,
        0x5b9cca4f7763e373,
        0x682e6ff3d6b2b8a3,
        0x748f82ee5defb2fc,
        0x78a5636f43172f60,
        0x84c87814a1f0ab72,
        0x8cc702081a6439ec,
        0x90befffa23631e28,
        0xa4506cebde82bde9,
        0xbef9a3f7b2c67915,
        0xc67178f2e372532b,
        0xca273eceea26619c,
        0xd186b8c721c0c207,
        0xeada7dd6cde0eb1e,
        0xf57d4f7fee6ed178,
        0x06f067aa72176fba,
        0x0a637dc5a2c898a6,
        0x113f9804bef90dae,
        0x1b710b35131c471b,
        0x28db77f523047d84,
        0x32caab7b40c72493,
        0x3c9ebe0a15c9bebc,
        0x431d67c49c100d4c,
        0x4cc5d4becb3e42b6,
        0x597f299cfc657e2a,
        0x5fcb6fab3ad6faec,
        0x6c44198c4a475817,
    ];

    const H512: [u64; 8] = [
        0x6a09e667f3bcc908,
        0xbb67ae8584caa73b,
        0x3c6ef372fe94f82b,
        0xa54ff53a5f1d36f1,
        0x510e527fade682d1,
        0x9b05688c2b3e6c1f,
        0x1f83d9abfb41bd6b,
        0x5be0cd19137e2179,
    ];

    /// Schedule plus round constants of the SHA-512 padding block of a 4096-byte message.
    const PAD512_WK: [u64; 80] = pad512_schedule();

    const fn pad512_schedule() -> [u64; 80] {
        const fn s0(x: u64) -> u64 {
            x.rotate_right(1) ^ x.rotate_right(8) ^ (x >> 7)
        }
        const fn s1(x: u64) -> u64 {
            x.rotate_right(19) ^ x.rotate_right(61) ^ (x >> 6)
        }
        let mut w = [0u64; 80];
        w[0] = 0x80 << 56;
        // Big-endian 128-bit length in bits: the high half (w[14]) is zero.
        w[15] = (MSG_LEN * 8) as u64;
        let mut t = 16;
        while t < 80 {
            w[t] = s1(w[t - 2])
                .wrapping_add(w[t - 7])
                .wrapping_add(s0(w[t - 15]))
                .wrapping_add(w[t - 16]);
            t += 1;
        }
        let mut i = 0;
        while i < 80 {
            w[i] = w[i].wrapping_add(K512[i]);
            i += 1;
        }
        w
    }

    // ---- SHA-256, 16 lanes of 32 bits --------------------------------------------------

    #[inline(always)]
    unsafe fn add32(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }

    #[inline(always)]
    unsafe fn bsig0_32(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x96>(
            _mm512_ror_epi32::<2>(x),
            _mm512_ror_epi32::<13>(x),
            _mm512_ror_epi32::<22>(x),
        )
    }

    #[inline(always)]
    unsafe fn bsig1_32(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x96>(
            _mm512_ror_epi32::<6>(x),
            _mm512_ror_epi32::<11>(x),
            _mm512_ror_epi32::<25>(x),
        )
    }

    #[inline(always)]
    unsafe fn ssig0_32(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x96>(
            _mm512_ror_epi32::<7>(x),
            _mm512_ror_epi32::<18>(x),
            _mm512_srli_epi32::<3>(x),
        )
    }

    #[inline(always)]
    unsafe fn ssig1_32(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x96>(
            _mm512_ror_epi32::<17>(x),
            _mm512_ror_epi32::<19>(x),
            _mm512_srli_epi32::<10>(x),
        )
    }

    /// W[t] + K[t] for round `t`, extending the schedule in place (`PAD`: the constant
    /// padding block).
    #[inline(always)]
    unsafe fn wk32<const PAD: bool>(w: &mut [__m512i; 16], t: usize) -> __m512i {
        if PAD {
            return _mm512_set1_epi32(PAD256_WK[t] as i32);
        }
        if t >= 16 {
            let s0 = ssig0_32(w[(t + 1) & 15]);
            let s1 = ssig1_32(w[(t + 14) & 15]);
            w[t & 15] = add32(add32(w[t & 15], s0), add32(w[(t + 9) & 15], s1));
        }
        add32(w[t & 15], _mm512_set1_epi32(K256[t] as i32))
    }

    macro_rules! round32 {
        ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $wk:expr) => {
            let wk = $wk;
            let ch = _mm512_ternarylogic_epi32::<0xca>($e, $f, $g);
            let t1 = add32(add32($h, bsig1_32($e)), add32(ch, wk));
            let maj = _mm512_ternarylogic_epi32::<0xe8>($a, $b, $c);
            $d = add32($d, t1);
            $h = add32(t1, add32(bsig0_32($a), maj));
        };
    }

    /// The 64 rounds of one block (schedule words 0..16 in `w`), added to the state.
    #[inline(always)]
    unsafe fn block32<const PAD: bool>(st: &mut [__m512i; 8], w: &mut [__m512i; 16]) {
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *st;
        let mut t = 0;
        while t < 64 {
            round32!(a, b, c, d, e, f, g, h, wk32::<PAD>(w, t));
            round32!(h, a, b, c, d, e, f, g, wk32::<PAD>(w, t + 1));
            round32!(g, h, a, b, c, d, e, f, wk32::<PAD>(w, t + 2));
            round32!(f, g, h, a, b, c, d, e, wk32::<PAD>(w, t + 3));
            round32!(e, f, g, h, a, b, c, d, wk32::<PAD>(w, t + 4));
            round32!(d, e, f, g, h, a, b, c, wk32::<PAD>(w, t + 5));
            round32!(c, d, e, f, g, h, a, b, wk32::<PAD>(w, t + 6));
            round32!(b, c, d, e, f, g, h, a, wk32::<PAD>(w, t + 7));
            t += 8;
        }
        for (s, v) in st.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = add32(*s, v);
        }
    }

    /// 4x4 transpose of the 128-bit blocks of four registers.
    #[inline(always)]
    unsafe fn transpose_128x4(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> [__m512i; 4] {
        let v0 = _mm512_shuffle_i32x4::<0x44>(a, b);
        let v1 = _mm512_shuffle_i32x4::<0xee>(a, b);
        let v2 = _mm512_shuffle_i32x4::<0x44>(c, d);
        let v3 = _mm512_shuffle_i32x4::<0xee>(c, d);
        [
            _mm512_shuffle_i32x4::<0x88>(v0, v2),
            _mm512_shuffle_i32x4::<0xdd>(v0, v2),
            _mm512_shuffle_i32x4::<0x88>(v1, v3),
            _mm512_shuffle_i32x4::<0xdd>(v1, v3),
        ]
    }

    /// Loads the 64-byte block at `off` of every message, big-endian words, transposed so
    /// that `w[j]` holds word `j` of all 16 messages.
    #[inline(always)]
    unsafe fn load32(ins: &[*const u8; 16], off: usize, w: &mut [__m512i; 16]) {
        let mask =
            _mm512_broadcast_i32x4(_mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203));
        let r: [__m512i; 16] = core::array::from_fn(|l| {
            _mm512_shuffle_epi8(_mm512_loadu_si512(ins[l].add(off) as *const _), mask)
        });
        let t: [__m512i; 16] = core::array::from_fn(|i| {
            let (x, y) = (r[i & !1], r[i | 1]);
            if i & 1 == 0 {
                _mm512_unpacklo_epi32(x, y)
            } else {
                _mm512_unpackhi_epi32(x, y)
            }
        });
        // u[4g + c], 128-bit block k: word 4k + c of messages 4g..4g+4.
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let (t0, t1, t2, t3) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            u[4 * g] = _mm512_unpacklo_epi64(t0, t2);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
        }
        for c in 0..4 {
            let out = transpose_128x4(u[c], u[4 + c], u[8 + c], u[12 + c]);
            for (k, v) in out.into_iter().enumerate() {
                w[4 * k + c] = v;
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn sha256_x16(ins: &[*const u8; 16], outs: &[*mut u8; 16]) {
        let mut st: [__m512i; 8] = core::array::from_fn(|i| _mm512_set1_epi32(H256[i] as i32));
        let mut w = [_mm512_setzero_si512(); 16];
        let mut off = 0;
        while off < MSG_LEN {
            load32(ins, off, &mut w);
            block32::<false>(&mut st, &mut w);
            off += 64;
        }
        block32::<true>(&mut st, &mut w);
        let mut words = [[0u32; 16]; 8];
        for (dst, v) in words.iter_mut().zip(st) {
            _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v);
        }
        for (l, &out) in outs.iter().enumerate() {
            for (i, word) in words.iter().enumerate() {
                let be = word[l].to_be_bytes();
                core::ptr::copy_nonoverlapping(be.as_ptr(), out.add(4 * i), 4);
            }
        }
    }

    // ---- SHA-512, 8 lanes of 64 bits ---------------------------------------------------

    #[inline(always)]
    unsafe fn add64(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi64(a, b)
    }

    #[inline(always)]
    unsafe fn bsig0_64(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<0x96>(
            _mm512_ror_epi64::<28>(x),
            _mm512_ror_epi64::<34>(x),
            _mm512_ror_epi64::<39>(x),
        )
    }

    #[inline(always)]
    unsafe fn bsig1_64(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<0x96>(
            _mm512_ror_epi64::<14>(x),
            _mm512_ror_epi64::<18>(x),
            _mm512_ror_epi64::<41>(x),
        )
    }

    #[inline(always)]
    unsafe fn ssig0_64(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<0x96>(
            _mm512_ror_epi64::<1>(x),
            _mm512_ror_epi64::<8>(x),
            _mm512_srli_epi64::<7>(x),
        )
    }

    #[inline(always)]
    unsafe fn ssig1_64(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi64::<0x96>(
            _mm512_ror_epi64::<19>(x),
            _mm512_ror_epi64::<61>(x),
            _mm512_srli_epi64::<6>(x),
        )
    }

    #[inline(always)]
    unsafe fn wk64<const PAD: bool>(w: &mut [__m512i; 16], t: usize) -> __m512i {
        if PAD {
            return _mm512_set1_epi64(PAD512_WK[t] as i64);
        }
        if t >= 16 {
            let s0 = ssig0_64(w[(t + 1) & 15]);
            let s1 = ssig1_64(w[(t + 14) & 15]);
            w[t & 15] = add64(add64(w[t & 15], s0), add64(w[(t + 9) & 15], s1));
        }
        add64(w[t & 15], _mm512_set1_epi64(K512[t] as i64))
    }

    macro_rules! round64 {
        ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $wk:expr) => {
            let wk = $wk;
            let ch = _mm512_ternarylogic_epi64::<0xca>($e, $f, $g);
            let t1 = add64(add64($h, bsig1_64($e)), add64(ch, wk));
            let maj = _mm512_ternarylogic_epi64::<0xe8>($a, $b, $c);
            $d = add64($d, t1);
            $h = add64(t1, add64(bsig0_64($a), maj));
        };
    }

    #[inline(always)]
    unsafe fn block64<const PAD: bool>(st: &mut [__m512i; 8], w: &mut [__m512i; 16]) {
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *st;
        let mut t = 0;
        while t < 80 {
            round64!(a, b, c, d, e, f, g, h, wk64::<PAD>(w, t));
            round64!(h, a, b, c, d, e, f, g, wk64::<PAD>(w, t + 1));
            round64!(g, h, a, b, c, d, e, f, wk64::<PAD>(w, t + 2));
            round64!(f, g, h, a, b, c, d, e, wk64::<PAD>(w, t + 3));
            round64!(e, f, g, h, a, b, c, d, wk64::<PAD>(w, t + 4));
            round64!(d, e, f, g, h, a, b, c, wk64::<PAD>(w, t + 5));
            round64!(c, d, e, f, g, h, a, b, wk64::<PAD>(w, t + 6));
            round64!(b, c, d, e, f, g, h, a, wk64::<PAD>(w, t + 7));
            t += 8;
        }
        for (s, v) in st.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = add64(*s, v);
        }
    }

    /// Loads the 128-byte block at `off` of every message, big-endian qwords, transposed so
    /// that `w[j]` holds word `j` of all 8 messages.
    #[inline(always)]
    unsafe fn load64(ins: &[*const u8; 8], off: usize, w: &mut [__m512i; 16]) {
        let mask =
            _mm512_broadcast_i32x4(_mm_set_epi64x(0x0809_0a0b_0c0d_0e0f, 0x0001_0203_0405_0607));
        for half in 0..2 {
            let r: [__m512i; 8] = core::array::from_fn(|l| {
                _mm512_shuffle_epi8(
                    _mm512_loadu_si512(ins[l].add(off + 64 * half) as *const _),
                    mask,
                )
            });
            // u[2g + c], 128-bit block k: word 2k + c of messages 2g, 2g+1.
            let u: [__m512i; 8] = core::array::from_fn(|i| {
                let (x, y) = (r[i & !1], r[i | 1]);
                if i & 1 == 0 {
                    _mm512_unpacklo_epi64(x, y)
                } else {
                    _mm512_unpackhi_epi64(x, y)
                }
            });
            for c in 0..2 {
                let out = transpose_128x4(u[c], u[2 + c], u[4 + c], u[6 + c]);
                for (k, v) in out.into_iter().enumerate() {
                    w[8 * half + 2 * k + c] = v;
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn sha512_x8(ins: &[*const u8; 8], outs: &[*mut u8; 8]) {
        let mut st: [__m512i; 8] = core::array::from_fn(|i| _mm512_set1_epi64(H512[i] as i64));
        let mut w = [_mm512_setzero_si512(); 16];
        let mut off = 0;
        while off < MSG_LEN {
            load64(ins, off, &mut w);
            block64::<false>(&mut st, &mut w);
            off += 128;
        }
        block64::<true>(&mut st, &mut w);
        let mut words = [[0u64; 8]; 8];
        for (dst, v) in words.iter_mut().zip(st) {
            _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v);
        }
        for (l, &out) in outs.iter().enumerate() {
            for (i, word) in words.iter().enumerate() {
                let be = word[l].to_be_bytes();
                core::ptr::copy_nonoverlapping(be.as_ptr(), out.add(8 * i), 8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use sha2::Digest;

    #[test]
    fn sha256_matches_sha2() {
        if !avx512_available() {
            eprintln!("AVX-512 not available: skipped");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        for n in [16usize, 17, 32, 47] {
            let mut data = vec![0u8; n * MSG_LEN + 5];
            rng.fill_bytes(&mut data);
            let data = &data[5..]; // unaligned
            let mut out = vec![0u8; n * 32];
            let done = sha256_4k_blocks(data, &mut out);
            assert_eq!(done, n / 16 * 16);
            for i in 0..done {
                let want = sha2::Sha256::digest(&data[i * MSG_LEN..(i + 1) * MSG_LEN]);
                assert_eq!(&out[i * 32..(i + 1) * 32], &want[..], "block {i} of {n}");
            }
        }
    }

    #[test]
    fn sha512_matches_sha2() {
        if !avx512_available() {
            eprintln!("AVX-512 not available: skipped");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(98);
        for n in [8usize, 9, 16, 23] {
            let mut data = vec![0u8; n * MSG_LEN + 3];
            rng.fill_bytes(&mut data);
            let data = &data[3..];
            let mut out = vec![0u8; n * 64];
            let done = sha512_4k_blocks(data, &mut out);
            assert_eq!(done, n / 8 * 8);
            for i in 0..done {
                let want = sha2::Sha512::digest(&data[i * MSG_LEN..(i + 1) * MSG_LEN]);
                assert_eq!(&out[i * 64..(i + 1) * 64], &want[..], "block {i} of {n}");
            }
        }
    }

    #[test]
    fn too_few_blocks() {
        let data = vec![0u8; 15 * MSG_LEN];
        let mut out = vec![0u8; 15 * 64];
        assert_eq!(sha256_4k_blocks(&data, &mut out), 0);
        assert_eq!(sha512_4k_blocks(&data[..7 * MSG_LEN], &mut out), 0);
    }
}
