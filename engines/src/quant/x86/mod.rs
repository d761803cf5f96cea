//! x86_64 kernels, each file one instruction set, chosen at run time by [`super::Kernel`]:
//! [`avx2`] (dot products of one weight row with up to four activation rows, and four rows
//! per pass for one token), [`avx2_prefill`] (AVX2 products of a batch over unpacked weight
//! rows, bit for bit [`avx2`]) and [`avx512_vnni`] (tiles of weight rows × tokens with
//! `vpdpbusd`/`vpdpwssd`, bit for bit [`avx2`]).

pub(super) mod avx2;
pub(super) mod avx2_prefill;
pub(super) mod avx512_vnni;
