//! Throughput of the quantized matvec kernels, in GB/s of weight bytes streamed.
//!
//! ```text
//! cargo bench -p sotad-benches --bench quant            # everything
//! cargo bench -p sotad-benches --bench quant -- quick   # fewer configurations
//! ```
//!
//! Prints the cost of starting a thread and the machine's plain read bandwidth with 1 and 2
//! threads (the decode roofline's ceiling); then, for Q4_1 and Q4_K (the weight types of our two
//! test models), the median time of `QMatrix::matvec_with` on a synthetic matrix that fits in
//! the last-level cache and on one that does not, with 1 and 2 threads; then one token's
//! worth of matvecs over the real SmolLM2 Q4_1 tensors and the real Gemma 3 Q4_K tensors (if
//! the files are in `~/.cache/sotad/models`, with `QMatrix::matvec`'s own thread-count
//! choice); then prefill (`matmul`, 16 tokens); then the other weight types. The figures are to be
//! compared with llama.cpp on the same machine (`llama-bench`, or `test-backend-ops perf -o
//! MUL_MAT`); no comparison is run here.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sotad_benches::models_dir;
use sotad_engines::gguf::{GgmlType, GgufFile};
use sotad_engines::quant::{Kernel, QMatrix, WEIGHT_TYPES, activation_type};

/// xorshift64*, for reproducible random blocks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A random matrix of `ty` with sane f16 scales (quant bytes random).
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let bb = ty.type_size() as usize;
    let nb = rows * cols / ty.block_size() as usize;
    let mut w: Vec<u8> = (0..nb * bb).map(|_| (rng.next() >> 56) as u8).collect();
    let scales: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q6_K => &[208],
        _ => &[0, 2],
    };
    let d = 0x211f_u16.to_le_bytes(); // f16 0.01 (no `half` dependency here)
    for blk in w.chunks_exact_mut(bb) {
        for &at in scales {
            blk[at..at + 2].copy_from_slice(&d);
        }
    }
    w
}

fn activation(m: &QMatrix<'_>, n_tok: usize, rng: &mut Rng) -> Vec<u8> {
    let x: Vec<f32> = (0..m.cols() * n_tok)
        .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    m.quantize_activation(&x).expect("activation")
}

/// Median seconds per call of `f`, over at least `min_time` (after a warm-up call).
fn time(min_time: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < min_time || samples.len() < 5 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn gbs(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn synthetic(types: &[GgmlType], min_time: Duration, kernels: &[Kernel]) {
    println!("\n== synthetic matvec (GB/s of weight bytes; median)");
    println!(
        "{:<6} {:>14} {:>9} {:<13} {:>9} {:>9}",
        "type", "rows x cols", "MB", "kernel", "1 thread", "2 threads"
    );
    let mut rng = Rng(0x5eed_1234_5678_9abc);
    for &ty in types {
        // ~5 MB (fits a 32 MB L3 like this x86 machine's, not a Pi's) and ~40 MB (streams
        // from DRAM everywhere).
        for (rows, cols) in [(4096, 2048), (16384, 4096)] {
            let w = random_matrix(ty, rows, cols, &mut rng);
            let m = QMatrix::new(ty, rows, cols, &w).expect("matrix");
            let x = activation(&m, 1, &mut rng);
            let mut out = vec![0.0f32; rows];
            for &k in kernels {
                let mut line = format!(
                    "{:<6} {:>14} {:>9.1} {:<13}",
                    ty.name(),
                    format!("{rows} x {cols}"),
                    w.len() as f64 / 1e6,
                    k.name()
                );
                for threads in [1, 2] {
                    if k == Kernel::Scalar && threads == 2 {
                        line.push_str(&format!(" {:>9}", "-"));
                        continue;
                    }
                    let s = time(min_time, || {
                        m.matvec_with(k, black_box(&x), &mut out, threads)
                            .expect("matvec");
                        black_box(&out);
                    });
                    line.push_str(&format!(" {:>9.2}", gbs(w.len(), s)));
                }
                println!("{line}");
            }
        }
    }
}

/// One token's worth of matvecs over every tensor of `ty` in a real file.
fn real_model(file: &str, ty: GgmlType, min_time: Duration) {
    let path = models_dir().join(file);
    let Ok(gguf) = GgufFile::open(&path) else {
        println!(
            "\n== {file}: not found in {}, skipped",
            models_dir().display()
        );
        return;
    };
    let tensors: Vec<_> = gguf
        .tensors()
        .filter(|t| {
            t.ggml_type() == ty && t.dims().len() == 2 && !t.name().starts_with("token_embd")
        })
        .collect();
    let mats: Vec<QMatrix<'_>> = tensors
        .iter()
        .map(|t| QMatrix::from_tensor(t).expect("matrix"))
        .collect();
    let bytes: usize = mats.iter().map(|m| m.bytes().len()).sum();
    let mut rng = Rng(42);
    let xs: Vec<Vec<u8>> = mats.iter().map(|m| activation(m, 1, &mut rng)).collect();
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; m.rows()]).collect();
    println!(
        "\n== {file}: all {} {} matrices ({:.1} MB, rows x cols e.g. {} x {}), one matvec each",
        mats.len(),
        ty.name(),
        bytes as f64 / 1e6,
        mats[0].rows(),
        mats[0].cols()
    );
    for threads in [1, 2] {
        let s = time(min_time, || {
            for ((m, x), out) in mats.iter().zip(&xs).zip(outs.iter_mut()) {
                m.matvec(black_box(x), out, threads).expect("matvec");
            }
            black_box(&outs);
        });
        println!(
            "   {} thread(s), {}: {:.2} GB/s ({:.3} ms per sweep)",
            threads,
            Kernel::best(),
            gbs(bytes, s),
            s * 1e3
        );
    }
}

fn prefill(min_time: Duration) {
    println!(
        "\n== prefill: matmul with 16 activation rows, 16384 x 4096 (GB/s of weights read once)"
    );
    let mut rng = Rng(7);
    for ty in [GgmlType::Q4_1, GgmlType::Q4_K] {
        let (rows, cols, n_tok) = (16384, 4096, 16);
        let w = random_matrix(ty, rows, cols, &mut rng);
        let m = QMatrix::new(ty, rows, cols, &w).expect("matrix");
        let x = activation(&m, n_tok, &mut rng);
        let mut out = vec![0.0f32; rows * n_tok];
        for threads in [1, 2] {
            let s = time(min_time, || {
                m.matmul(black_box(&x), &mut out, threads).expect("matmul");
                black_box(&out);
            });
            println!(
                "   {} ({} activations), {} thread(s): {:.2} GB/s, {:.3} ms per token",
                ty.name(),
                activation_type(ty).map_or("?", |a| a.name()),
                threads,
                gbs(w.len(), s),
                s * 1e3 / n_tok as f64
            );
        }
    }
}

/// The machine's own read bandwidth, the decode roofline's ceiling: a plain sum over 256 MiB
/// (far beyond the last-level cache), split over 1 and 2 threads, in GB/s. The kernels'
/// streaming rates above are to be read against it.
fn read_bandwidth(min_time: Duration) {
    let words = vec![1u64; 256 << 17]; // 256 MiB of u64
    println!("\n== plain read of 256 MiB (sum of u64 words; the bandwidth ceiling)");
    for threads in [1usize, 2] {
        let s = time(min_time, || {
            let part = words.len().div_ceil(threads);
            let total: u64 = std::thread::scope(|scope| {
                let handles: Vec<_> = words
                    .chunks(part)
                    .map(|c| scope.spawn(move || c.iter().fold(0u64, |a, &w| a.wrapping_add(w))))
                    .collect();
                handles.into_iter().map(|h| h.join().expect("reader")).sum()
            });
            black_box(total);
        });
        println!(
            "   {threads} thread(s): {:.2} GB/s",
            gbs(words.len() * 8, s)
        );
    }
}

/// What `QMatrix::matvec` pays per extra thread: starting and joining it.
fn spawn_cost(min_time: Duration) {
    let s = time(min_time, || {
        std::thread::scope(|scope| {
            scope.spawn(|| black_box(1));
        });
    });
    println!(
        "\n== std::thread::scope starting and joining one thread: {:.1} µs",
        s * 1e6
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "quick");
    let min_time = Duration::from_millis(if quick { 300 } else { 1000 });
    println!(
        "kernels available: {:?}; best: {}",
        Kernel::available(),
        Kernel::best()
    );
    let best = Kernel::best();
    let kernels = if best == Kernel::Scalar {
        vec![best]
    } else {
        vec![best, Kernel::Scalar]
    };
    spawn_cost(min_time);
    read_bandwidth(min_time);
    synthetic(&[GgmlType::Q4_1, GgmlType::Q4_K], min_time, &kernels);
    real_model("smollm2-135m-instruct-q4_1.gguf", GgmlType::Q4_1, min_time);
    real_model("gemma-3-270m-q4_k_m.gguf", GgmlType::Q4_K, min_time);
    prefill(min_time);
    if !quick {
        let others: Vec<GgmlType> = WEIGHT_TYPES
            .into_iter()
            .filter(|t| !matches!(t, GgmlType::Q4_1 | GgmlType::Q4_K))
            .collect();
        synthetic(&others, min_time, &[best]);
    }
}
