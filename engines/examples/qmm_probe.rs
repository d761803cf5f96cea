//! Single-threaded throughput of one prefill product (`QMatrix::matmul_with`), in block pairs
//! (one weight block × one activation block) per nanosecond, on a random matrix of the given
//! type and shape. A probe for kernel work, not a benchmark against a peer.
//!
//! ```text
//! cargo run --release -p sotad-engines --example qmm_probe -- [TYPE] [ROWS] [COLS] [TOKENS]
//! ```

use std::time::Instant;

use sotad_engines::gguf::GgmlType;
use sotad_engines::quant::{Kernel, QMatrix};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ty = match args.get(1).map(String::as_str).unwrap_or("q5_0") {
        "q4_0" => GgmlType::Q4_0,
        "q4_1" => GgmlType::Q4_1,
        "q5_0" => GgmlType::Q5_0,
        "q8_0" => GgmlType::Q8_0,
        "q4_k" => GgmlType::Q4_K,
        "q6_k" => GgmlType::Q6_K,
        other => panic!("unknown type {other}"),
    };
    let num = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (rows, cols, n_tok) = (num(2, 4864), num(3, 896), num(4, 256));
    let mut s = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let bb = ty.type_size() as usize;
    let bs = ty.block_size() as usize;
    let nb = rows * cols / bs;
    let mut w: Vec<u8> = (0..nb * bb).map(|_| (next() >> 56) as u8).collect();
    let scale_at: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q6_K => &[208],
        _ => &[0, 2],
    };
    for blk in w.chunks_exact_mut(bb) {
        for &at in scale_at {
            blk[at..at + 2].copy_from_slice(&0x211f_u16.to_le_bytes());
        }
    }
    let m = QMatrix::new(ty, rows, cols, &w).expect("matrix");
    let x: Vec<f32> = (0..cols * n_tok)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    let xq = m.quantize_activation(&x).expect("activation");
    let mut out = vec![0.0f32; rows * n_tok];
    let kernel = Kernel::best();
    let mut times = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        m.matmul_with(kernel, &xq, &mut out, num(5, 1))
            .expect("matmul");
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    eprintln!("min {:.2} ms", times[0] * 1e3);
    let pairs = (nb * n_tok) as f64;
    println!(
        "{ty} {rows}x{cols} x {n_tok} tokens, {kernel}: median {:.2} ms, {:.3} pairs/ns, {:.1} GMAC/s, checksum {:.4}",
        med * 1e3,
        pairs / med / 1e9,
        pairs * bs as f64 / med / 1e9,
        out.iter().map(|v| *v as f64).sum::<f64>()
    );
}
