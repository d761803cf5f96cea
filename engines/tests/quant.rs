//! The quantized kernels (`sotad_engines::quant`): every SIMD path this CPU has against the
//! scalar reference, the reference against plain f64 arithmetic on dequantized values,
//! threaded matvec/matmul against row-wise dot products, the activation quantizers' rounding
//! and error bounds, and one real model file.
//!
//! Tolerances (all deterministic: inputs come from a seeded xorshift generator):
//!
//! - SIMD vs scalar, k-quants: bit-identical (both reduce each super-block to one exact
//!   integer and fold it in the same order).
//! - SIMD vs scalar, 32-element formats: bit-identical when every partial sum is an integer
//!   below 2^24 (unit scales: checks the integer unpacking exactly); with random scales within
//!   `1e-5 · B`, where `B` bounds the magnitude of every term (`Σ|w_i·x_i|` plus the
//!   minimum terms), because the SIMD paths add per-lane partial sums in a different order.
//! - Dot product vs f64 reference on dequantized values: `1e-4 · Σ|w_i·x_i|`, plus for
//!   Q4_1/Q5_1 the f16 rounding of Q8_1's stored block sum (`Σ_b |m_b|·|s_b − Σ x_i|`).
//! - matvec / matmul vs row-wise `vec_dot_with`: bit-identical for 1, 2 and 3 threads.
//! - x86: the AVX-512 VNNI kernels (row tiles) vs the AVX2 ones: bit-identical on every
//!   product shape.

use std::path::PathBuf;

use half::f16;
use sotad_engines::Error;
use sotad_engines::gguf::{GgmlType, GgufFile};
use sotad_engines::quant::{
    self, Kernel, QMatrix, QuantErrorKind, WEIGHT_TYPES, activation_type, dequantize_row,
    quantize_row_q8_0, quantize_row_q8_1, quantize_row_q8_k, vec_dot, vec_dot_with,
};

// ----- deterministic random data -----------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi].
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i32
    }

    /// A random sign times a log-uniform magnitude in [lo, hi].
    fn scale(&mut self, lo: f32, hi: f32) -> f32 {
        let mag = lo * (hi / lo).powf(self.unit());
        if self.next_u64() & 1 == 0 { mag } else { -mag }
    }

    /// Normal-ish (sum of uniforms), times `s`.
    fn gauss(&mut self, s: f32) -> f32 {
        (0..4).map(|_| self.unit() - 0.5).sum::<f32>() * s
    }
}

fn block_bytes(ty: GgmlType) -> usize {
    ty.type_size() as usize
}

fn block_elems(ty: GgmlType) -> usize {
    ty.block_size() as usize
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

fn get_f16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Offsets of the f16 scale fields of a weight block.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        other => panic!("{other}"),
    }
}

/// `nb` random weight blocks: random quant bytes (every bit pattern is valid), f16 scales
/// from `scale` (or exactly 1.0 if `unit`).
fn random_weights(ty: GgmlType, nb: usize, rng: &mut Rng, unit: bool) -> Vec<u8> {
    let bb = block_bytes(ty);
    let mut w: Vec<u8> = (0..nb * bb).map(|_| rng.byte()).collect();
    for blk in w.chunks_exact_mut(bb) {
        for &at in scale_fields(ty) {
            let v = if unit { 1.0 } else { rng.scale(1e-3, 1e-1) };
            put_f16(blk, at, v);
        }
    }
    w
}

/// `nb` random activation blocks of `act` with quants in `-q..=q` and consistent sums
/// (Q8_1's `s`, Q8_K's `bsums`); scale 1.0 if `unit`.
fn random_activations(act: GgmlType, nb: usize, rng: &mut Rng, q: i32, unit: bool) -> Vec<u8> {
    let bb = block_bytes(act);
    let mut x = vec![0u8; nb * bb];
    for blk in x.chunks_exact_mut(bb) {
        let d = if unit { 1.0 } else { rng.scale(1e-3, 1.0) };
        match act {
            GgmlType::Q8_0 => {
                put_f16(blk, 0, d);
                for b in &mut blk[2..] {
                    *b = rng.range(-q, q) as i8 as u8;
                }
            }
            GgmlType::Q8_1 => {
                let mut sum = 0;
                for b in &mut blk[4..] {
                    let v = rng.range(-q, q);
                    sum += v;
                    *b = v as i8 as u8;
                }
                put_f16(blk, 0, d);
                put_f16(blk, 2, get_f16(blk, 0) * sum as f32);
            }
            GgmlType::Q8_K => {
                blk[0..4].copy_from_slice(&d.to_le_bytes());
                for b in &mut blk[4..260] {
                    *b = rng.range(-q, q) as i8 as u8;
                }
                for g in 0..16 {
                    let s: i16 = blk[4 + 16 * g..4 + 16 * g + 16]
                        .iter()
                        .map(|&v| i16::from(v as i8))
                        .sum();
                    blk[260 + 2 * g..262 + 2 * g].copy_from_slice(&s.to_le_bytes());
                }
            }
            other => panic!("{other}"),
        }
    }
    x
}

fn dequant(ty: GgmlType, b: &[u8]) -> Vec<f32> {
    let n = b.len() / block_bytes(ty) * block_elems(ty);
    let mut out = vec![0.0; n];
    dequantize_row(ty, b, &mut out).unwrap();
    out
}

fn act_of(ty: GgmlType) -> GgmlType {
    activation_type(ty).unwrap()
}

fn simd_kernels() -> Vec<Kernel> {
    Kernel::available()
        .into_iter()
        .filter(|&k| k != Kernel::Scalar)
        .collect()
}

/// Magnitude bound `B` of every term the kernels add up: `Σ|w_i·x_i|`, plus for Q4_1/Q5_1
/// `Σ_b |m_b|·(Σ|x_i| + |s_b|)` (the SIMD paths add `d·Σq·x` and `m·s` separately).
fn magnitude(ty: GgmlType, w: &[u8], x: &[u8]) -> f64 {
    let (wd, xd) = (dequant(ty, w), dequant(act_of(ty), x));
    let mut b: f64 = wd
        .iter()
        .zip(&xd)
        .map(|(a, b)| f64::from((a * b).abs()))
        .sum();
    if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
        for (i, (wb, xb)) in w
            .chunks_exact(block_bytes(ty))
            .zip(x.chunks_exact(36))
            .enumerate()
        {
            let m = f64::from(get_f16(wb, 2).abs());
            let xs: f64 = xd[32 * i..32 * i + 32]
                .iter()
                .map(|v| f64::from(v.abs()))
                .sum();
            b += m * (xs + f64::from(get_f16(xb, 2).abs()));
        }
    }
    b
}

/// Row counts of blocks to test for a type: one block, an odd count, and a long row.
fn block_counts(ty: GgmlType) -> [usize; 3] {
    if block_elems(ty) == 256 {
        [1, 3, 16]
    } else {
        [1, 7, 128]
    }
}

// ----- (a) SIMD paths against the scalar reference ------------------------------------------

#[test]
fn simd_equals_scalar_exactly_on_integer_valued_data() {
    let kernels = simd_kernels();
    eprintln!("kernels on this CPU: {:?}", Kernel::available());
    let mut rng = Rng::new(1);
    for ty in WEIGHT_TYPES {
        for nb in block_counts(ty) {
            // Unit scales: every partial sum is an integer; 16 blocks of 32 (or any number of
            // super-blocks, reduced exactly) stay below 2^24, so any summation order is exact.
            let nb = if block_elems(ty) == 32 {
                nb.min(16)
            } else {
                nb
            };
            for _ in 0..20 {
                let w = random_weights(ty, nb, &mut rng, true);
                let x = random_activations(act_of(ty), nb, &mut rng, 127, true);
                let reference = vec_dot_with(Kernel::Scalar, ty, &w, &x);
                for &k in &kernels {
                    let got = vec_dot_with(k, ty, &w, &x);
                    assert_eq!(
                        got.to_bits(),
                        reference.to_bits(),
                        "{ty} {k} {nb} blocks: {got} vs scalar {reference}"
                    );
                }
            }
        }
    }
}

#[test]
fn simd_equals_scalar_with_random_scales() {
    let kernels = simd_kernels();
    let mut rng = Rng::new(2);
    let mut worst = 0.0f64;
    for ty in WEIGHT_TYPES {
        for nb in block_counts(ty) {
            for _ in 0..20 {
                let w = random_weights(ty, nb, &mut rng, false);
                let x = random_activations(act_of(ty), nb, &mut rng, 127, false);
                let reference = vec_dot_with(Kernel::Scalar, ty, &w, &x);
                for &k in &kernels {
                    let got = vec_dot_with(k, ty, &w, &x);
                    if block_elems(ty) == 256 {
                        assert_eq!(
                            got.to_bits(),
                            reference.to_bits(),
                            "{ty} {k} {nb} blocks: {got} vs scalar {reference}"
                        );
                    } else {
                        let bound = magnitude(ty, &w, &x);
                        let err = f64::from((got - reference).abs()) / bound;
                        worst = worst.max(err);
                        assert!(
                            err <= 1e-5,
                            "{ty} {k} {nb} blocks: {got} vs scalar {reference} (error {err:e} of B)"
                        );
                    }
                }
            }
        }
    }
    eprintln!("largest SIMD-vs-scalar difference, 32-element formats: {worst:e} of B");
}

#[test]
fn every_activation_quant_and_every_weight_bit_pattern_is_covered() {
    // Extreme activation values (±127) against weights whose quant bytes are all 0x00 or all
    // 0xff (the largest unpacked values), on every path.
    let mut rng = Rng::new(3);
    for ty in WEIGHT_TYPES {
        for fill in [0x00u8, 0xff, 0x55, 0xaa] {
            let nb = 2;
            let mut w = vec![fill; nb * block_bytes(ty)];
            for blk in w.chunks_exact_mut(block_bytes(ty)) {
                for &at in scale_fields(ty) {
                    put_f16(blk, at, 1.0);
                }
            }
            for q in [127, -127] {
                let mut x = random_activations(act_of(ty), nb, &mut rng, 0, true);
                let (start, end) = match act_of(ty) {
                    GgmlType::Q8_0 => (2, 34),
                    GgmlType::Q8_1 => (4, 36),
                    _ => (4, 260),
                };
                for blk in x.chunks_exact_mut(block_bytes(act_of(ty))) {
                    blk[start..end].fill(q as i8 as u8);
                    // Re-derive the sums for the new quants.
                    match act_of(ty) {
                        GgmlType::Q8_1 => put_f16(blk, 2, (q * 32) as f32),
                        GgmlType::Q8_K => {
                            for g in 0..16 {
                                blk[260 + 2 * g..262 + 2 * g]
                                    .copy_from_slice(&((q * 16) as i16).to_le_bytes());
                            }
                        }
                        _ => {}
                    }
                }
                let reference = vec_dot_with(Kernel::Scalar, ty, &w, &x);
                let exact: f64 = dequant(ty, &w)
                    .iter()
                    .zip(dequant(act_of(ty), &x))
                    .map(|(a, b)| f64::from(*a) * f64::from(b))
                    .sum();
                assert!(
                    (f64::from(reference) - exact).abs() <= 1e-6 * exact.abs().max(1.0),
                    "{ty} fill {fill:#x} q {q}: scalar {reference} vs exact {exact}"
                );
                for k in simd_kernels() {
                    let got = vec_dot_with(k, ty, &w, &x);
                    assert_eq!(got, reference, "{ty} {k} fill {fill:#x} q {q}");
                }
            }
        }
    }
}

// ----- (b) the dot products against f64 arithmetic on dequantized values -------------------

#[test]
fn vec_dot_matches_dequantized_f64_dot() {
    let mut rng = Rng::new(4);
    for ty in WEIGHT_TYPES {
        let act = act_of(ty);
        for nb in block_counts(ty) {
            for round in 0..20 {
                let w = random_weights(ty, nb, &mut rng, false);
                // Half the rounds with raw random activations, half through the quantizer.
                let x = if round % 2 == 0 {
                    random_activations(act, nb, &mut rng, 127, false)
                } else {
                    let xf: Vec<f32> = (0..nb * block_elems(ty)).map(|_| rng.gauss(3.0)).collect();
                    quant::quantize_activation(act, &xf).unwrap()
                };
                let (wd, xd) = (dequant(ty, &w), dequant(act, &x));
                let exact: f64 = wd
                    .iter()
                    .zip(&xd)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let abs: f64 = wd
                    .iter()
                    .zip(&xd)
                    .map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs())
                    .sum();
                // Q8_1 stores s = d·Σq rounded to f16; the dequantized activations sum to
                // something slightly different, and the weight minimum multiplies that.
                let mut s_err = 0.0;
                if act == GgmlType::Q8_1 {
                    for (i, (wb, xb)) in w
                        .chunks_exact(block_bytes(ty))
                        .zip(x.chunks_exact(36))
                        .enumerate()
                    {
                        let sum: f64 = xd[32 * i..32 * i + 32].iter().map(|&v| f64::from(v)).sum();
                        s_err += f64::from(get_f16(wb, 2)).abs()
                            * (f64::from(get_f16(xb, 2)) - sum).abs();
                    }
                }
                for k in Kernel::available() {
                    let got = f64::from(vec_dot_with(k, ty, &w, &x));
                    assert!(
                        (got - exact).abs() <= 1e-4 * abs + s_err + 1e-30,
                        "{ty} {k} {nb} blocks round {round}: {got} vs exact {exact} (Σ|wx| {abs}, s error {s_err})"
                    );
                }
            }
        }
    }
}

#[test]
fn vec_dot_uses_the_best_kernel() {
    let mut rng = Rng::new(5);
    for ty in WEIGHT_TYPES {
        let w = random_weights(ty, 4, &mut rng, false);
        let x = random_activations(act_of(ty), 4, &mut rng, 127, false);
        assert_eq!(
            vec_dot(ty, &w, &x).to_bits(),
            vec_dot_with(Kernel::best(), ty, &w, &x).to_bits()
        );
    }
}

#[test]
fn dequantize_follows_the_block_definitions() {
    // Hand-built blocks with known values.
    let mut b = vec![0u8; 18];
    put_f16(&mut b, 0, 0.5);
    b[2] = 0x1f; // element 0: 0xf - 8 = 7, element 16: 1 - 8 = -7
    b[17] = 0x80; // element 15: 0 - 8 = -8, element 31: 8 - 8 = 0
    let v = dequant(GgmlType::Q4_0, &b);
    assert_eq!(
        (v[0], v[16], v[15], v[31], v[1]),
        (3.5, -3.5, -4.0, 0.0, -4.0)
    );

    let mut b = vec![0u8; 24];
    put_f16(&mut b, 0, 2.0);
    put_f16(&mut b, 2, -1.0);
    b[4..8].copy_from_slice(&(1u32 << 31 | 1).to_le_bytes()); // fifth bits of elements 0, 31
    b[8] = 0x21; // element 0: 1 | 16 = 17, element 16: 2
    b[23] = 0xf0; // element 15: 0, element 31: 15 | 16 = 31
    let v = dequant(GgmlType::Q5_1, &b);
    assert_eq!((v[0], v[16], v[15], v[31]), (33.0, 3.0, -1.0, 61.0));

    // Q4_K: scale 4 = low nibble of byte 8 | top bits of byte 0, min 4 likewise.
    let mut b = vec![0u8; 144];
    put_f16(&mut b, 0, 1.0);
    put_f16(&mut b, 2, 0.5);
    b[4] = 0b1100_0010; // scale 0 = 2, scale 4 high bits = 3
    b[8] = 0b0100_0011; // min 0 = 3, min 4 high bits = 1
    b[12] = 0x25; // scale 4 low = 5 → 53, min 4 low = 2 → 18
    b[16] = 0x97; // element 0 = 7 (sub-block 0), element 32 = 9 (sub-block 1)
    b[16 + 64] = 0x0a; // element 128 = 10 (sub-block 4)
    let v = dequant(GgmlType::Q4_K, &b);
    assert_eq!(v[0], 2.0 * 7.0 - 0.5 * 3.0);
    assert_eq!(v[32], 0.0 * 9.0 - 0.0);
    assert_eq!(v[128], 53.0 * 10.0 - 0.5 * 18.0);

    // Q6_K: element 64 + 5 = high nibble of ql[5] with bits 4-5 of qh[5]; scale group 4.
    let mut b = vec![0u8; 210];
    put_f16(&mut b, 208, 0.25);
    b[5] = 0xa0; // high nibble 10
    b[128 + 5] = 0b0010_0000; // bits 4-5 = 2 → value 10 | 32 = 42, minus 32 = 10
    b[192 + 4] = (-3i8) as u8;
    let v = dequant(GgmlType::Q6_K, &b);
    assert_eq!(v[69], 0.25 * -3.0 * 10.0);
    assert_eq!(v[5], 0.0); // low nibble 0, bits 0-1 = 0 → 0 − 32, scale group 0 is 0

    // Q8_K is f32-scaled.
    let mut b = vec![0u8; 292];
    b[0..4].copy_from_slice(&0.125f32.to_le_bytes());
    b[4 + 255] = (-100i8) as u8;
    assert_eq!(dequant(GgmlType::Q8_K, &b)[255], -12.5);
}

// ----- (c) matvec / matmul against row-wise dot products ------------------------------------

#[test]
fn matvec_and_matmul_equal_rowwise_vec_dot_for_1_2_3_threads() {
    let mut rng = Rng::new(6);
    let (rows, cols) = (197, 2048);
    for ty in WEIGHT_TYPES {
        let nb = cols / block_elems(ty);
        let w = random_weights(ty, rows * nb, &mut rng, false);
        let m = QMatrix::new(ty, rows, cols, &w).unwrap();
        let act_bytes = m.activation_row_bytes();
        for n_tok in [1usize, 3, 6] {
            let xs = random_activations(act_of(ty), n_tok * nb, &mut rng, 127, false);
            for k in Kernel::available() {
                let expected: Vec<f32> = xs
                    .chunks_exact(act_bytes)
                    .flat_map(|x| {
                        (0..rows)
                            .map(|r| vec_dot_with(k, ty, m.row(r), x))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                for threads in [1, 2, 3] {
                    let mut out = vec![f32::NAN; n_tok * rows];
                    if n_tok == 1 {
                        m.matvec_with(k, &xs, &mut out, threads).unwrap();
                    } else {
                        m.matmul_with(k, &xs, &mut out, threads).unwrap();
                    }
                    for (i, (a, b)) in out.iter().zip(&expected).enumerate() {
                        // On x86 the AVX2 Q4_K kernel folds complete four-row tiles per
                        // 64-element chunk (llama.cpp's repacked GEMM order): equal to the
                        // one-row product up to rounding there, bit for bit elsewhere.
                        // On aarch64 with i8mm the 32-element formats' tiles of four
                        // weight rows (SMMLA, one f32 lane per output) round differently
                        // from the one-row SDOT product; the k-quants do not.
                        let tiled = (cfg!(target_arch = "x86_64")
                            && ty == GgmlType::Q4_K
                            && k != Kernel::Scalar
                            && i / rows < n_tok / 4 * 4)
                            || (k == Kernel::NeonI8mm
                                && block_elems(ty) == 32
                                && n_tok > 1
                                && i % rows < rows / 4 * 4);
                        if tiled {
                            let x = &xs[i / rows * act_bytes..(i / rows + 1) * act_bytes];
                            let bound = magnitude(ty, m.row(i % rows), x);
                            assert!(
                                f64::from((a - b).abs()) <= 1e-5 * bound,
                                "{ty} {k} {n_tok} rows {threads} threads: output {i} = {a}, vec_dot {b}"
                            );
                        } else {
                            assert_eq!(
                                a.to_bits(),
                                b.to_bits(),
                                "{ty} {k} {n_tok} rows {threads} threads: output {i} = {a}, vec_dot {b}"
                            );
                        }
                    }
                }
            }
            // The free functions and the default kernel (which pick fewer threads for small
            // work, see MIN_BYTES_PER_THREAD) agree too.
            let mut a = vec![0.0; n_tok * rows];
            let mut b = vec![0.0; n_tok * rows];
            quant::matmul(ty, &w, rows, cols, &xs, &mut a, 2).unwrap();
            m.matmul_with(Kernel::best(), &xs, &mut b, 1).unwrap();
            assert_eq!(a, b);
            if n_tok == 1 {
                quant::matvec(ty, &w, rows, cols, &xs, &mut a, 3).unwrap();
                assert_eq!(a, b);
            }
        }
    }
}

/// The x86 kernels (AVX2 and, where the CPU has it, AVX-512 VNNI with its tiles of four
/// weight rows × four tokens) return the same bits for every product shape: token counts
/// that leave every tail of the 4-token tiles, row counts that leave every tail of the 4-row
/// tiles, every weight type. The VNNI kernels change only the integer arithmetic, so this
/// must hold bit for bit, including Q4_K's four-token (GEMM-order) tiles, which the test
/// above can only bound.
#[test]
fn x86_kernels_agree_bit_for_bit_on_every_tile_shape() {
    let x86: Vec<Kernel> = simd_kernels()
        .into_iter()
        .filter(|k| matches!(k, Kernel::Avx2 | Kernel::Avx512Vnni))
        .collect();
    eprintln!("x86 kernels on this CPU: {x86:?}");
    // One token: every kernel's matrix-vector product (VNNI: four rows at a time) equals its
    // one-row dot product, row by row, for every tail of the row tiles, with 1 and 2 threads.
    let mut rng = Rng::new(8);
    for &k in &x86 {
        for ty in WEIGHT_TYPES {
            let cols = 3 * 256;
            let nb = cols / block_elems(ty);
            for rows in 1..=9usize {
                let w = random_weights(ty, rows * nb, &mut rng, false);
                let m = QMatrix::new(ty, rows, cols, &w).unwrap();
                let x = random_activations(act_of(ty), nb, &mut rng, 127, false);
                for threads in [1, 2] {
                    let mut out = vec![f32::NAN; rows];
                    m.matvec_with(k, &x, &mut out, threads).unwrap();
                    for (r, a) in out.iter().enumerate() {
                        let b = vec_dot_with(k, ty, m.row(r), &x);
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{ty} {k}: {rows} rows, {threads} threads, row {r}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
    if x86.len() < 2 {
        return;
    }
    let mut rng = Rng::new(7);
    for ty in WEIGHT_TYPES {
        let cols = 4 * 256;
        let nb = cols / block_elems(ty);
        for rows in [1usize, 3, 4, 7, 9] {
            let w = random_weights(ty, rows * nb, &mut rng, false);
            let m = QMatrix::new(ty, rows, cols, &w).unwrap();
            for n_tok in 1..=9usize {
                let xs = random_activations(act_of(ty), n_tok * nb, &mut rng, 127, false);
                let mut reference = vec![f32::NAN; n_tok * rows];
                m.matmul_with(x86[0], &xs, &mut reference, 1).unwrap();
                for &k in &x86[1..] {
                    for threads in [1, 2] {
                        let mut out = vec![f32::NAN; n_tok * rows];
                        m.matmul_with(k, &xs, &mut out, threads).unwrap();
                        for (i, (a, b)) in out.iter().zip(&reference).enumerate() {
                            assert_eq!(
                                a.to_bits(),
                                b.to_bits(),
                                "{ty} {k} vs {}: {rows} rows, {n_tok} tokens, {threads} threads, \
                                 output {i}: {a} vs {b}",
                                x86[0]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The aarch64 i8mm kernel (SMMLA tiles of four weight rows × up to four tokens) on every
/// tile shape: rows that leave every tail of the row tiles, token counts 1..9 that leave
/// every tail of the token tiles, 1 to 3 threads. The k-quants must equal the SDOT kernel's
/// results bit for bit (the same exact integers folded the same way); the 32-element
/// formats must be within the usual bound of the scalar reference and must not depend on
/// the thread count.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_i8mm_tiles_agree_with_sdot_and_scalar_on_every_tile_shape() {
    if !Kernel::NeonI8mm.is_available() {
        eprintln!("skipped: this CPU has no i8mm (run under qemu -cpu max to test it)");
        return;
    }
    let mut rng = Rng::new(9);
    let mut worst = 0.0f64;
    for ty in WEIGHT_TYPES {
        let cols = 2 * 256;
        let nb = cols / block_elems(ty);
        for rows in [1usize, 2, 3, 4, 5, 7, 9] {
            let w = random_weights(ty, rows * nb, &mut rng, false);
            let m = QMatrix::new(ty, rows, cols, &w).unwrap();
            let act_bytes = m.activation_row_bytes();
            for n_tok in 1..=9usize {
                let xs = random_activations(act_of(ty), n_tok * nb, &mut rng, 127, false);
                let mut sdot = vec![f32::NAN; n_tok * rows];
                m.matmul_with(Kernel::NeonDotprod, &xs, &mut sdot, 1)
                    .unwrap();
                let mut first = vec![f32::NAN; n_tok * rows];
                m.matmul_with(Kernel::NeonI8mm, &xs, &mut first, 1).unwrap();
                for threads in [2, 3] {
                    let mut out = vec![f32::NAN; n_tok * rows];
                    m.matmul_with(Kernel::NeonI8mm, &xs, &mut out, threads)
                        .unwrap();
                    for (i, (a, b)) in out.iter().zip(&first).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{ty}: {rows} rows, {n_tok} tokens, {threads} vs 1 threads, \
                             output {i}: {a} vs {b}"
                        );
                    }
                }
                for (i, (a, b)) in first.iter().zip(&sdot).enumerate() {
                    if block_elems(ty) == 256 {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{ty}: {rows} rows, {n_tok} tokens, output {i}: i8mm {a} vs sdot {b}"
                        );
                    } else {
                        let (r, t) = (i % rows, i / rows);
                        let x = &xs[t * act_bytes..(t + 1) * act_bytes];
                        let reference = vec_dot_with(Kernel::Scalar, ty, m.row(r), x);
                        let err = f64::from((a - reference).abs()) / magnitude(ty, m.row(r), x);
                        worst = worst.max(err);
                        assert!(
                            err <= 1e-5,
                            "{ty}: {rows} rows, {n_tok} tokens, output {i}: i8mm {a} vs scalar \
                             {reference} (error {err:e} of B)"
                        );
                    }
                }
            }
        }
    }
    eprintln!("largest i8mm-vs-scalar difference, 32-element formats: {worst:e} of B");
}

#[test]
fn qmatrix_validates_its_inputs() {
    let w = vec![0u8; 4 * 20];
    let err = QMatrix::new(GgmlType::Q4_1, 4, 32, &w[..79]).unwrap_err();
    assert!(
        err.to_string()
            .contains("Q4_1 matrix of 4 x 32 needs 80 bytes or elements, found 79"),
        "{err}"
    );
    let kind = |e: Error| match e {
        Error::Quant(q) => q.kind,
        other => panic!("{other}"),
    };
    assert!(matches!(
        kind(QMatrix::new(GgmlType::Q4_1, 4, 48, &w).unwrap_err()),
        QuantErrorKind::PartialBlock {
            cols: 48,
            block_size: 32,
            ..
        }
    ));
    assert!(matches!(
        kind(QMatrix::new(GgmlType::F32, 4, 32, &w).unwrap_err()),
        QuantErrorKind::UnsupportedType {
            ty: GgmlType::F32,
            ..
        }
    ));
    assert!(matches!(
        kind(QMatrix::new(GgmlType::Q4_1, 4, 0, &w).unwrap_err()),
        QuantErrorKind::EmptyRows { .. }
    ));
    assert!(matches!(
        kind(QMatrix::new(GgmlType::Q4_K, usize::MAX, 256, &w).unwrap_err()),
        QuantErrorKind::TooLarge { .. }
    ));

    let m = QMatrix::new(GgmlType::Q4_1, 4, 32, &w).unwrap();
    assert_eq!(
        (m.activation_type(), m.activation_row_bytes()),
        (GgmlType::Q8_1, 36)
    );
    let mut out = vec![0.0; 4];
    assert!(matches!(
        kind(m.matvec(&[0u8; 35], &mut out, 1).unwrap_err()),
        QuantErrorKind::WrongLength {
            expected: 36,
            found: 35,
            ..
        }
    ));
    assert!(matches!(
        kind(m.matmul(&[0u8; 37], &mut out, 1).unwrap_err()),
        QuantErrorKind::PartialRow { .. }
    ));
    assert!(matches!(
        kind(m.matmul(&[0u8; 72], &mut out, 1).unwrap_err()),
        QuantErrorKind::WrongLength {
            expected: 8,
            found: 4,
            ..
        }
    ));
    // Zero input rows: nothing to do.
    m.matmul(&[], &mut [], 3).unwrap();
    assert!(quant::quantize_activation(GgmlType::Q4_0, &[0.0; 32]).is_err());
    assert!(quant::quantize_activation(GgmlType::Q8_K, &[0.0; 32]).is_err());
    assert!(dequantize_row(GgmlType::Q8_0, &[0u8; 33], &mut [0.0; 32]).is_err());
}

#[test]
#[should_panic(expected = "is not 2 blocks of 34 bytes")]
fn vec_dot_rejects_mismatched_rows() {
    vec_dot(GgmlType::Q4_0, &[0u8; 36], &[0u8; 34 * 3]);
}

// ----- (d) activation quantizers ------------------------------------------------------------

fn random_rows(rng: &mut Rng, n: usize) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    // (Block maxima stay above 127 · 2^-14 so that the f16 scales are normal numbers.)
    for scale in [1e-1f32, 1.0, 37.0, 6e4] {
        rows.push((0..n).map(|_| rng.gauss(scale)).collect::<Vec<_>>());
    }
    // Outliers, an all-zero block, a block with one non-zero value, negative maximum.
    let mut v: Vec<f32> = (0..n).map(|_| rng.gauss(1.0)).collect();
    v[3] = 250.0;
    v[n - 1] = -900.0;
    v[256..288].fill(0.0);
    v[320..352].fill(0.0);
    v[330] = -1e-3;
    rows.push(v);
    rows
}

#[test]
fn q8_0_and_q8_1_round_trip_within_half_a_step() {
    let mut rng = Rng::new(7);
    for x in random_rows(&mut rng, 1024) {
        for (ty, q) in [
            (GgmlType::Q8_0, quantize_row_q8_0(&x)),
            (GgmlType::Q8_1, quantize_row_q8_1(&x)),
        ] {
            let back = dequant(ty, &q);
            for (b, (xb, yb)) in x.chunks_exact(32).zip(back.chunks_exact(32)).enumerate() {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                // Half a step, plus the f16 rounding of d (relative 2^-11) times |q| <= 127,
                // plus float rounding.
                let bound = d * (0.5 + 127.0 / 2048.0 + 1e-4);
                for (i, (a, c)) in xb.iter().zip(yb).enumerate() {
                    assert!(
                        (a - c).abs() <= bound,
                        "{ty} block {b} element {i}: {a} -> {c} (bound {bound})"
                    );
                }
                let blk = &q[b * block_bytes(ty)..(b + 1) * block_bytes(ty)];
                let qs = &blk[blk.len() - 32..];
                assert!(qs.iter().all(|&v| v as i8 != -128), "{ty}: quant -128");
                if ty == GgmlType::Q8_1 {
                    let sum: i32 = qs.iter().map(|&v| i32::from(v as i8)).sum();
                    let want = f16::from_f32(d * sum as f32).to_f32();
                    assert_eq!(get_f16(blk, 2), want, "Q8_1 block {b} sum");
                }
            }
        }
    }
}

#[test]
fn q8_k_round_trips_within_half_a_step_with_consistent_block_sums() {
    let mut rng = Rng::new(8);
    for x in random_rows(&mut rng, 1024) {
        let q = quantize_row_q8_k(&x);
        assert_eq!(q.len(), 4 * 292);
        let back = dequant(GgmlType::Q8_K, &q);
        for (b, (xb, blk)) in x.chunks_exact(256).zip(q.chunks_exact(292)).enumerate() {
            let d = f32::from_le_bytes(blk[0..4].try_into().unwrap());
            let max = xb
                .iter()
                .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            if max == 0.0 {
                assert!(blk.iter().all(|&v| v == 0), "zero block {b}");
                continue;
            }
            // The largest-magnitude value maps to -127 (scale -127/max).
            assert!(
                (d - max / -127.0).abs() <= d.abs() * 1e-6,
                "block {b}: d {d}, max {max}"
            );
            for (i, &a) in xb.iter().enumerate() {
                let c = back[256 * b + i];
                assert!(
                    (a - c).abs() <= d.abs() * 0.5001,
                    "block {b} element {i}: {a} -> {c} (d {d})"
                );
            }
            for g in 0..16 {
                let s: i32 = blk[4 + 16 * g..4 + 16 * g + 16]
                    .iter()
                    .map(|&v| i32::from(v as i8))
                    .sum();
                let stored = i16::from_le_bytes([blk[260 + 2 * g], blk[261 + 2 * g]]);
                assert_eq!(i32::from(stored), s, "block {b} group {g}");
            }
            assert!(blk[4..260].iter().all(|&v| v as i8 != -128));
        }
    }
}

#[test]
fn quantizers_round_half_to_even_like_ggml() {
    // amax 127 gives d = 1 exactly, so x·(1/d) = x and ties are exact.
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = 3.5;
    x[3] = -2.5;
    x[4] = -0.5;
    x[5] = 0.5000001;
    let q = quantize_row_q8_0(&x);
    let qs: Vec<i8> = q[2..8].iter().map(|&v| v as i8).collect();
    assert_eq!(qs, [127, 2, 4, -2, 0, 1]);
    assert_eq!(get_f16(&q, 0), 1.0);

    // Q8_K: max = 127 gives iscale = -1, so quants are -round_half_even(x).
    let mut x = vec![0.0f32; 256];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = 3.5;
    x[3] = -126.5;
    let q = quantize_row_q8_k(&x);
    let qs: Vec<i8> = q[4..8].iter().map(|&v| v as i8).collect();
    assert_eq!(qs, [-127, -2, -4, 126]);
    assert_eq!(f32::from_le_bytes(q[0..4].try_into().unwrap()), -1.0);
}

#[test]
#[should_panic(expected = "not a multiple of the Q8_K block size 256")]
fn quantize_row_q8_k_rejects_partial_blocks() {
    quantize_row_q8_k(&[1.0; 300]);
}

// ----- a real model file --------------------------------------------------------------------

fn models_dir() -> PathBuf {
    std::env::var_os("SOTAD_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sotad/models")
        })
}

/// Checks `matvec` of a real tensor against the dequantize-then-f64 reference, with the
/// original (unquantized) f32 activation. The only approximation is quantizing the
/// activation: each element moves by at most `d_b·(1/2 + 127/2048)` (half a step plus the f16
/// rounding of the block scale), so row `r` may differ by at most `Σ_i |w_ri|·that`, plus
/// float rounding.
fn check_real_matvec(file: &GgufFile, name: &str, ty: GgmlType, rows: usize, cols: usize) {
    let t = file.tensor(name).unwrap();
    let m = QMatrix::from_tensor(&t).unwrap();
    assert_eq!((m.ty(), m.rows(), m.cols()), (ty, rows, cols), "{name}");
    assert!(
        file.as_bytes().as_ptr_range().contains(&m.bytes().as_ptr()),
        "{name}: the matrix must borrow the mapping"
    );

    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..cols).map(|_| rng.gauss(2.0)).collect();
    let xq = m.quantize_activation(&x).unwrap();
    let step: Vec<f32> = x
        .chunks_exact(32)
        .flat_map(|b| {
            let d = b.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            std::iter::repeat_n(d * (0.5 + 127.0 / 2048.0), 32)
        })
        .collect();

    let mut out = vec![0.0f32; rows];
    m.matvec(&xq, &mut out, 2).unwrap();

    let mut w = vec![0.0f32; cols];
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    for (r, &got) in out.iter().enumerate() {
        dequantize_row(ty, m.row(r), &mut w).unwrap();
        let exact: f64 = w
            .iter()
            .zip(&x)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let abs: f64 = w
            .iter()
            .zip(&x)
            .map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs())
            .sum();
        let bound: f64 = w
            .iter()
            .zip(&step)
            .map(|(a, s)| f64::from(a.abs()) * f64::from(*s))
            .sum::<f64>()
            + 1e-4 * abs;
        let got = f64::from(got);
        assert!(
            (got - exact).abs() <= bound,
            "{name} row {r}: matvec {got}, f32 reference {exact}, bound {bound}"
        );
        err2 += (got - exact).powi(2);
        ref2 += exact.powi(2);
    }
    eprintln!(
        "{name} ({ty}, {rows} x {cols}, kernel {}): relative RMS error vs f32 activations {:.2e}",
        Kernel::best(),
        (err2 / ref2).sqrt()
    );
    assert!(
        (err2 / ref2).sqrt() < 0.02,
        "{name}: relative RMS error too large"
    );
}

#[test]
fn smollm2_real_tensors_match_dequantized_reference() {
    let path = models_dir().join("smollm2-135m-instruct-q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-models.sh (scripts/test.sh does)",
        path.display()
    );
    let file = GgufFile::open(&path).unwrap();
    check_real_matvec(&file, "blk.0.attn_q.weight", GgmlType::Q4_1, 576, 576);
    check_real_matvec(&file, "token_embd.weight", GgmlType::Q8_0, 49152, 576);

    // A 1-D tensor is a single row; an F32 norm has no kernel and says which tensor.
    let norm = file.tensor("blk.0.attn_norm.weight").unwrap();
    let err = QMatrix::from_tensor(&norm).unwrap_err().to_string();
    assert!(
        err.contains("blk.0.attn_norm.weight") && err.contains("F32 is not supported as weights"),
        "{err}"
    );
}
