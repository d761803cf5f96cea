//! TensorFlow Lite Micro's audio front end ("microfrontend"), bit-exact, as microWakeWord uses it.
//!
//! The pipeline and its integer arithmetic follow `tensorflow/lite/experimental/microfrontend/lib`
//! as built into PyPI `pymicro-features` 2.0.2 (the reference the tests compare against), with
//! the settings microWakeWord was trained with: 30 ms Hann window every 10 ms, a 512-point
//! fixed-point FFT (kissfft with 16-bit scalars), 40 mel channels from 125 to 7500 Hz, noise
//! reduction, PCAN gain control and a fixed-point natural log. Each output is a `u16`; the
//! reference hands it to the model as `value * 0.0390625`.
//!
//! Everything after the tables is integer arithmetic. The tables (window, twiddles, mel
//! weights, PCAN gains) are the ones the reference computes on x86-64 with glibc's `cosf`,
//! `log1pf`, `powf`, `cos` and `sin`, embedded (`frontend_tables.rs`) because another C library
//! may round those functions differently in the last bit, which moves a mel band edge. A test
//! on x86-64 recomputes them the C code's way and compares.

/// Mel channels per frame.
pub const CHANNELS: usize = 40;
/// Samples per window (30 ms at 16 kHz).
pub const WINDOW: usize = 480;
/// Samples between frames (10 ms at 16 kHz).
pub const STEP: usize = 160;
/// The reference's float scale of a feature (`pymicro-features`' `FLOAT32_SCALE`).
pub const FEATURE_SCALE: f64 = 0.0390625;

#[cfg(all(test, target_arch = "x86_64"))]
const SAMPLE_RATE: usize = 16_000;
const FFT_SIZE: usize = 512;
const NCFFT: usize = FFT_SIZE / 2;
const WINDOW_BITS: u32 = 12;
const FILTERBANK_BITS: i32 = 12;
const NOISE_REDUCTION_BITS: u32 = 14;
const SMOOTHING_BITS: u32 = 10;
const PCAN_SNR_BITS: i32 = 12;
const PCAN_OUTPUT_BITS: u32 = 6;
const PCAN_GAIN_BITS: i32 = 21;
#[cfg(all(test, target_arch = "x86_64"))]
const WIDE_DYNAMIC_BITS: usize = 32;
const LOG_SCALE_LOG2: u32 = 16;
const LOG_SEGMENTS_LOG2: u32 = 7;
const LOG_COEFF: u64 = 45426;
const LOG_SCALE_SHIFT: u32 = 6;

const LOG_LUT: [u16; 130] = [
    0, 224, 442, 654, 861, 1063, 1259, 1450, 1636, 1817, 1992, 2163, 2329, 2490, 2646, 2797, 2944,
    3087, 3224, 3358, 3487, 3611, 3732, 3848, 3960, 4068, 4172, 4272, 4368, 4460, 4549, 4633, 4714,
    4791, 4864, 4934, 5001, 5063, 5123, 5178, 5231, 5280, 5326, 5368, 5408, 5444, 5477, 5507, 5533,
    5557, 5578, 5595, 5610, 5622, 5631, 5637, 5640, 5641, 5638, 5633, 5626, 5615, 5602, 5586, 5568,
    5547, 5524, 5498, 5470, 5439, 5406, 5370, 5332, 5291, 5249, 5203, 5156, 5106, 5054, 5000, 4944,
    4885, 4825, 4762, 4697, 4630, 4561, 4490, 4416, 4341, 4264, 4184, 4103, 4020, 3935, 3848, 3759,
    3668, 3575, 3481, 3384, 3286, 3186, 3084, 2981, 2875, 2768, 2659, 2549, 2437, 2323, 2207, 2090,
    1971, 1851, 1729, 1605, 1480, 1353, 1224, 1094, 963, 830, 695, 559, 421, 282, 142, 0, 0,
];

#[derive(Clone, Copy, Default)]
struct Cpx {
    r: i16,
    i: i16,
}

/// The most significant bit's position, 1-based (0 for 0), as the C `MostSignificantBit32`.
fn msb32(n: u32) -> u32 {
    32 - n.leading_zeros()
}

fn msb64(n: u64) -> u32 {
    64 - n.leading_zeros()
}

// kissfft's FIXED_POINT=16 arithmetic: products in i32, rounded back with `sround`, sums
// stored (wrapping) into i16, as C's integer promotion and truncating stores do.
fn sround(x: i32) -> i16 {
    (x.wrapping_add(1 << 14) >> 15) as i16
}

fn c_mul(a: Cpx, b: Cpx) -> Cpx {
    let ar = a.r as i32;
    let ai = a.i as i32;
    let br = b.r as i32;
    let bi = b.i as i32;
    Cpx {
        r: sround((ar * br).wrapping_sub(ai * bi)),
        i: sround((ar * bi).wrapping_add(ai * br)),
    }
}

fn fixdiv(c: Cpx, div: i32) -> Cpx {
    let k = 32767 / div;
    Cpx {
        r: sround(c.r as i32 * k),
        i: sround(c.i as i32 * k),
    }
}

fn c_add(a: Cpx, b: Cpx) -> Cpx {
    Cpx {
        r: a.r.wrapping_add(b.r),
        i: a.i.wrapping_add(b.i),
    }
}

fn c_sub(a: Cpx, b: Cpx) -> Cpx {
    Cpx {
        r: a.r.wrapping_sub(b.r),
        i: a.i.wrapping_sub(b.i),
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
fn kiss_twiddle(phase: f64) -> Cpx {
    Cpx {
        r: (0.5 + 32767.0 * black_box(phase).cos()).floor() as i16,
        i: (0.5 + 32767.0 * black_box(phase).sin()).floor() as i16,
    }
}

/// kissfft's real FFT of 512 points (a 256-point complex FFT of radix-4 stages).
struct Fft {
    twiddles: Vec<Cpx>,
    super_twiddles: Vec<Cpx>,
    /// The radix-4 stages' lengths m: 64, 16, 4, 1.
    factors: [usize; 8],
    tmp: Vec<Cpx>,
    input: Vec<i16>,
    output: Vec<Cpx>,
}

impl Fft {
    #[cfg(all(test, target_arch = "x86_64"))]
    fn new() -> Fft {
        let pi = std::f64::consts::PI;
        let twiddles = (0..NCFFT)
            .map(|i| kiss_twiddle(-2.0 * pi * i as f64 / NCFFT as f64))
            .collect();
        let super_twiddles = (0..NCFFT / 2)
            .map(|i| kiss_twiddle(-pi * ((i + 1) as f64 / NCFFT as f64 + 0.5)))
            .collect();
        Fft {
            twiddles,
            super_twiddles,
            factors: [4, 64, 4, 16, 4, 4, 4, 1],
            tmp: vec![Cpx::default(); NCFFT],
            input: vec![0; FFT_SIZE],
            output: vec![Cpx::default(); NCFFT + 1],
        }
    }

    fn work(&mut self, out: usize, f: usize, fstride: usize, stage: usize) {
        let p = self.factors[2 * stage];
        let m = self.factors[2 * stage + 1];
        if m == 1 {
            for j in 0..p {
                let k = f + j * fstride;
                self.tmp[out + j] = Cpx {
                    r: self.input[2 * k],
                    i: self.input[2 * k + 1],
                };
            }
        } else {
            for j in 0..p {
                self.work(out + j * m, f + j * fstride, fstride * p, stage + 1);
            }
        }
        self.bfly4(out, fstride, m);
    }

    fn bfly4(&mut self, base: usize, fstride: usize, m: usize) {
        let tw = &self.twiddles;
        let fo = &mut self.tmp;
        for k in 0..m {
            let i0 = base + k;
            let (i1, i2, i3) = (i0 + m, i0 + 2 * m, i0 + 3 * m);
            fo[i0] = fixdiv(fo[i0], 4);
            fo[i1] = fixdiv(fo[i1], 4);
            fo[i2] = fixdiv(fo[i2], 4);
            fo[i3] = fixdiv(fo[i3], 4);
            let s0 = c_mul(fo[i1], tw[k * fstride]);
            let s1 = c_mul(fo[i2], tw[2 * k * fstride]);
            let s2 = c_mul(fo[i3], tw[3 * k * fstride]);
            let s5 = c_sub(fo[i0], s1);
            fo[i0] = c_add(fo[i0], s1);
            let s3 = c_add(s0, s2);
            let s4 = c_sub(s0, s2);
            fo[i2] = c_sub(fo[i0], s3);
            fo[i0] = c_add(fo[i0], s3);
            fo[i1] = Cpx {
                r: s5.r.wrapping_add(s4.i),
                i: s5.i.wrapping_sub(s4.r),
            };
            fo[i3] = Cpx {
                r: s5.r.wrapping_sub(s4.i),
                i: s5.i.wrapping_add(s4.r),
            };
        }
    }

    /// `FftCompute`: scales `window` up by `shift` bits, zero-pads and transforms into `output`.
    fn compute(&mut self, window: &[i16], shift: u32) {
        for (d, &s) in self.input.iter_mut().zip(window) {
            *d = ((s as u16 as u32) << shift) as i16;
        }
        self.input[window.len()..].fill(0);
        self.work(0, 0, 1, 0);
        let half = |x: i32| (x >> 1) as i16;
        let tdc = fixdiv(self.tmp[0], 2);
        self.output[0] = Cpx {
            r: tdc.r.wrapping_add(tdc.i),
            i: 0,
        };
        self.output[NCFFT] = Cpx {
            r: tdc.r.wrapping_sub(tdc.i),
            i: 0,
        };
        for k in 1..=NCFFT / 2 {
            let fpk = fixdiv(self.tmp[k], 2);
            let nk = self.tmp[NCFFT - k];
            let fpnk = fixdiv(
                Cpx {
                    r: nk.r,
                    i: (-(nk.i as i32)) as i16,
                },
                2,
            );
            let f1k = c_add(fpk, fpnk);
            let f2k = c_sub(fpk, fpnk);
            let tw = c_mul(f2k, self.super_twiddles[k - 1]);
            self.output[k] = Cpx {
                r: half(f1k.r as i32 + tw.r as i32),
                i: half(f1k.i as i32 + tw.i as i32),
            };
            self.output[NCFFT - k] = Cpx {
                r: half(f1k.r as i32 - tw.r as i32),
                i: half(tw.i as i32 - f1k.i as i32),
            };
        }
    }
}

// The tables must come from the C library's functions at run time, as in the reference:
// `black_box` keeps the compiler from constant-folding `log1pf`, `cosf` or `powf` with its own
// correctly rounded arithmetic, which differs from glibc's in the last bit for some inputs
// (log1pf(7500 / 700) does, and moves a mel band edge).
#[cfg(all(test, target_arch = "x86_64"))]
use std::hint::black_box;

#[cfg(all(test, target_arch = "x86_64"))]
fn freq_to_mel(freq: f32) -> f32 {
    1127.0f32 * black_box(freq / 700.0f32).ln_1p()
}

/// The mel filterbank in the C layout: per channel (plus one), a 4-aligned start into the
/// energies, a start into the weights and a width padded to a multiple of 4.
struct Filterbank {
    start_index: usize,
    end_index: usize,
    frequency_starts: Vec<usize>,
    weight_starts: Vec<usize>,
    widths: Vec<usize>,
    weights: Vec<i16>,
    unweights: Vec<i16>,
    work: Vec<u64>,
    energy: Vec<i32>,
}

impl Filterbank {
    #[cfg(all(test, target_arch = "x86_64"))]
    fn new() -> Filterbank {
        let channels1 = CHANNELS + 1;
        let spectrum_size = FFT_SIZE / 2 + 1;
        let (lower, upper) = (125.0f32, 7500.0f32);
        let mel_low = freq_to_mel(lower);
        let mel_hi = freq_to_mel(upper);
        let spacing = (mel_hi - mel_low) / channels1 as f32;
        let centers: Vec<f32> = (0..channels1)
            .map(|i| mel_low + spacing * (i + 1) as f32)
            .collect();
        let hz_per_sbin = 0.5f32 * SAMPLE_RATE as f32 / (spectrum_size as f32 - 1.0);
        let start_index = (1.5f32 + lower / hz_per_sbin) as usize;
        let (mut frequency_starts, mut weight_starts, mut widths) =
            (vec![0; channels1], vec![0; channels1], vec![0; channels1]);
        let (mut actual_starts, mut actual_widths) = (vec![0; channels1], vec![0; channels1]);
        let mut chan_start = start_index;
        let mut weight_start = 0;
        let mut needs_zeros = false;
        for chan in 0..channels1 {
            let mut freq = chan_start;
            while freq_to_mel(freq as f32 * hz_per_sbin) <= centers[chan] {
                freq += 1;
            }
            let width = freq - chan_start;
            actual_starts[chan] = chan_start;
            actual_widths[chan] = width;
            if width == 0 {
                frequency_starts[chan] = 0;
                weight_starts[chan] = 0;
                widths[chan] = 4;
                if !needs_zeros {
                    needs_zeros = true;
                    for w in weight_starts.iter_mut().take(chan) {
                        *w += 4;
                    }
                    weight_start += 4;
                }
            } else {
                // Index alignment: 4 bytes of i16 = 2 indices.
                let aligned = chan_start / 2 * 2;
                let aligned_width = chan_start - aligned + width;
                let padded = ((aligned_width - 1) / 4 + 1) * 4;
                frequency_starts[chan] = aligned;
                weight_starts[chan] = weight_start;
                widths[chan] = padded;
                weight_start += padded;
            }
            chan_start = freq;
        }
        let mut weights = vec![0i16; weight_start];
        let mut unweights = vec![0i16; weight_start];
        let mut end_index = 0;
        for chan in 0..channels1 {
            let mut frequency = actual_starts[chan];
            let offset = frequency - frequency_starts[chan];
            let denom = if chan == 0 {
                mel_low
            } else {
                centers[chan - 1]
            };
            for j in 0..actual_widths[chan] {
                let w = (centers[chan] - freq_to_mel(frequency as f32 * hz_per_sbin))
                    / (centers[chan] - denom);
                let idx = weight_starts[chan] + offset + j;
                weights[idx] = (w * (1 << FILTERBANK_BITS) as f32 + 0.5).floor() as i16;
                unweights[idx] = ((1.0 - w) * (1 << FILTERBANK_BITS) as f32 + 0.5).floor() as i16;
                frequency += 1;
            }
            end_index = end_index.max(frequency);
        }
        Filterbank {
            start_index,
            end_index,
            frequency_starts,
            weight_starts,
            widths,
            weights,
            unweights,
            work: vec![0; channels1],
            energy: vec![0; spectrum_size + 8],
        }
    }

    /// Energies, accumulation and square root (`FilterbankConvertFftComplexToEnergy`,
    /// `FilterbankAccumulateChannels`, `FilterbankSqrt`) into `out`.
    fn apply(&mut self, fft: &[Cpx], shift: u32, out: &mut [u32; CHANNELS]) {
        // The C code computes the energies in place over the FFT output, so entries outside
        // [start, end) still hold the complex values' bits; they only meet zero weights.
        for (e, c) in self.energy.iter_mut().zip(fft) {
            *e = (c.r as u16 as u32 | (c.i as u16 as u32) << 16) as i32;
        }
        let range = self.start_index..self.end_index;
        for (e, c) in self.energy[range.clone()].iter_mut().zip(&fft[range]) {
            let (r, im) = (c.r as i32, c.i as i32);
            *e = (r * r).wrapping_add(im * im);
        }
        let mut weight_acc: u64 = 0;
        let mut unweight_acc: u64 = 0;
        for chan in 0..=CHANNELS {
            let f0 = self.frequency_starts[chan];
            let w0 = self.weight_starts[chan];
            for j in 0..self.widths[chan] {
                let mag = self.energy.get(f0 + j).copied().unwrap_or(0) as i64 as u64;
                weight_acc =
                    weight_acc.wrapping_add((self.weights[w0 + j] as i64 as u64).wrapping_mul(mag));
                unweight_acc = unweight_acc
                    .wrapping_add((self.unweights[w0 + j] as i64 as u64).wrapping_mul(mag));
            }
            self.work[chan] = weight_acc;
            weight_acc = unweight_acc;
            unweight_acc = 0;
        }
        for (o, &w) in out.iter_mut().zip(&self.work[1..]) {
            *o = sqrt64(w) >> shift;
        }
    }
}

fn sqrt32(mut num: u32) -> u16 {
    if num == 0 {
        return 0;
    }
    let mut res: u32 = 0;
    let max_bit = (32 - msb32(num)) | 1;
    let mut bit: u32 = 1 << (31 - max_bit);
    let mut iterations = (31 - max_bit) / 2 + 1;
    while iterations > 0 {
        iterations -= 1;
        if num >= res + bit {
            num -= res + bit;
            res = (res >> 1) + bit;
        } else {
            res >>= 1;
        }
        bit >>= 2;
    }
    if num > res && res != 0xFFFF {
        res += 1;
    }
    res as u16
}

fn sqrt64(mut num: u64) -> u32 {
    if num >> 32 == 0 {
        return sqrt32(num as u32) as u32;
    }
    let mut res: u64 = 0;
    let max_bit = (64 - msb64(num)) | 1;
    let mut bit: u64 = 1 << (63 - max_bit);
    let mut iterations = (63 - max_bit) / 2 + 1;
    while iterations > 0 {
        iterations -= 1;
        if num >= res + bit {
            num -= res + bit;
            res = (res >> 1) + bit;
        } else {
            res >>= 1;
        }
        bit >>= 2;
    }
    if num > res && res != 0xFFFF_FFFF {
        res += 1;
    }
    res as u32
}

#[cfg(all(test, target_arch = "x86_64"))]
fn pcan_gain(input_bits: i32, x: u32) -> i16 {
    let x = x as f32 / (1u32 << input_bits) as f32;
    let gain = (1u32 << PCAN_GAIN_BITS) as f32 * black_box(x + 80.0f32).powf(black_box(-0.95f32));
    if gain > 32767.0 {
        32767
    } else {
        (gain + 0.5) as i16
    }
}

fn wide_dynamic(x: u32, lut: &[i16]) -> i16 {
    if x <= 2 {
        return lut[x as usize];
    }
    let interval = msb32(x) as i32;
    let l = &lut[(4 * interval - 6) as usize..];
    let frac = (if interval < 11 {
        x << (11 - interval)
    } else {
        x >> (interval - 11)
    } & 0x3FF) as i16 as i32;
    let mut result = (l[2] as i32 * frac) >> 5;
    result = result.wrapping_add(((l[1] as i32 as u32) << 5) as i32);
    result = result.wrapping_mul(frac);
    result = result.wrapping_add(1 << 14) >> 15;
    result = result.wrapping_add(l[0] as i32);
    result as i16
}

fn log2_fraction(x: u32, log2x: u32) -> u32 {
    let mut frac = (x as i64 - (1i64 << log2x)) as i32;
    if log2x < LOG_SCALE_LOG2 {
        frac <<= LOG_SCALE_LOG2 - log2x;
    } else {
        frac >>= log2x - LOG_SCALE_LOG2;
    }
    let base_seg = (frac as u32) >> (LOG_SCALE_LOG2 - LOG_SEGMENTS_LOG2);
    let seg_unit = (1u32 << LOG_SCALE_LOG2) >> LOG_SEGMENTS_LOG2;
    let c0 = LOG_LUT[base_seg as usize] as i32;
    let c1 = LOG_LUT[base_seg as usize + 1] as i32;
    let seg_base = (seg_unit * base_seg) as i32;
    let rel_pos = ((c1 - c0).wrapping_mul(frac - seg_base)) >> LOG_SCALE_LOG2;
    (frac + c0 + rel_pos) as u32
}

fn log_scaled(x: u32) -> u32 {
    let integer = msb32(x) - 1;
    let fraction = log2_fraction(x, integer);
    let log2 = (integer << LOG_SCALE_LOG2).wrapping_add(fraction);
    let round = 1u32 << (LOG_SCALE_LOG2 - 1);
    let loge = ((LOG_COEFF * log2 as u64 + round as u64) >> LOG_SCALE_LOG2) as u32;
    (loge << LOG_SCALE_SHIFT).wrapping_add(round) >> LOG_SCALE_LOG2
}

/// The streaming front end: push 16 kHz samples, get one frame of [`CHANNELS`] features every
/// [`STEP`] samples once the first [`WINDOW`] have arrived.
pub struct Frontend {
    coefficients: Vec<i16>,
    input: Vec<i16>,
    input_used: usize,
    window_out: Vec<i16>,
    fft: Fft,
    filterbank: Filterbank,
    even_smoothing: u32,
    odd_smoothing: u32,
    min_signal_remaining: u32,
    estimate: [u32; CHANNELS],
    gain_lut: Vec<i16>,
    snr_shift: i32,
}

impl Default for Frontend {
    fn default() -> Self {
        Self::new()
    }
}

impl Frontend {
    /// A front end with microWakeWord's settings, its state reset.
    pub fn new() -> Frontend {
        use super::frontend_tables as t;
        let cpx = |v: &[i16]| -> Vec<Cpx> {
            v.chunks_exact(2)
                .map(|c| Cpx { r: c[0], i: c[1] })
                .collect()
        };
        let usizes = |v: &[u16]| -> Vec<usize> { v.iter().map(|&x| x as usize).collect() };
        let input_correction_bits = msb32(FFT_SIZE as u32) as i32 - 1 - FILTERBANK_BITS / 2;
        let fixed = |v: f32| (v * (1u32 << NOISE_REDUCTION_BITS) as f32) as u16 as u32;
        Frontend {
            coefficients: t::COEFFICIENTS.to_vec(),
            input: vec![0; WINDOW],
            input_used: 0,
            window_out: vec![0; WINDOW],
            fft: Fft {
                twiddles: cpx(&t::TWIDDLES),
                super_twiddles: cpx(&t::SUPER_TWIDDLES),
                factors: [4, 64, 4, 16, 4, 4, 4, 1],
                tmp: vec![Cpx::default(); NCFFT],
                input: vec![0; FFT_SIZE],
                output: vec![Cpx::default(); NCFFT + 1],
            },
            filterbank: Filterbank {
                start_index: t::START_INDEX,
                end_index: t::END_INDEX,
                frequency_starts: usizes(&t::FREQUENCY_STARTS),
                weight_starts: usizes(&t::WEIGHT_STARTS),
                widths: usizes(&t::WIDTHS),
                weights: t::WEIGHTS.to_vec(),
                unweights: t::UNWEIGHTS.to_vec(),
                work: vec![0; CHANNELS + 1],
                energy: vec![0; FFT_SIZE / 2 + 1 + 8],
            },
            even_smoothing: fixed(0.025),
            odd_smoothing: fixed(0.06),
            min_signal_remaining: fixed(0.05),
            estimate: [0; CHANNELS],
            gain_lut: t::GAIN_LUT.to_vec(),
            snr_shift: PCAN_GAIN_BITS - input_correction_bits - PCAN_SNR_BITS,
        }
    }

    /// The front end with its tables computed the reference's way (C library calls).
    #[cfg(all(test, target_arch = "x86_64"))]
    fn computed() -> Frontend {
        let arg = std::f32::consts::PI * 2.0 / WINDOW as f32;
        let coefficients = (0..WINDOW)
            .map(|i| {
                let v = 0.5f32 - 0.5f32 * black_box(arg * (i as f32 + 0.5)).cos();
                (v * (1 << WINDOW_BITS) as f32 + 0.5).floor() as i16
            })
            .collect();
        let input_correction_bits = msb32(FFT_SIZE as u32) as i32 - 1 - FILTERBANK_BITS / 2;
        let input_bits = SMOOTHING_BITS as i32 - input_correction_bits;
        let mut gain_lut = vec![0i16; 4 * WIDE_DYNAMIC_BITS - 3];
        gain_lut[0] = pcan_gain(input_bits, 0);
        gain_lut[1] = pcan_gain(input_bits, 1);
        for interval in 2..=WIDE_DYNAMIC_BITS {
            let x0 = 1u32 << (interval - 1);
            let x1 = x0 + (x0 >> 1);
            let x2 = if interval == WIDE_DYNAMIC_BITS {
                x0 + (x0 - 1)
            } else {
                2 * x0
            };
            let y0 = pcan_gain(input_bits, x0);
            let y1 = pcan_gain(input_bits, x1);
            let y2 = pcan_gain(input_bits, x2);
            let diff1 = y1 as i32 - y0 as i32;
            let diff2 = y2 as i32 - y0 as i32;
            let a1 = 4 * diff1 - diff2;
            let a2 = diff2 - a1;
            let at = 4 * interval - 6;
            gain_lut[at] = y0;
            gain_lut[at + 1] = a1 as i16;
            gain_lut[at + 2] = a2 as i16;
        }
        let fixed = |v: f32| (v * (1u32 << NOISE_REDUCTION_BITS) as f32) as u16 as u32;
        Frontend {
            coefficients,
            input: vec![0; WINDOW],
            input_used: 0,
            window_out: vec![0; WINDOW],
            fft: Fft::new(),
            filterbank: Filterbank::new(),
            even_smoothing: fixed(0.025),
            odd_smoothing: fixed(0.06),
            min_signal_remaining: fixed(0.05),
            estimate: [0; CHANNELS],
            gain_lut,
            snr_shift: PCAN_GAIN_BITS - input_correction_bits - PCAN_SNR_BITS,
        }
    }

    /// Back to the state after [`Frontend::new`] (`FrontendReset`).
    pub fn reset(&mut self) {
        self.input.fill(0);
        self.window_out.fill(0);
        self.input_used = 0;
        self.fft.input.fill(0);
        self.fft.output.fill(Cpx::default());
        self.filterbank.work.fill(0);
        self.estimate = [0; CHANNELS];
    }

    /// Feeds samples; calls `out` with each completed frame. Returns how many frames.
    pub fn push(&mut self, mut samples: &[i16], mut out: impl FnMut(&[u16; CHANNELS])) -> usize {
        let mut frames = 0;
        while !samples.is_empty() {
            let take = (WINDOW - self.input_used).min(samples.len());
            self.input[self.input_used..self.input_used + take].copy_from_slice(&samples[..take]);
            self.input_used += take;
            samples = &samples[take..];
            if self.input_used == WINDOW {
                let frame = self.frame();
                out(&frame);
                frames += 1;
            }
        }
        frames
    }

    /// One frame from a full window (`FrontendProcessSamples`), then shift the window by a step.
    fn frame(&mut self) -> [u16; CHANNELS] {
        let mut max_abs: i16 = 0;
        for ((o, &x), &c) in self
            .window_out
            .iter_mut()
            .zip(&self.input)
            .zip(&self.coefficients)
        {
            let v = ((x as i32 * c as i32) >> WINDOW_BITS) as i16;
            *o = v;
            let a = if v < 0 { v.wrapping_neg() } else { v };
            max_abs = max_abs.max(a);
        }
        self.input.copy_within(STEP.., 0);
        self.input_used -= STEP;

        let shift = 15 - msb32(max_abs as u16 as u32);
        self.fft.compute(&self.window_out, shift);
        let mut signal = [0u32; CHANNELS];
        self.filterbank.apply(&self.fft.output, shift, &mut signal);

        // Noise reduction.
        for (i, s) in signal.iter_mut().enumerate() {
            let smoothing = if i & 1 == 0 {
                self.even_smoothing
            } else {
                self.odd_smoothing
            };
            let one_minus = (1u32 << NOISE_REDUCTION_BITS) - smoothing;
            let scaled = *s << SMOOTHING_BITS;
            let mut estimate = ((scaled as u64 * smoothing as u64
                + self.estimate[i] as u64 * one_minus as u64)
                >> NOISE_REDUCTION_BITS) as u32;
            self.estimate[i] = estimate;
            estimate = estimate.min(scaled);
            let floor =
                ((*s as u64 * self.min_signal_remaining as u64) >> NOISE_REDUCTION_BITS) as u32;
            let subtracted = (scaled - estimate) >> SMOOTHING_BITS;
            *s = subtracted.max(floor);
        }

        // PCAN gain control.
        for (i, s) in signal.iter_mut().enumerate() {
            let gain = wide_dynamic(self.estimate[i], &self.gain_lut) as i32 as u32;
            let snr = ((*s as u64 * gain as u64) >> self.snr_shift) as u32;
            *s = if snr < (2 << PCAN_SNR_BITS) {
                snr.wrapping_mul(snr) >> (2 + 2 * PCAN_SNR_BITS as u32 - PCAN_OUTPUT_BITS)
            } else {
                (snr >> (PCAN_SNR_BITS as u32 - PCAN_OUTPUT_BITS))
                    .wrapping_sub(1 << PCAN_OUTPUT_BITS)
            };
        }

        // Log scale.
        let correction_bits = msb32(FFT_SIZE as u32) as i32 - 1 - FILTERBANK_BITS / 2;
        let mut out = [0u16; CHANNELS];
        for (o, &s) in out.iter_mut().zip(&signal) {
            let mut v = if correction_bits < 0 {
                s >> -correction_bits
            } else {
                s << correction_bits
            };
            v = if v > 1 { log_scaled(v) } else { 0 };
            *o = v.min(0xFFFF) as u16;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_helpers_match_the_c_definitions() {
        assert_eq!(sqrt32(0), 0);
        assert_eq!(sqrt32(16), 4);
        assert_eq!(sqrt32(17), 4);
        assert_eq!(sqrt32(21), 5); // 4.58 rounds up
        assert_eq!(sqrt32(u32::MAX), 0xFFFF);
        assert_eq!(sqrt64(1 << 40), 1 << 20);
        assert_eq!(msb32(0), 0);
        assert_eq!(msb32(1), 1);
        assert_eq!(msb32(0x8000_0000), 32);
        // log(2^16) * 64 = 709.78
        assert_eq!(log_scaled(1 << 16), 710);
    }

    #[test]
    fn silence_gives_zero_features_and_frames_arrive_every_step() {
        let mut f = Frontend::new();
        let mut frames = Vec::new();
        assert_eq!(f.push(&[0i16; WINDOW - 1], |x| frames.push(*x)), 0);
        assert_eq!(f.push(&[0i16; 1 + 2 * STEP], |x| frames.push(*x)), 3);
        assert!(frames.iter().all(|fr| fr.iter().all(|&v| v == 0)));
    }
}

// x86-64 only: the reference computed the tables there (see the test).
#[cfg(all(test, target_arch = "x86_64"))]
mod tables_check {
    use super::*;
    use std::fmt::Write;

    fn list<T: std::fmt::Display>(
        out: &mut String,
        name: &str,
        ty: &str,
        v: impl Iterator<Item = T>,
    ) {
        let items: Vec<String> = v.map(|x| x.to_string()).collect();
        let n = items.len();
        writeln!(out, "pub(super) const {name}: [{ty}; {n}] = [").unwrap();
        for chunk in items.chunks(16) {
            writeln!(out, "    {},", chunk.join(", ")).unwrap();
        }
        writeln!(out, "];").unwrap();
    }

    /// The source of `frontend_tables.rs` for the tables of `f`.
    fn source(f: &Frontend) -> String {
        let mut out = String::from(
            "//! The front end's tables as `pymicro-features` 2.0.2 computes them on x86-64 with glibc\n\
             //! (`cosf`, `log1pf`, `powf`, `cos`, `sin`), so that every platform gets the reference's\n\
             //! features. Generated by `SOTAD_WAKE_TABLES_OUT=engines/src/wake/frontend_tables.rs cargo\n\
             //! test --release -p sotad-engines --lib embedded_tables` on x86-64; that test checks them.\n\n",
        );
        let fb = &f.filterbank;
        writeln!(
            out,
            "pub(super) const START_INDEX: usize = {};",
            fb.start_index
        )
        .unwrap();
        writeln!(out, "pub(super) const END_INDEX: usize = {};", fb.end_index).unwrap();
        list(&mut out, "COEFFICIENTS", "i16", f.coefficients.iter());
        list(
            &mut out,
            "TWIDDLES",
            "i16",
            f.fft.twiddles.iter().flat_map(|c| [c.r, c.i]),
        );
        list(
            &mut out,
            "SUPER_TWIDDLES",
            "i16",
            f.fft.super_twiddles.iter().flat_map(|c| [c.r, c.i]),
        );
        list(
            &mut out,
            "FREQUENCY_STARTS",
            "u16",
            fb.frequency_starts.iter(),
        );
        list(&mut out, "WEIGHT_STARTS", "u16", fb.weight_starts.iter());
        list(&mut out, "WIDTHS", "u16", fb.widths.iter());
        list(&mut out, "WEIGHTS", "i16", fb.weights.iter());
        list(&mut out, "UNWEIGHTS", "i16", fb.unweights.iter());
        list(&mut out, "GAIN_LUT", "i16", f.gain_lut.iter());
        out
    }

    /// On x86-64 (the reference's platform) the tables computed with the C library equal the
    /// embedded ones; elsewhere the C library may round differently, which is why they are
    /// embedded.
    #[test]
    fn embedded_tables_are_the_computed_ones() {
        let computed = source(&Frontend::computed());
        if let Some(path) = std::env::var_os("SOTAD_WAKE_TABLES_OUT") {
            std::fs::write(path, &computed).unwrap();
        }
        assert_eq!(source(&Frontend::new()), computed);
    }
}
