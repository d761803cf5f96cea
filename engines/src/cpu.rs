//! Which instruction sets the engines may use: run-time detection, capped for the whole
//! process by `SOTAD_MAX_ISA`.
//!
//! `SOTAD_MAX_ISA=avx2` makes an AVX-512 CPU run the engines as an AVX2-only one would (an
//! AMD Zen 3, say): every AVX-512 kernel of the engines is skipped (the quantized products'
//! VNNI tiles, `stt::vmath`'s 16-lane loops) and the `f32` matrix products go through
//! [`sgemm`], which then runs gemm's AVX2+FMA kernels. The `gemm` crate picks AVX-512 by
//! itself and has no switch to say otherwise, so [`sgemm`] calls gemm's AVX2 driver directly
//! (`gemm_common::gemm::gemm_basic_generic` with `gemm_f32`'s FMA micro-kernels: the function
//! `gemm::gemm` dispatches to on a CPU without AVX-512); it depends on gemm 0.19's layout
//! and is pinned to that version in the workspace's `Cargo.toml`. candle's own products
//! (only the opt-in `stt.quantized_encoder` uses candle) are not capped.
//! The peers are capped the same way with CTranslate2's `CT2_FORCE_CPU_ISA=AVX2`
//! (`benches/benches/stt.rs` sets it when `SOTAD_MAX_ISA=avx2`).
//!
//! Unset, or `avx512`: no cap. Any other value is ignored with a warning.

use std::sync::OnceLock;

/// The widest x86 instruction set family a kernel may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// AVX2 and FMA at most: no AVX-512 instruction.
    Avx2,
    /// No cap.
    Avx512,
}

/// The cap from `SOTAD_MAX_ISA`, read once.
pub fn max_isa() -> Isa {
    static CAP: OnceLock<Isa> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("SOTAD_MAX_ISA") {
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "avx2" => Isa::Avx2,
            "" | "avx512" => Isa::Avx512,
            other => {
                tracing::warn!(
                    "SOTAD_MAX_ISA={other:?} is not one of avx2, avx512: ignored (no cap)"
                );
                Isa::Avx512
            }
        },
        Err(_) => Isa::Avx512,
    })
}

/// Whether AVX-512 kernels may run: the CPU has AVX-512 F (and the caller checks any
/// further extension it needs) and `SOTAD_MAX_ISA` does not forbid it.
pub fn avx512_allowed() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        max_isa() >= Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// What the engines' `f32` products and vector kernels run on, for benchmark reports:
/// `avx512`, `avx2`, `x86-64` (neither), `neon` or `scalar`; with ` (capped by SOTAD_MAX_ISA)`
/// when the cap took AVX-512 away.
pub fn isa_name() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let has512 = std::arch::is_x86_feature_detected!("avx512f");
        if avx512_allowed() {
            "avx512".into()
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            if has512 {
                "avx2 (capped by SOTAD_MAX_ISA; the CPU has AVX-512)".into()
            } else {
                "avx2".into()
            }
        } else {
            "x86-64".into()
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon".into()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar".into()
    }
}

/// `gemm::gemm` for `f32` (`dst := alpha·dst + beta·lhs·rhs`, same arguments, no
/// conjugation), honouring `SOTAD_MAX_ISA`: capped at AVX2 on an AVX-512 CPU it runs gemm's
/// AVX2+FMA kernels, otherwise it is `gemm::gemm`.
///
/// # Safety
/// As `gemm::gemm`: the pointers and strides must describe matrices inside live buffers, and
/// `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: f32,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2_gemm_forced() {
        // SAFETY: forwarded from the caller; the CPU has AVX2 and FMA (checked).
        unsafe {
            sgemm_avx2(
                m,
                n,
                k,
                dst,
                dst_cs,
                dst_rs,
                read_dst,
                lhs,
                lhs_cs,
                lhs_rs,
                rhs,
                rhs_cs,
                rhs_rs,
                alpha,
                beta,
                parallelism,
            )
        };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Whether [`sgemm`] must bypass gemm's own dispatch: AVX-512 present but capped away.
#[cfg(target_arch = "x86_64")]
fn avx2_gemm_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| {
        max_isa() < Isa::Avx512
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    })
}

/// gemm 0.19's path for `f32` on an AVX2 CPU: `gemm::gemm`'s normalization (a row-major
/// destination is computed as the transposed column-major product; negative strides
/// flipped), then `gemm_basic_generic` with the FMA micro-kernels, as gemm's
/// `gemm_f32::gemm::f32::fma::gemm_basic` (private) calls it.
///
/// # Safety
/// As [`sgemm`], and the CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_avx2(
    m: usize,
    n: usize,
    k: usize,
    mut dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    alpha: f32,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    use gemm_f32::microkernel::fma::f32 as uk;
    let (
        m,
        n,
        mut dst_cs,
        mut dst_rs,
        mut lhs,
        mut lhs_cs,
        mut lhs_rs,
        mut rhs,
        mut rhs_cs,
        mut rhs_rs,
    ) = if dst_cs.abs() < dst_rs.abs() {
        (
            n, m, dst_rs, dst_cs, rhs, rhs_rs, rhs_cs, lhs, lhs_rs, lhs_cs,
        )
    } else {
        (
            m, n, dst_cs, dst_rs, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs,
        )
    };
    if dst_rs < 0 && m > 0 {
        dst = dst.wrapping_offset((m - 1) as isize * dst_rs);
        dst_rs = -dst_rs;
        lhs = lhs.wrapping_offset((m - 1) as isize * lhs_rs);
        lhs_rs = -lhs_rs;
    }
    if dst_cs < 0 && n > 0 {
        dst = dst.wrapping_offset((n - 1) as isize * dst_cs);
        dst_cs = -dst_cs;
        rhs = rhs.wrapping_offset((n - 1) as isize * rhs_cs);
        rhs_cs = -rhs_cs;
    }
    if lhs_cs < 0 && k > 0 {
        lhs = lhs.wrapping_offset((k - 1) as isize * lhs_cs);
        lhs_cs = -lhs_cs;
        rhs = rhs.wrapping_offset((k - 1) as isize * rhs_rs);
        rhs_rs = -rhs_rs;
    }
    let Some(simd) = gemm_common::simd::V3::try_new() else {
        unreachable!("avx2_gemm_forced checked AVX2 and FMA")
    };
    // SAFETY: forwarded from the caller; the micro-kernels match the `V3` instruction set
    // and the tile constants are the ones gemm_f32 defines for them.
    unsafe {
        gemm_common::gemm::gemm_basic_generic::<
            _,
            f32,
            8,
            { uk::MR_DIV_N * 8 },
            { uk::NR },
            { uk::MR_DIV_N },
            { uk::H_M },
            { uk::H_N },
        >(
            simd,
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            read_dst,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            |a, b, c| a * b + c,
            &uk::UKR,
            &uk::H_UKR,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capped driver (when this CPU can run it) and `gemm::gemm` both give the plain
    /// product, for a row-major destination with accumulation (the encoder's case).
    #[test]
    fn sgemm_paths_compute_the_product() {
        let (m, n, k) = (5, 7, 9);
        let lhs: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
        let mut want = vec![1.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] += (0..k).map(|p| lhs[i * k + p] * rhs[p * n + j]).sum::<f32>();
            }
        }
        let run = |f: &dyn Fn(*mut f32)| {
            let mut dst = vec![1.0f32; m * n];
            f(dst.as_mut_ptr());
            dst
        };
        let check = |got: Vec<f32>| {
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{got:?} against {want:?}");
            }
        };
        let (l, r) = (lhs.as_ptr(), rhs.as_ptr());
        let (ni, ki) = (n as isize, k as isize);
        // SAFETY: the buffers hold the row-major matrices the strides describe.
        check(run(&|d| unsafe {
            sgemm(
                m,
                n,
                k,
                d,
                1,
                ni,
                true,
                l,
                1,
                ki,
                r,
                1,
                ni,
                1.0,
                1.0,
                gemm::Parallelism::None,
            )
        }));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above; AVX2 and FMA checked.
            check(run(&|d| unsafe {
                sgemm_avx2(
                    m,
                    n,
                    k,
                    d,
                    1,
                    ni,
                    true,
                    l,
                    1,
                    ki,
                    r,
                    1,
                    ni,
                    1.0,
                    1.0,
                    gemm::Parallelism::None,
                )
            }));
        }
    }
}
