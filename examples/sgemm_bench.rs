//! The f32 dense kernel alone: GFLOP/s of `sgemm::dense` on the encoder's four
//! shapes, at batch-1 and batched token counts, on `--threads` threads (default 1, as
//! the served workers run), next to one core's FMA peak (a register-only loop of
//! independent multiply-adds).
//!
//!     cargo run --release --example sgemm_bench [-- --rows 18,190,758 --threads 1]

use std::time::Instant;

use celeriac::model::sgemm;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: Vec<usize> = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .map_or("18,190,758".to_string(), Clone::clone)
        .split(',')
        .map(|r| r.parse().expect("--rows: token counts"))
        .collect();
    let threads: usize = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .map_or(1, |t| t.parse().expect("--threads: a count"));
    // `dense` splits panels over the calling rayon pool: outside one it would use the
    // global pool, one thread per CPU.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    pool.install(|| run(&rows, threads));
}

fn run(rows: &[usize], threads: usize) {
    let isa = sgemm::isa().expect("sgemm needs AVX2 and FMA");
    println!(
        "kernel {}, {threads} thread(s); one core's FMA peak {:.1} GFLOP/s",
        isa.as_str(),
        peak()
    );
    // The encoder's shapes: QKV, attention out, intermediate, output.
    let shapes = [(384, 1152), (384, 384), (384, 1536), (1536, 384)];
    for &m in rows {
        let mut total = (0.0, 0.0);
        for &(inp, out) in &shapes {
            let w: Vec<f32> = (0..inp * out)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let panels = sgemm::pack(&w, inp, out);
            let x: Vec<f32> = (0..m * inp)
                .map(|i| ((i * 104729) % 997) as f32 * 1e-3 - 0.5)
                .collect();
            let mut o = vec![0f32; m * out];
            let bias = vec![0.5f32; out];
            // Each call streams its weight as the model does: cycle through 6 copies
            // (the model's 6 layers).
            // (HOT=1: one copy, cached after the first call.)
            let copies = if std::env::var_os("HOT").is_some() {
                1
            } else {
                // The model's 6 layers of this shape stream from the last-level
                // cache, as they do in a forward pass.
                6
            };
            let all: Vec<Vec<f32>> = (0..copies).map(|_| panels.clone()).collect();
            let flop = 2.0 * (m * inp * out) as f64;
            let reps = ((2e9 / flop) as usize).max(copies);
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                for r in 0..reps {
                    sgemm::dense(
                        isa,
                        &x,
                        inp,
                        &all[r % copies],
                        Some(&bias),
                        sgemm::Write::Add,
                        &mut o,
                        out,
                    );
                }
                times.push(t.elapsed().as_secs_f64() / reps as f64);
            }
            times.sort_by(f64::total_cmp);
            let s = times[2];
            total.0 += flop;
            total.1 += s;
            println!(
                "  rows {m:>4} {inp:>4}→{out:<4}: {:>7.1} µs  {:>6.1} GFLOP/s",
                s * 1e6,
                flop / s / 1e9
            );
        }
        println!(
            "  rows {m:>4} all four: {:.1} GFLOP/s",
            total.0 / total.1 / 1e9
        );
    }
}

/// GFLOP/s of a loop of independent FMAs held in registers.
fn peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected.
            return unsafe { peak_512() };
        }
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA were detected.
            return unsafe { peak_256() };
        }
    }
    0.0
}

/// A register-only FMA loop for one vector width: `$acc` independent accumulators of
/// `$lanes` floats (enough to cover the FMA latency on two ports).
macro_rules! peak {
    ($name:ident, $features:literal, $set1:ident, $fma:ident, $acc:literal, $lanes:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name() -> f64 {
            use std::arch::x86_64::*;
            let (b, c) = ($set1(1.000_000_1), $set1(1e-8));
            let mut a = [$set1(0.0); $acc];
            let n = 20_000_000u64;
            let t = Instant::now();
            for _ in 0..n {
                for v in a.iter_mut() {
                    *v = $fma(*v, b, c);
                }
            }
            let s = t.elapsed().as_secs_f64();
            std::hint::black_box(a);
            n as f64 * $acc as f64 * 2.0 * $lanes as f64 / s / 1e9
        }
    };
}
peak!(peak_512, "avx512f", _mm512_set1_ps, _mm512_fmadd_ps, 16, 16);
peak!(peak_256, "avx2,fma", _mm256_set1_ps, _mm256_fmadd_ps, 12, 8);
