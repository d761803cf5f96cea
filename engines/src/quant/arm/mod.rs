//! aarch64 kernels, chosen at run time by [`super::Kernel`]: [`neon`] (baseline NEON, `SDOT`
//! with `dotprod`, `SMMLA` tiles with `i8mm`).

pub(super) mod neon;
