//! AES-GCM (AES-128 and AES-256, 96-bit nonce, 128-bit tag) for x86_64 CPUs with VAES and
//! VPCLMULQDQ: the fast path for sealing and opening TLS records.
//!
//! ring 0.16's AES-NI code works on 128-bit registers, six blocks per iteration. The vector AES
//! (VAES) and vector carry-less multiply (VPCLMULQDQ) extensions apply the same instructions to
//! every 128-bit lane of a 256-bit (AVX2) or 512-bit (AVX-512) register, so one instruction
//! advances 2 or 4 blocks. The design follows the published VAES GCM implementations (Intel's,
//! and Linux's `aes-gcm-avx10` / `aes-gcm-vaes-avx2` by Eric Biggers); the code here is our own.
//!
//! # Layout
//!
//! GCM is CTR-mode AES over the data plus GHASH, a polynomial MAC over GF(2^128), over the AAD
//! and the ciphertext; the tag is `GHASH(H; aad, ct, lengths) ^ AES_K(J0)` with
//! `H = AES_K(0^128)` and `J0 = nonce || 0x00000001`.
//!
//! * **One generic body, two widths.** The `Lanes` trait wraps the handful of intrinsics
//!   used, for `__m128i` (one block), `__m256i` (two) and `__m512i` (four). `seal` and `open` are
//!   written once over `Lanes` and instantiated inside `#[target_feature]` entry points for the
//!   AVX2 and the AVX-512 register width and for 10 (AES-128) and 14 (AES-256) rounds.
//! * **Counters.** The counter blocks `nonce || be32(i)` are kept byte-reversed, so the 32-bit
//!   counter is the low dword of each lane: one `vpaddd` per vector steps every lane, wrapping
//!   mod 2^32 exactly like GCM's `inc32`, and one byte shuffle per vector restores the block
//!   order right before the first AES round. Data block `k` (0-based) uses counter `k + 2`.
//! * **Main loop.** An iteration covers 16 blocks (256 bytes): 4 vectors with AVX-512, 8 with
//!   AVX2. The iteration's keystream vectors go through each AES round together, so the round
//!   instructions are independent of one another. GHASH of the
//!   iteration's blocks `D_1..D_n` is one multiply-accumulate against precomputed powers:
//!   `acc' = (acc ^ D_1)·H^n ^ D_2·H^(n-1) ^ ... ^ D_n·H`. The 256-bit lane products are
//!   summed unreduced (schoolbook, four carry-less multiplies per lane), reduced once per
//!   iteration, and the lanes are XORed into the 128-bit accumulator. Sealing hashes the
//!   *previous* iteration's ciphertext while computing the current keystream; opening hashes the
//!   ciphertext it is about to decrypt. Either way the AES chain and the GHASH chain do not depend
//!   on each other, and the out-of-order core runs them side by side.
//! * **Tail.** The last, partial iteration (fewer than 16 blocks of data) is copied into a
//!   zero-padded stack buffer and run as one more iteration, with the powers chosen so the last
//!   real block is multiplied by `H^1`; the padding's zero blocks add nothing to GHASH (and the
//!   table has zero entries past `H^1` for the lanes they occupy). AAD is hashed the same way.
//! * **GHASH representation.** GCM numbers polynomial coefficients from the most significant bit
//!   of the first byte. Blocks are byte-reversed on load, which makes bit `j` of the 128-bit
//!   value the coefficient of `x^(127-j)`; in that bit-reversed world the modulus
//!   `x^128 + x^7 + x^2 + x + 1` becomes `G' = y^128 + y^127 + y^126 + y^121 + 1`, and the
//!   carry-less product of two reversed values is off by a factor `y^127`:
//!   `rev(a·b) = rev(a)·rev(b)·y^-127 mod G'`. The key setup stores `rev(H^k)·y`,
//!   so a Montgomery reduction (multiply by `y^-128`) of `rev(D)·rev(H^k)·y` yields exactly
//!   `rev(D·H^k)`. The reduction folds the low 64 bits twice with one 64x64 carry-less
//!   multiply by `0xc2 << 56` (the `y^127 + y^126 + y^121` part of `G'`) each time.
//!
//! Nothing branches on or indexes memory by secret data: AES is the AES-NI/VAES instructions,
//! GHASH is carry-less multiplies, and the tag check is ring's constant-time comparison. Branches
//! depend only on the (public) lengths.

#[cfg(not(ri_vector_aes))]
use core::convert::Infallible;
use core::fmt;

/// GCM's limit on the plaintext of one message (NIST SP 800-38D: 2^39 - 256 bits): with a 96-bit
/// nonce the 32-bit block counter starts at 2, so 2^32 - 2 blocks fit before it would wrap into
/// `J0` and earlier keystream. TLS records (at most 16 KiB + 256 bytes) are far below it.
pub const MAX_IN_OUT_LEN: u64 = (1 << 36) - 32;

/// AES-GCM with a 12-byte nonce and 16-byte tag, VAES/VPCLMULQDQ code path.
pub struct AesGcm {
    #[cfg(ri_vector_aes)]
    key: x86::Key,
    #[cfg(not(ri_vector_aes))]
    never: Infallible,
}

impl fmt::Debug for AesGcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("AesGcm").finish_non_exhaustive()
    }
}

impl AesGcm {
    /// None when the CPU lacks the needed features (checked at run time with
    /// `is_x86_feature_detected!`: AES-NI, PCLMULQDQ, AVX2, VAES, VPCLMULQDQ; AVX-512 F/BW/VL
    /// select the 512-bit path when present), when the key is not 16 or 32 bytes, or on
    /// non-x86_64 targets.
    pub fn new(key: &[u8]) -> Option<AesGcm> {
        #[cfg(ri_vector_aes)]
        {
            x86::Key::new(key, x86::Width::detect()?).map(|key| AesGcm { key })
        }
        #[cfg(not(ri_vector_aes))]
        {
            let _ = key;
            None
        }
    }

    /// Like [`AesGcm::new`] with a chosen register width, so tests and the benchmark can run
    /// both code paths on a CPU that has AVX-512.
    #[cfg(all(test, ri_vector_aes))]
    fn with_width(key: &[u8], width: x86::Width) -> Option<AesGcm> {
        x86::Key::new(key, width).map(|key| AesGcm { key })
    }

    /// Encrypts `in_out` in place and returns the tag.
    ///
    /// Panics if `in_out` is longer than [`MAX_IN_OUT_LEN`] (GCM's limit): beyond it the block
    /// counter would wrap and the keystream repeat, which must never happen silently.
    pub fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; 16] {
        #[cfg(ri_vector_aes)]
        {
            assert!(
                in_out.len() as u64 <= MAX_IN_OUT_LEN,
                "AES-GCM input longer than GCM allows"
            );
            self.key.seal(nonce, aad, in_out)
        }
        #[cfg(not(ri_vector_aes))]
        {
            let _ = (nonce, aad, in_out);
            match self.never {}
        }
    }

    /// Checks the tag (constant time) and decrypts in place; on a bad tag returns `Err(())` and
    /// `in_out` is zeroed (callers must treat it as unspecified and discard it).
    #[allow(clippy::result_unit_err)] // the record layer's contract: a bad tag carries no detail
    pub fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), ()> {
        #[cfg(ri_vector_aes)]
        {
            if in_out.len() as u64 > MAX_IN_OUT_LEN {
                return Err(());
            }
            let expected = self.key.open(nonce, aad, in_out);
            if ring::constant_time::verify_slices_are_equal(&expected, tag).is_ok() {
                Ok(())
            } else {
                // Do not hand out unauthenticated plaintext, even by accident.
                in_out.fill(0);
                Err(())
            }
        }
        #[cfg(not(ri_vector_aes))]
        {
            let _ = (nonce, aad, in_out, tag);
            match self.never {}
        }
    }
}

#[cfg(ri_vector_aes)]
mod x86 {
    use core::arch::x86_64::*;

    /// Bytes in an AES / GHASH block.
    const BLOCK: usize = 16;
    /// Blocks per main-loop iteration, and so the number of H powers stored. AES rounds have a
    /// latency of about 4 cycles and the CPU can start one or two vector rounds per cycle, so at
    /// least 8 independent blocks must be in flight; 16 also amortises the once-per-iteration
    /// GHASH reduction. Measured on the AMD EPYC this was written on (16 KiB records): for
    /// AVX2, 8 ymm vectors per iteration beat 4 by ~20 % on seal (equal on open) despite the
    /// register pressure of having only 16 ymm registers.
    const ITER_BLOCKS: usize = 16;
    /// Vectors per main-loop iteration of the 512-bit path (4 blocks each).
    const AVX512_VECS: usize = ITER_BLOCKS / 4;
    /// Vectors per main-loop iteration of the 256-bit path (2 blocks each).
    const AVX2_VECS: usize = ITER_BLOCKS / 2;
    /// Blocks in a 512-bit vector, the widest `Lanes` type.
    const MAX_LANES: usize = 4;
    /// Powers of H the main loop multiplies by: one per block of an iteration.
    const MAX_POWERS: usize = ITER_BLOCKS;
    /// Index of `H^1` in the power table; `H^k` is at `H1 + 1 - k`.
    const H1: usize = MAX_POWERS - 1;
    /// The table holds `H^16 .. H^1` and then `MAX_LANES - 1` zero entries: a final partial
    /// vector that ends with `H^1` in lane 0 reads up to three entries past it (multiplying the
    /// zero padding blocks by zero) without leaving the table.
    const TABLE_LEN: usize = MAX_POWERS + MAX_LANES - 1;
    /// Bytes in one main-loop iteration of the widest path (the tail buffer's size): a tail is
    /// always shorter than one iteration.
    const MAX_CHUNK: usize = ITER_BLOCKS * BLOCK;
    /// AES-128 and AES-256 round counts (FIPS 197); the schedule has one key more.
    const NR128: usize = 10;
    const NR256: usize = 14;
    /// Round keys stored: enough for AES-256.
    const MAX_ROUND_KEYS: usize = NR256 + 1;
    /// The `y^127 + y^126 + y^121` part of the bit-reversed GHASH modulus `G'`, in the high
    /// qword (the reduction multiplies by it with `vpclmulqdq $0x01`).
    const GHASH_POLY_HI: u64 = 0xc200_0000_0000_0000;
    /// All of `G'` below `y^128`: `y^127 + y^126 + y^121 + 1`.
    const GHASH_POLY: u128 = 0xc200_0000_0000_0000_0000_0000_0000_0001;

    /// The register width of the code path.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Width {
        /// 256-bit vectors: VAES + VPCLMULQDQ + AVX2.
        Avx2,
        /// 512-bit vectors: additionally AVX-512 F/BW/VL.
        Avx512,
    }

    impl Width {
        /// The widest path this CPU runs, if any.
        pub(super) fn detect() -> Option<Width> {
            [Width::Avx512, Width::Avx2].into_iter().find(|w| w.available())
        }

        /// Whether the CPU (and OS, for the register state) supports every feature of this
        /// path's entry points.
        pub(super) fn available(self) -> bool {
            let base = is_x86_feature_detected!("aes")
                && is_x86_feature_detected!("pclmulqdq")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("vaes")
                && is_x86_feature_detected!("vpclmulqdq");
            match self {
                Width::Avx2 => base,
                Width::Avx512 => {
                    base && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                }
            }
        }
    }

    #[derive(Clone, Copy)]
    enum Rounds {
        Aes128,
        Aes256,
    }

    /// Expanded key: round keys and the GHASH key powers.
    pub(super) struct Key {
        width: Width,
        rounds: Rounds,
        /// AES round keys (the first 11 for AES-128).
        rk: [__m128i; MAX_ROUND_KEYS],
        /// `rev(H^16)·y .. rev(H^1)·y` (see the module doc), then zeros.
        powers: [__m128i; TABLE_LEN],
    }

    impl Key {
        /// None for a key that is not 16 or 32 bytes, or when the CPU lacks `width`'s features.
        pub(super) fn new(key: &[u8], width: Width) -> Option<Key> {
            let rounds = match key.len() {
                16 => Rounds::Aes128,
                32 => Rounds::Aes256,
                _ => return None,
            };
            if !width.available() {
                return None;
            }
            // SAFETY: `available` just confirmed AES-NI and PCLMULQDQ (among others), the only
            // features `setup` enables; the key length matches `rounds`.
            Some(unsafe { setup(key, width, rounds) })
        }

        pub(super) fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
            // SAFETY: a `Key` is only built by `Key::new` after `self.width.available()` confirmed
            // every feature the chosen entry point enables.
            unsafe {
                match (self.width, self.rounds) {
                    (Width::Avx2, Rounds::Aes128) => seal_avx2_aes128(self, nonce, aad, data),
                    (Width::Avx2, Rounds::Aes256) => seal_avx2_aes256(self, nonce, aad, data),
                    (Width::Avx512, Rounds::Aes128) => seal_avx512_aes128(self, nonce, aad, data),
                    (Width::Avx512, Rounds::Aes256) => seal_avx512_aes256(self, nonce, aad, data),
                }
            }
        }

        /// Decrypts `data` in place and returns the tag it should carry.
        pub(super) fn open(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
            // SAFETY: as in `seal`.
            unsafe {
                match (self.width, self.rounds) {
                    (Width::Avx2, Rounds::Aes128) => open_avx2_aes128(self, nonce, aad, data),
                    (Width::Avx2, Rounds::Aes256) => open_avx2_aes256(self, nonce, aad, data),
                    (Width::Avx512, Rounds::Aes128) => open_avx512_aes128(self, nonce, aad, data),
                    (Width::Avx512, Rounds::Aes256) => open_avx512_aes256(self, nonce, aad, data),
                }
            }
        }
    }

    impl Drop for Key {
        fn drop(&mut self) {
            // SAFETY: SSE2 is part of the x86_64 baseline; the rest are plain writes to this
            // value's own fields, volatile so that the compiler keeps them although the value is
            // about to die (best effort: moves may have left copies elsewhere).
            unsafe {
                let zero = _mm_setzero_si128();
                core::ptr::write_volatile(&mut self.rk, [zero; MAX_ROUND_KEYS]);
                core::ptr::write_volatile(&mut self.powers, [zero; TABLE_LEN]);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Key setup (128-bit registers, AES-NI + PCLMULQDQ only).

    /// # Safety
    /// The CPU must support AES-NI and PCLMULQDQ; `key.len()` is 16 for `Aes128`, 32 for `Aes256`.
    #[target_feature(enable = "aes,pclmulqdq")]
    unsafe fn setup(key: &[u8], width: Width, rounds: Rounds) -> Key {
        let rk = match rounds {
            Rounds::Aes128 => expand_aes128(key.as_ptr()),
            Rounds::Aes256 => expand_aes256(key.as_ptr()),
        };
        let zero = _mm_setzero_si128();
        let [h] = match rounds {
            Rounds::Aes128 => encrypt::<__m128i, NR128, 1>(&rk, [zero]),
            Rounds::Aes256 => encrypt::<__m128i, NR256, 1>(&rk, [zero]),
        };
        let mut h_bytes = [0u8; BLOCK];
        _mm_storeu_si128(h_bytes.as_mut_ptr().cast(), h);
        // rev(H) is H read as a big-endian integer; multiply it by y modulo G': shift left one
        // bit and, if a bit fell out at y^128, add y^128 mod G'. The mask keeps it branch-free.
        let h = u128::from_be_bytes(h_bytes);
        let h = (h << 1) ^ (0u128.wrapping_sub(h >> 127) & GHASH_POLY);
        let h1 = _mm_set_epi64x((h >> 64) as i64, h as i64);
        let poly = _mm_set_epi64x(GHASH_POLY_HI as i64, 0);
        let mut powers = [zero; TABLE_LEN];
        powers[H1] = h1;
        for i in (0..H1).rev() {
            // (rev(H^k)·y)·(rev(H)·y)·y^-128 = rev(H^(k+1))·y: the stored form is closed under
            // the Montgomery product.
            powers[i] = Product::<__m128i>::new(powers[i + 1], h1).reduce(poly);
        }
        Key {
            width,
            rounds,
            rk,
            powers,
        }
    }

    /// One step of the AES key schedule: `prev` with each word XORed into the following ones,
    /// then XORed with `t` (the SubWord/RotWord/Rcon word, already broadcast to every dword).
    #[inline(always)]
    unsafe fn schedule_step(prev: __m128i, t: __m128i) -> __m128i {
        let mut k = prev;
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, t)
    }

    /// # Safety
    /// AES-NI must be available; `key` points to 16 readable bytes.
    #[inline(always)]
    unsafe fn expand_aes128(key: *const u8) -> [__m128i; MAX_ROUND_KEYS] {
        let mut rk = [_mm_setzero_si128(); MAX_ROUND_KEYS];
        let mut k = _mm_loadu_si128(key.cast());
        rk[0] = k;
        macro_rules! round {
            ($i:expr, $rcon:expr) => {
                k = schedule_step(
                    k,
                    _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(k)),
                );
                rk[$i] = k;
            };
        }
        round!(1, 0x01);
        round!(2, 0x02);
        round!(3, 0x04);
        round!(4, 0x08);
        round!(5, 0x10);
        round!(6, 0x20);
        round!(7, 0x40);
        round!(8, 0x80);
        round!(9, 0x1b);
        round!(10, 0x36);
        rk
    }

    /// # Safety
    /// AES-NI must be available; `key` points to 32 readable bytes.
    #[inline(always)]
    unsafe fn expand_aes256(key: *const u8) -> [__m128i; MAX_ROUND_KEYS] {
        let mut rk = [_mm_setzero_si128(); MAX_ROUND_KEYS];
        let mut a = _mm_loadu_si128(key.cast());
        let mut b = _mm_loadu_si128(key.add(BLOCK).cast());
        rk[0] = a;
        rk[1] = b;
        // Even round keys come from the previous pair with RotWord+SubWord+Rcon, odd ones with
        // SubWord only (FIPS 197, Nk = 8).
        macro_rules! even {
            ($i:expr, $rcon:expr) => {
                a = schedule_step(
                    a,
                    _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(b)),
                );
                rk[$i] = a;
            };
        }
        macro_rules! odd {
            ($i:expr) => {
                b = schedule_step(
                    b,
                    _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(a)),
                );
                rk[$i] = b;
            };
        }
        even!(2, 0x01);
        odd!(3);
        even!(4, 0x02);
        odd!(5);
        even!(6, 0x04);
        odd!(7);
        even!(8, 0x08);
        odd!(9);
        even!(10, 0x10);
        odd!(11);
        even!(12, 0x20);
        odd!(13);
        even!(14, 0x40);
        rk
    }

    // ---------------------------------------------------------------------------------------
    // The vector abstraction.

    /// A register of `BLOCKS` 128-bit lanes, each holding one AES state or GHASH block.
    ///
    /// All methods are `#[inline(always)]` and carry no `#[target_feature]` of their own: they
    /// are only called (after inlining) from the `#[target_feature]` entry points below, whose
    /// features cover every intrinsic used.
    ///
    /// # Safety
    /// Every method requires the CPU features of the entry point it is reached from; `load`
    /// and `store` additionally need `BLOCKS * 16` readable / writable bytes at `p`.
    trait Lanes: Copy {
        const BLOCKS: usize;
        unsafe fn load(p: *const u8) -> Self;
        unsafe fn store(p: *mut u8, v: Self);
        unsafe fn zero() -> Self;
        /// `x` in every lane.
        unsafe fn splat(x: __m128i) -> Self;
        /// `x` in lane 0, zeros elsewhere.
        unsafe fn lane0(x: __m128i) -> Self;
        /// Lane `j` = `[first + j, 0, 0, 0]` as dwords (counter offsets).
        unsafe fn counters(first: u32) -> Self;
        unsafe fn xor(a: Self, b: Self) -> Self;
        unsafe fn add32(a: Self, b: Self) -> Self;
        /// `pshufb` within each lane.
        unsafe fn shuffle_bytes(a: Self, mask: Self) -> Self;
        /// Swaps the two qwords of each lane.
        unsafe fn swap_halves(a: Self) -> Self;
        unsafe fn aesenc(a: Self, k: Self) -> Self;
        unsafe fn aesenclast(a: Self, k: Self) -> Self;
        /// `pclmulqdq` with immediate `IMM` in each lane.
        unsafe fn clmul<const IMM: i32>(a: Self, b: Self) -> Self;
        /// XOR of all lanes.
        unsafe fn fold(a: Self) -> __m128i;
    }

    impl Lanes for __m128i {
        const BLOCKS: usize = 1;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> Self {
            _mm_loadu_si128(p.cast())
        }
        #[inline(always)]
        unsafe fn store(p: *mut u8, v: Self) {
            _mm_storeu_si128(p.cast(), v)
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm_setzero_si128()
        }
        #[inline(always)]
        unsafe fn splat(x: __m128i) -> Self {
            x
        }
        #[inline(always)]
        unsafe fn lane0(x: __m128i) -> Self {
            x
        }
        #[inline(always)]
        unsafe fn counters(first: u32) -> Self {
            _mm_set_epi32(0, 0, 0, first as i32)
        }
        #[inline(always)]
        unsafe fn xor(a: Self, b: Self) -> Self {
            _mm_xor_si128(a, b)
        }
        #[inline(always)]
        unsafe fn add32(a: Self, b: Self) -> Self {
            _mm_add_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn shuffle_bytes(a: Self, mask: Self) -> Self {
            _mm_shuffle_epi8(a, mask)
        }
        #[inline(always)]
        unsafe fn swap_halves(a: Self) -> Self {
            _mm_shuffle_epi32::<0x4e>(a)
        }
        #[inline(always)]
        unsafe fn aesenc(a: Self, k: Self) -> Self {
            _mm_aesenc_si128(a, k)
        }
        #[inline(always)]
        unsafe fn aesenclast(a: Self, k: Self) -> Self {
            _mm_aesenclast_si128(a, k)
        }
        #[inline(always)]
        unsafe fn clmul<const IMM: i32>(a: Self, b: Self) -> Self {
            _mm_clmulepi64_si128::<IMM>(a, b)
        }
        #[inline(always)]
        unsafe fn fold(a: Self) -> __m128i {
            a
        }
    }

    impl Lanes for __m256i {
        const BLOCKS: usize = 2;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> Self {
            _mm256_loadu_si256(p.cast())
        }
        #[inline(always)]
        unsafe fn store(p: *mut u8, v: Self) {
            _mm256_storeu_si256(p.cast(), v)
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm256_setzero_si256()
        }
        #[inline(always)]
        unsafe fn splat(x: __m128i) -> Self {
            _mm256_broadcastsi128_si256(x)
        }
        #[inline(always)]
        unsafe fn lane0(x: __m128i) -> Self {
            _mm256_zextsi128_si256(x)
        }
        #[inline(always)]
        unsafe fn counters(first: u32) -> Self {
            let c = |j: u32| first.wrapping_add(j) as i32;
            _mm256_set_epi32(0, 0, 0, c(1), 0, 0, 0, c(0))
        }
        #[inline(always)]
        unsafe fn xor(a: Self, b: Self) -> Self {
            _mm256_xor_si256(a, b)
        }
        #[inline(always)]
        unsafe fn add32(a: Self, b: Self) -> Self {
            _mm256_add_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn shuffle_bytes(a: Self, mask: Self) -> Self {
            _mm256_shuffle_epi8(a, mask)
        }
        #[inline(always)]
        unsafe fn swap_halves(a: Self) -> Self {
            _mm256_shuffle_epi32::<0x4e>(a)
        }
        #[inline(always)]
        unsafe fn aesenc(a: Self, k: Self) -> Self {
            _mm256_aesenc_epi128(a, k)
        }
        #[inline(always)]
        unsafe fn aesenclast(a: Self, k: Self) -> Self {
            _mm256_aesenclast_epi128(a, k)
        }
        #[inline(always)]
        unsafe fn clmul<const IMM: i32>(a: Self, b: Self) -> Self {
            _mm256_clmulepi64_epi128::<IMM>(a, b)
        }
        #[inline(always)]
        unsafe fn fold(a: Self) -> __m128i {
            _mm_xor_si128(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a))
        }
    }

    impl Lanes for __m512i {
        const BLOCKS: usize = 4;
        #[inline(always)]
        unsafe fn load(p: *const u8) -> Self {
            _mm512_loadu_si512(p.cast())
        }
        #[inline(always)]
        unsafe fn store(p: *mut u8, v: Self) {
            _mm512_storeu_si512(p.cast(), v)
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_si512()
        }
        #[inline(always)]
        unsafe fn splat(x: __m128i) -> Self {
            _mm512_broadcast_i32x4(x)
        }
        #[inline(always)]
        unsafe fn lane0(x: __m128i) -> Self {
            _mm512_zextsi128_si512(x)
        }
        #[inline(always)]
        unsafe fn counters(first: u32) -> Self {
            let c = |j: u32| first.wrapping_add(j) as i32;
            _mm512_set_epi32(0, 0, 0, c(3), 0, 0, 0, c(2), 0, 0, 0, c(1), 0, 0, 0, c(0))
        }
        #[inline(always)]
        unsafe fn xor(a: Self, b: Self) -> Self {
            _mm512_xor_si512(a, b)
        }
        #[inline(always)]
        unsafe fn add32(a: Self, b: Self) -> Self {
            _mm512_add_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn shuffle_bytes(a: Self, mask: Self) -> Self {
            _mm512_shuffle_epi8(a, mask)
        }
        #[inline(always)]
        unsafe fn swap_halves(a: Self) -> Self {
            _mm512_shuffle_epi32::<0x4e>(a)
        }
        #[inline(always)]
        unsafe fn aesenc(a: Self, k: Self) -> Self {
            _mm512_aesenc_epi128(a, k)
        }
        #[inline(always)]
        unsafe fn aesenclast(a: Self, k: Self) -> Self {
            _mm512_aesenclast_epi128(a, k)
        }
        #[inline(always)]
        unsafe fn clmul<const IMM: i32>(a: Self, b: Self) -> Self {
            _mm512_clmulepi64_epi128::<IMM>(a, b)
        }
        #[inline(always)]
        unsafe fn fold(a: Self) -> __m128i {
            let y = _mm256_xor_si256(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a));
            <__m256i as Lanes>::fold(y)
        }
    }

    /// Byte-reversal mask for `pshufb`: lane byte `i` takes byte `15 - i`.
    #[inline(always)]
    unsafe fn bswap_mask() -> __m128i {
        _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    }

    /// Per-call constants, broadcast to every lane once per seal/open.
    struct Ctx<V> {
        rk: [V; MAX_ROUND_KEYS],
        bswap: V,
        poly: V,
    }

    impl<V: Lanes> Ctx<V> {
        #[inline(always)]
        unsafe fn new(key: &Key) -> Self {
            let mut rk = [V::zero(); MAX_ROUND_KEYS];
            for (dst, src) in rk.iter_mut().zip(key.rk.iter()) {
                *dst = V::splat(*src);
            }
            Ctx {
                rk,
                bswap: V::splat(bswap_mask()),
                poly: V::splat(_mm_set_epi64x(GHASH_POLY_HI as i64, 0)),
            }
        }
    }

    /// AES-encrypts `N` registers of blocks with `NR` rounds, all registers round by round.
    #[inline(always)]
    unsafe fn encrypt<V: Lanes, const NR: usize, const N: usize>(
        rk: &[V; MAX_ROUND_KEYS],
        mut b: [V; N],
    ) -> [V; N] {
        for x in b.iter_mut() {
            *x = V::xor(*x, rk[0]);
        }
        for k in &rk[1..NR] {
            for x in b.iter_mut() {
                *x = V::aesenc(*x, *k);
            }
        }
        for x in b.iter_mut() {
            *x = V::aesenclast(*x, rk[NR]);
        }
        b
    }

    /// The next `N` counter registers (in block byte order), advancing `ctr` past them.
    #[inline(always)]
    unsafe fn counter_blocks<V: Lanes, const N: usize>(c: &Ctx<V>, ctr: &mut V, inc: V) -> [V; N] {
        let mut b = [V::zero(); N];
        for x in b.iter_mut() {
            *x = V::shuffle_bytes(*ctr, c.bswap);
            *ctr = V::add32(*ctr, inc);
        }
        b
    }

    /// An unreduced 256-bit carry-less product per lane, split as `hi·y^128 + mi·y^64 + lo`.
    #[derive(Clone, Copy)]
    struct Product<V> {
        lo: V,
        mi: V,
        hi: V,
    }

    impl<V: Lanes> Product<V> {
        /// Schoolbook `a·b` per lane.
        #[inline(always)]
        unsafe fn new(a: V, b: V) -> Self {
            Product {
                lo: V::clmul::<0x00>(a, b),
                mi: V::xor(V::clmul::<0x01>(a, b), V::clmul::<0x10>(a, b)),
                hi: V::clmul::<0x11>(a, b),
            }
        }

        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Product {
                lo: V::xor(self.lo, o.lo),
                mi: V::xor(self.mi, o.mi),
                hi: V::xor(self.hi, o.hi),
            }
        }

        /// Montgomery reduction per lane (`· y^-128 mod G'`), then the XOR of all lanes.
        ///
        /// Adding `lo_low·G'` clears the low 64 bits: `lo_low·y^128` and `lo_low·(y^127 + y^126 +
        /// y^121) = y^64·clmul(lo_low, 0xc2 << 56)` land in `mi`, the rest of `lo` shifts down
        /// into `mi` too (`swap_halves`). The same step on the new `mi`'s low qword moves
        /// everything into `hi`, which is then the product divided by `y^128`.
        #[inline(always)]
        unsafe fn reduce(self, poly: V) -> __m128i {
            let t = V::clmul::<0x01>(poly, self.lo);
            let mi = V::xor(V::xor(self.mi, V::swap_halves(self.lo)), t);
            let t = V::clmul::<0x01>(poly, mi);
            V::fold(V::xor(V::xor(self.hi, V::swap_halves(mi)), t))
        }
    }

    /// The powers for one main-loop iteration: register `i` holds `H^(n - i·BLOCKS) ..` for
    /// `n = N·BLOCKS`, lane by lane.
    #[inline(always)]
    unsafe fn iteration_powers<V: Lanes, const N: usize>(key: &Key) -> [V; N] {
        let first = MAX_POWERS - N * V::BLOCKS;
        let mut h = [V::zero(); N];
        for (i, x) in h.iter_mut().enumerate() {
            *x = V::load(key.powers.as_ptr().add(first + i * V::BLOCKS).cast());
        }
        h
    }

    /// GHASH of one full iteration's data (`blocks` as stored in memory) into `acc`.
    #[inline(always)]
    unsafe fn ghash_iteration<V: Lanes, const N: usize>(
        c: &Ctx<V>,
        acc: __m128i,
        blocks: &[V; N],
        h: &[V; N],
    ) -> __m128i {
        // Products that do not depend on `acc` first, so they overlap the previous reduction.
        let mut p = Product::new(V::shuffle_bytes(blocks[N - 1], c.bswap), h[N - 1]);
        for i in (1..N - 1).rev() {
            p = p.add(Product::new(V::shuffle_bytes(blocks[i], c.bswap), h[i]));
        }
        let first = V::xor(V::shuffle_bytes(blocks[0], c.bswap), V::lane0(acc));
        p.add(Product::new(first, h[0])).reduce(c.poly)
    }

    /// GHASH of the first `len` bytes of `buf` (zero-padded to whole blocks; `1 <= len <` one
    /// iteration) into `acc`, so that the last block is multiplied by `H^1`.
    #[inline(always)]
    unsafe fn ghash_padded<V: Lanes>(
        c: &Ctx<V>,
        key: &Key,
        acc: __m128i,
        buf: &[u8; MAX_CHUNK],
        len: usize,
    ) -> __m128i {
        let blocks = len.div_ceil(BLOCK);
        let vecs = blocks.div_ceil(V::BLOCKS);
        // Register `v` lane `j` is block `v·BLOCKS + j`, which needs `H^(blocks - v·BLOCKS - j)`
        // at index `H1 + 1 - blocks + v·BLOCKS + j`. Lanes past the last block are zero padding
        // and read the table's zero entries (at most `MAX_LANES - 1` past `H1`).
        let first = H1 + 1 - blocks;
        let pw = key.powers.as_ptr();
        let d = V::xor(V::shuffle_bytes(V::load(buf.as_ptr()), c.bswap), V::lane0(acc));
        let mut p = Product::new(d, V::load(pw.add(first).cast()));
        for v in 1..vecs {
            let d = V::shuffle_bytes(V::load(buf.as_ptr().add(v * V::BLOCKS * BLOCK)), c.bswap);
            p = p.add(Product::new(d, V::load(pw.add(first + v * V::BLOCKS).cast())));
        }
        p.reduce(c.poly)
    }

    /// GHASH of the AAD, starting from zero.
    #[inline(always)]
    unsafe fn ghash_aad<V: Lanes, const N: usize>(c: &Ctx<V>, key: &Key, aad: &[u8]) -> __m128i {
        let mut acc = _mm_setzero_si128();
        let mut chunks = aad.chunks_exact(N * V::BLOCKS * BLOCK);
        if chunks.len() > 0 {
            let h = iteration_powers::<V, N>(key);
            for chunk in &mut chunks {
                let mut d = [V::zero(); N];
                for (i, x) in d.iter_mut().enumerate() {
                    *x = V::load(chunk.as_ptr().add(i * V::BLOCKS * BLOCK));
                }
                acc = ghash_iteration(c, acc, &d, &h);
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; MAX_CHUNK];
            buf[..rest.len()].copy_from_slice(rest);
            acc = ghash_padded(c, key, acc, &buf, rest.len());
        }
        acc
    }

    /// The byte-reversed counter block `nonce || 0` (the lanes' base) and `AES_K(J0)`.
    #[inline(always)]
    unsafe fn nonce_setup<const NR: usize>(key: &Key, nonce: &[u8; 12]) -> (__m128i, __m128i) {
        let mut block = [0u8; BLOCK];
        block[..12].copy_from_slice(nonce);
        let base = _mm_shuffle_epi8(_mm_loadu_si128(block.as_ptr().cast()), bswap_mask());
        block[BLOCK - 1] = 1;
        let [tag_mask] = encrypt::<__m128i, NR, 1>(&key.rk, [_mm_loadu_si128(block.as_ptr().cast())]);
        (base, tag_mask)
    }

    /// Hashes the lengths block and returns the tag.
    #[inline(always)]
    unsafe fn finish(key: &Key, acc: __m128i, aad_len: usize, len: usize, tag_mask: __m128i) -> [u8; 16] {
        let bits = |n: usize| (n as u64).wrapping_mul(8) as i64;
        // rev(be64(aad bits) || be64(data bits)) has the AAD length in the high qword.
        let lens = _mm_set_epi64x(bits(aad_len), bits(len));
        let poly = _mm_set_epi64x(GHASH_POLY_HI as i64, 0);
        let acc = Product::<__m128i>::new(_mm_xor_si128(acc, lens), key.powers[H1]).reduce(poly);
        let tag = _mm_xor_si128(_mm_shuffle_epi8(acc, bswap_mask()), tag_mask);
        let mut out = [0u8; 16];
        _mm_storeu_si128(out.as_mut_ptr().cast(), tag);
        out
    }

    /// XORs `ks` into the `N` registers at `p` (in place) and returns the result.
    #[inline(always)]
    unsafe fn xor_in_place<V: Lanes, const N: usize>(p: *mut u8, ks: &[V; N]) -> [V; N] {
        let mut out = [V::zero(); N];
        for (i, (o, k)) in out.iter_mut().zip(ks.iter()).enumerate() {
            let q = p.add(i * V::BLOCKS * BLOCK);
            *o = V::xor(V::load(q), *k);
            V::store(q, *o);
        }
        out
    }

    /// Encrypts `data` in place, returns the tag.
    #[inline(always)]
    unsafe fn seal<V: Lanes, const NR: usize, const N: usize>(
        key: &Key,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; 16] {
        // The power table and the tail buffer are sized for `ITER_BLOCKS` blocks per iteration.
        const { assert!(N * V::BLOCKS <= ITER_BLOCKS) };
        let c = Ctx::<V>::new(key);
        let (base, tag_mask) = nonce_setup::<NR>(key, nonce);
        let mut acc = ghash_aad::<V, N>(&c, key, aad);
        let chunk = N * V::BLOCKS * BLOCK;
        let len = data.len();
        let full = len - len % chunk;
        let inc = V::splat(_mm_set_epi32(0, 0, 0, V::BLOCKS as i32));
        let mut ctr = V::add32(V::splat(base), V::counters(2));
        if full > 0 {
            let p = data.as_mut_ptr();
            let h = iteration_powers::<V, N>(key);
            let ks = encrypt::<V, NR, N>(&c.rk, counter_blocks(&c, &mut ctr, inc));
            let mut prev = xor_in_place(p, &ks);
            let mut off = chunk;
            while off < full {
                // This iteration's keystream and the previous iteration's GHASH are independent.
                let ks = encrypt::<V, NR, N>(&c.rk, counter_blocks(&c, &mut ctr, inc));
                acc = ghash_iteration(&c, acc, &prev, &h);
                prev = xor_in_place(p.add(off), &ks);
                off += chunk;
            }
            acc = ghash_iteration(&c, acc, &prev, &h);
        }
        let tail = &mut data[full..];
        if !tail.is_empty() {
            let mut buf = [0u8; MAX_CHUNK];
            buf[..tail.len()].copy_from_slice(tail);
            let ks = encrypt::<V, NR, N>(&c.rk, counter_blocks(&c, &mut ctr, inc));
            xor_in_place(buf.as_mut_ptr(), &ks);
            buf[tail.len()..].fill(0);
            tail.copy_from_slice(&buf[..tail.len()]);
            acc = ghash_padded(&c, key, acc, &buf, tail.len());
            wipe(&mut buf);
        }
        finish(key, acc, aad.len(), len, tag_mask)
    }

    /// Zeroes `buf` in a way the optimiser cannot drop as a dead store.
    fn wipe(buf: &mut [u8]) {
        for b in buf.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { core::ptr::write_volatile(b, 0) };
        }
    }

    /// Decrypts `data` in place, returns the tag the ciphertext should carry.
    #[inline(always)]
    unsafe fn open<V: Lanes, const NR: usize, const N: usize>(
        key: &Key,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; 16] {
        // The power table and the tail buffer are sized for `ITER_BLOCKS` blocks per iteration.
        const { assert!(N * V::BLOCKS <= ITER_BLOCKS) };
        let c = Ctx::<V>::new(key);
        let (base, tag_mask) = nonce_setup::<NR>(key, nonce);
        let mut acc = ghash_aad::<V, N>(&c, key, aad);
        let vec_bytes = V::BLOCKS * BLOCK;
        let chunk = N * vec_bytes;
        let len = data.len();
        let full = len - len % chunk;
        let inc = V::splat(_mm_set_epi32(0, 0, 0, V::BLOCKS as i32));
        let mut ctr = V::add32(V::splat(base), V::counters(2));
        if full > 0 {
            let p = data.as_mut_ptr();
            let h = iteration_powers::<V, N>(key);
            let mut off = 0;
            while off < full {
                let q = p.add(off);
                let mut d = [V::zero(); N];
                for (i, x) in d.iter_mut().enumerate() {
                    *x = V::load(q.add(i * vec_bytes));
                }
                let ks = encrypt::<V, NR, N>(&c.rk, counter_blocks(&c, &mut ctr, inc));
                acc = ghash_iteration(&c, acc, &d, &h);
                for (i, (x, k)) in d.iter().zip(ks.iter()).enumerate() {
                    V::store(q.add(i * vec_bytes), V::xor(*x, *k));
                }
                off += chunk;
            }
        }
        let tail = &mut data[full..];
        if !tail.is_empty() {
            let mut buf = [0u8; MAX_CHUNK];
            buf[..tail.len()].copy_from_slice(tail);
            acc = ghash_padded(&c, key, acc, &buf, tail.len());
            let ks = encrypt::<V, NR, N>(&c.rk, counter_blocks(&c, &mut ctr, inc));
            xor_in_place(buf.as_mut_ptr(), &ks);
            tail.copy_from_slice(&buf[..tail.len()]);
            // Plaintext not yet authenticated, and unused keystream: not left on the stack.
            wipe(&mut buf);
        }
        finish(key, acc, aad.len(), len, tag_mask)
    }

    // ---------------------------------------------------------------------------------------
    // Entry points: the generic bodies compiled for each register width and key size.

    macro_rules! entry_points {
        ($features:literal, $lanes:ty, $n:expr, $($seal:ident, $open:ident, $nr:ident;)*) => {$(
            /// # Safety
            /// The CPU must support every feature this function enables.
            #[target_feature(enable = $features)]
            unsafe fn $seal(key: &Key, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
                seal::<$lanes, $nr, $n>(key, nonce, aad, data)
            }

            /// # Safety
            /// The CPU must support every feature this function enables.
            #[target_feature(enable = $features)]
            unsafe fn $open(key: &Key, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
                open::<$lanes, $nr, $n>(key, nonce, aad, data)
            }
        )*};
    }

    entry_points!(
        "aes,pclmulqdq,avx2,vaes,vpclmulqdq",
        __m256i,
        AVX2_VECS,
        seal_avx2_aes128, open_avx2_aes128, NR128;
        seal_avx2_aes256, open_avx2_aes256, NR256;
    );
    entry_points!(
        "aes,pclmulqdq,avx2,vaes,vpclmulqdq,avx512f,avx512bw,avx512vl",
        __m512i,
        AVX512_VECS,
        seal_avx512_aes128, open_avx512_aes128, NR128;
        seal_avx512_aes256, open_avx512_aes256, NR256;
    );
}

#[cfg(all(test, ri_vector_aes))]
mod tests {
    use super::x86::Width;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use ring::aead;
    use std::time::{Duration, Instant};

    fn hex(s: &str) -> Vec<u8> {
        assert_eq!(s.len() % 2, 0, "odd-length hex");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Every code path this CPU runs, for `key`; empty (with a note) when it runs none.
    fn paths(key: &[u8]) -> Vec<(Width, AesGcm)> {
        let all: Vec<_> = [Width::Avx2, Width::Avx512]
            .into_iter()
            .filter_map(|w| AesGcm::with_width(key, w).map(|g| (w, g)))
            .collect();
        if all.is_empty() {
            eprintln!("note: this CPU lacks VAES/VPCLMULQDQ/AVX2; the gcm fast path is not tested here");
        }
        all
    }

    struct Kat {
        key: &'static str,
        nonce: &'static str,
        aad: &'static str,
        pt: &'static str,
        ct: &'static str,
        tag: &'static str,
    }

    const TC3_PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                          1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";

    /// McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 1-4 (AES-128) and
    /// 13-16 (AES-256), the ones with 96-bit IVs. Test cases 4 and 16 have AAD and a partial
    /// final block (60 bytes).
    const KATS: &[Kat] = &[
        Kat {
            key: "00000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            pt: "",
            ct: "",
            tag: "58e2fccefa7e3061367f1d57a4e7455a",
        },
        Kat {
            key: "00000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            pt: "00000000000000000000000000000000",
            ct: "0388dace60b6a392f328c2b971b2fe78",
            tag: "ab6e47d42cec13bdf53a67b21257bddf",
        },
        Kat {
            key: "feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "",
            pt: TC3_PT,
            ct: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                 21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
            tag: "4d5c2af327cd64a62cf35abd2ba6fab4",
        },
        Kat {
            key: "feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                 1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ct: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                 21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            tag: "5bc94fbc3221a5db94fae95ae7121a47",
        },
        Kat {
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            pt: "",
            ct: "",
            tag: "530f8afbc74536b9a963b4f1c4cb738b",
        },
        Kat {
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            nonce: "000000000000000000000000",
            aad: "",
            pt: "00000000000000000000000000000000",
            ct: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        Kat {
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "",
            pt: TC3_PT,
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        },
        Kat {
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            nonce: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                 1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    #[test]
    fn gcm_known_answers() {
        for (n, kat) in KATS.iter().enumerate() {
            let key = hex(kat.key);
            let nonce: [u8; 12] = hex(kat.nonce).try_into().unwrap();
            let (aad, pt, ct) = (hex(kat.aad), hex(kat.pt), hex(kat.ct));
            let tag: [u8; 16] = hex(kat.tag).try_into().unwrap();
            for (width, g) in paths(&key) {
                let mut buf = pt.clone();
                let got = g.seal_in_place(&nonce, &aad, &mut buf);
                assert_eq!(buf, ct, "vector {n} ({width:?}): ciphertext");
                assert_eq!(got, tag, "vector {n} ({width:?}): tag");
                g.open_in_place(&nonce, &aad, &mut buf, &tag)
                    .unwrap_or_else(|()| panic!("vector {n} ({width:?}): open failed"));
                assert_eq!(buf, pt, "vector {n} ({width:?}): decryption");
                let mut bad = tag;
                bad[15] ^= 1;
                let mut buf = ct.clone();
                assert!(
                    g.open_in_place(&nonce, &aad, &mut buf, &bad).is_err(),
                    "vector {n}: bad tag"
                );
                assert!(
                    buf.iter().all(|&b| b == 0),
                    "vector {n}: plaintext of a bad tag wiped"
                );
            }
        }
    }

    #[test]
    fn gcm_new_is_some_on_cpus_with_vaes() {
        if is_x86_feature_detected!("vaes") {
            assert!(
                AesGcm::new(&[7; 16]).is_some(),
                "CPU has VAES but AesGcm::new returned None"
            );
            assert!(
                AesGcm::new(&[7; 32]).is_some(),
                "CPU has VAES but AesGcm::new(AES-256) returned None"
            );
        } else {
            eprintln!("note: this CPU lacks VAES; AesGcm::new returns None here");
            assert!(AesGcm::new(&[7; 16]).is_none());
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("vaes") {
            assert!(Width::Avx512.available());
        }
    }

    #[test]
    fn gcm_rejects_bad_key_lengths() {
        for len in [0, 1, 15, 17, 24, 31, 33, 64] {
            assert!(AesGcm::new(&vec![1; len]).is_none(), "key length {len} accepted");
        }
    }

    #[test]
    fn gcm_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<AesGcm>();
    }

    /// Seals with ring and with every path of ours, compares, opens ring's output with ours,
    /// and checks that single-bit changes to ciphertext, tag or AAD are rejected.
    fn cross_check(rng: &mut StdRng, alg: &'static aead::Algorithm, len: usize) {
        let mut key = vec![0u8; alg.key_len()];
        rng.fill_bytes(&mut key);
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        // AAD across the 256-byte-block loop of `ghash_aad` and its tail shapes.
        let mut aad = vec![0u8; rng.gen_range(0..=600)];
        rng.fill_bytes(&mut aad);
        let mut pt = vec![0u8; len];
        rng.fill_bytes(&mut pt);

        let ring_key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, &key).unwrap());
        let mut ring_ct = pt.clone();
        let ring_tag = ring_key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&aad),
                &mut ring_ct,
            )
            .unwrap();
        let ring_tag: [u8; 16] = ring_tag.as_ref().try_into().unwrap();
        let what = |w: Width| format!("{w:?} key {} bytes, len {len}, aad {}", key.len(), aad.len());

        for (w, g) in paths(&key) {
            // Seal at an arbitrary alignment.
            let off = rng.gen_range(0..64);
            let mut buf = vec![0u8; off + len];
            buf[off..].copy_from_slice(&pt);
            let tag = g.seal_in_place(&nonce, &aad, &mut buf[off..]);
            assert!(
                buf[off..] == ring_ct[..],
                "ciphertext differs from ring: {}",
                what(w)
            );
            assert_eq!(tag, ring_tag, "tag differs from ring: {}", what(w));

            let mut buf = ring_ct.clone();
            assert!(
                g.open_in_place(&nonce, &aad, &mut buf, &ring_tag).is_ok(),
                "open failed: {}",
                what(w)
            );
            assert!(buf == pt, "open gave the wrong plaintext: {}", what(w));

            // Single-bit changes: every bit of short inputs, a sample (including the first and
            // the last byte) of long ones.
            let bits = |n: usize, rng: &mut StdRng| -> Vec<usize> {
                if n <= 32 * 8 {
                    (0..n).collect()
                } else {
                    let mut v: Vec<usize> = (0..6).map(|_| rng.gen_range(0..n)).collect();
                    v.extend([0, 7, n - 8, n - 1]);
                    v
                }
            };
            for bit in bits(len * 8, rng) {
                let mut ct = ring_ct.clone();
                ct[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    g.open_in_place(&nonce, &aad, &mut ct, &ring_tag).is_err(),
                    "ct bit {bit}: {}",
                    what(w)
                );
            }
            for bit in bits(128, rng) {
                let mut tag = ring_tag;
                tag[bit / 8] ^= 1 << (bit % 8);
                let mut ct = ring_ct.clone();
                assert!(
                    g.open_in_place(&nonce, &aad, &mut ct, &tag).is_err(),
                    "tag bit {bit}: {}",
                    what(w)
                );
                assert!(
                    ct.iter().all(|&b| b == 0),
                    "unauthenticated plaintext wiped: {}",
                    what(w)
                );
            }
            for bit in bits(aad.len() * 8, rng) {
                let mut bad_aad = aad.clone();
                bad_aad[bit / 8] ^= 1 << (bit % 8);
                let mut ct = ring_ct.clone();
                assert!(
                    g.open_in_place(&nonce, &bad_aad, &mut ct, &ring_tag).is_err(),
                    "aad bit {bit}: {}",
                    what(w)
                );
            }
        }
    }

    /// Every length 0..=600 (all tail shapes of both widths, several full iterations), TLS record
    /// sizes, and random lengths up to 17000.
    fn cross_check_lengths(alg: &'static aead::Algorithm, seed: u64) {
        if paths(&vec![0; alg.key_len()]).is_empty() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(seed);
        for len in 0..=600 {
            cross_check(&mut rng, alg, len);
        }
        for len in [16384, 16385, 16384 + 16, 16384 + 17, 16640] {
            cross_check(&mut rng, alg, len);
        }
        for _ in 0..64 {
            let len = rng.gen_range(0..=17000);
            cross_check(&mut rng, alg, len);
        }
    }

    #[test]
    fn gcm_matches_ring_aes128() {
        cross_check_lengths(&aead::AES_128_GCM, 0x6763_6d31_3238);
    }

    #[test]
    fn gcm_matches_ring_aes256() {
        cross_check_lengths(&aead::AES_256_GCM, 0x6763_6d32_3536);
    }

    /// Runs `f` repeatedly for about a second; returns GB/s for `bytes` per call.
    fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
        for _ in 0..200 {
            f(); // warm-up: caches, clocks
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(1) {
            for _ in 0..64 {
                f();
            }
            n += 64;
        }
        (n as f64 * bytes as f64) / start.elapsed().as_secs_f64() / 1e9
    }

    #[test]
    #[ignore = "benchmark: cargo test --release -p tunnel-core gcm_throughput -- --ignored --nocapture"]
    fn gcm_throughput_vs_ring() {
        const LEN: usize = 16384;
        let nonce = [3u8; 12];
        let aad = [0x17, 0x03, 0x03, 0x40, 0x11]; // a TLS 1.3 record header
        for (alg, key) in [
            (&aead::AES_128_GCM, &[9u8; 16][..]),
            (&aead::AES_256_GCM, &[9u8; 32][..]),
        ] {
            let bits = key.len() * 8;
            let ring_key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, key).unwrap());
            let pt = vec![0x5au8; LEN];
            let mut buf = pt.clone();
            let mut sealed = pt.clone();
            let tag = ring_key
                .seal_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    &mut sealed,
                )
                .unwrap();
            sealed.extend_from_slice(tag.as_ref());
            let tag: [u8; 16] = tag.as_ref().try_into().unwrap();
            let mut work = sealed.clone();

            // Opening needs fresh ciphertext each time: every open (ring's and ours) is timed
            // together with a 16 KiB copy; the copy alone is measured too.
            let copy = rate(LEN, || {
                work[..LEN].copy_from_slice(&sealed[..LEN]);
                std::hint::black_box(&mut work);
            });
            let ring_seal = rate(LEN, || {
                let t = ring_key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        &mut buf,
                    )
                    .unwrap();
                let _ = std::hint::black_box(t);
            });
            let ring_open = rate(LEN, || {
                work.copy_from_slice(&sealed);
                let r = ring_key.open_in_place(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(aad),
                    &mut work,
                );
                assert!(r.is_ok());
            });
            println!("AES-{bits}-GCM, {LEN}-byte records, GB/s (1e9 bytes/s of plaintext, one core):");
            println!("  16 KiB memcpy alone          {copy:6.2}");
            println!("  ring 0.16   seal {ring_seal:6.2}   open+copy {ring_open:6.2}");
            for (w, g) in paths(key) {
                let seal = rate(LEN, || {
                    std::hint::black_box(g.seal_in_place(&nonce, &aad, &mut buf));
                });
                let open = rate(LEN, || {
                    work[..LEN].copy_from_slice(&sealed[..LEN]);
                    assert!(g.open_in_place(&nonce, &aad, &mut work[..LEN], &tag).is_ok());
                });
                println!(
                    "  {:<11} seal {seal:6.2}   open+copy {open:6.2}   ({:.2}x / {:.2}x ring)",
                    format!("{w:?}"),
                    seal / ring_seal,
                    open / ring_open
                );
            }
        }
    }
}
