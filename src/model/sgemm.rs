//! The dense layers' matrix product on AVX-512 or AVX2 + FMA (chosen once, at run
//! time), with weights packed once at load.
//!
//! `out[t, o] += Σ_k x[t, k] · w[o, k]` for a `[rows, inp]` activation `x` and a weight
//! packed into panels of [`PANEL`] outputs: panel `p` holds `w[16p..16p+16, k]` for
//! every `k`, the 16 values of one `k` side by side. A micro-tile of up to
//! [`TILE_ROWS`] tokens × 16 outputs keeps its 12 accumulators in registers; per `k` it
//! loads the panel's two vectors once and broadcasts each token's `x[t, k]`. The loop
//! runs panel by panel, in blocks of [`KC`] along `k`, so a panel's block stays in L1
//! while every token tile passes over it.
//!
//! With AVX-512F the micro-tile spans two panels (32 outputs, one 512-bit vector each):
//! 6 tokens × 2 accumulators, so each broadcast feeds 32 multiply-adds instead of 16,
//! in half the instructions. `CELERIAC_ISA=avx2` forces the AVX2 kernel (tests, and
//! side-by-side benchmarks on one machine).
//!
//! Packing the weight at load leaves nothing to pack per call, which is where the
//! `gemm` crate spends a share of its time on these shapes (BENCHMARKS.md).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Outputs per weight panel (two AVX vectors).
pub const PANEL: usize = 16;
/// Tokens per micro-tile: 6 × 2 accumulators, 2 panel vectors and one broadcast fill
/// 15 of the 16 AVX registers.
pub const TILE_ROWS: usize = 6;
/// Block along `k`: a panel's block (16 KiB) and a tile's rows (6 KiB) fit in L1.
pub const KC: usize = 256;
/// Activation rows per block: a block's [`KC`]-wide slice takes at most 256 KiB, so it
/// stays in L2 while every panel passes over it (252 rows).
pub const ROW_BLOCK: usize = 256 * 1024 / (KC * 4) / TILE_ROWS * TILE_ROWS;

/// The instruction set a kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: two panels per micro-tile.
    Avx512,
    /// AVX2 + FMA: one panel per micro-tile.
    Avx2,
}

impl Isa {
    /// Its name, for logs and benchmarks.
    pub fn as_str(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2 => "avx2+fma",
        }
    }

    /// Whether this CPU runs it.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                // F for the kernel; BW, VL, AVX2 and FMA for the element-wise
                // kernels' AVX-512 build, which is chosen with it.
                Isa::Avx512 => {
                    std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                        && std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// A cap on the kernels chosen at run time, from `CELERIAC_ISA` (tests, and
/// side-by-side benchmarks on one machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// Unset: the widest kernel the CPU runs.
    None,
    /// `CELERIAC_ISA=avx512`: no AMX tiles (bf16 and int8 on AVX-512's dot products).
    Avx512,
    /// `CELERIAC_ISA=avx2`: nothing wider than AVX2 + FMA.
    Avx2,
    /// `CELERIAC_ISA=generic`: no SIMD kernel of our own (f32 goes through the `gemm`
    /// crate, bf16 and int8 through plain loops).
    Generic,
}

/// `CELERIAC_ISA`, read once. Any other value than `avx512`, `avx2` or `generic` is
/// ignored with a warning.
pub fn cap() -> Cap {
    static CAP: std::sync::OnceLock<Cap> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("CELERIAC_ISA").as_deref() {
        Err(_) | Ok("") => Cap::None,
        Ok("avx512") => Cap::Avx512,
        Ok("avx2") => Cap::Avx2,
        Ok("generic") => Cap::Generic,
        Ok(other) => {
            tracing::warn!(
                value = other,
                "CELERIAC_ISA is `avx512`, `avx2`, `generic` or unset: ignored"
            );
            Cap::None
        }
    })
}

/// The kernel [`dense_acc`] uses: the widest this CPU runs, chosen once, within
/// [`cap`]. `None` when not even AVX2 + FMA is there (or `CELERIAC_ISA=generic`).
pub fn isa() -> Option<Isa> {
    static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .filter(|i| match cap() {
                Cap::None | Cap::Avx512 => true,
                Cap::Avx2 => *i == Isa::Avx2,
                Cap::Generic => false,
            })
            .find(|i| i.supported())
    })
}

/// Whether [`dense_acc`] runs here (AVX2 and FMA at least, not capped off).
pub fn available() -> bool {
    isa().is_some()
}

/// Packs a weight given transposed, `[inp, out]` row-major, into panels
/// (`out` a multiple of [`PANEL`]).
pub fn pack(weight_t: &[f32], inp: usize, out: usize) -> Vec<f32> {
    assert!(out.is_multiple_of(PANEL) && weight_t.len() == inp * out);
    let mut panels = Vec::with_capacity(inp * out);
    for p in 0..out / PANEL {
        for k in 0..inp {
            panels.extend_from_slice(&weight_t[k * out + p * PANEL..][..PANEL]);
        }
    }
    panels
}

/// `out += x · wᵀ`: `x` is `[rows, inp]`, `out` `[rows, n_out]`, both row-major, and
/// `panels` the weight packed by [`pack`]. Panels are shared among the calling rayon
/// pool's threads when it has more than one.
///
/// # Panics
/// When the shapes disagree, or when [`available`] is false.
pub fn dense_acc(x: &[f32], inp: usize, panels: &[f32], out: &mut [f32], n_out: usize) {
    let isa = isa().expect("sgemm::dense_acc needs AVX2 and FMA");
    dense_acc_with(isa, x, inp, panels, out, n_out)
}

/// [`dense_acc`] with a given kernel (tests run every kernel the CPU supports).
///
/// # Panics
/// As [`dense_acc`], and when the CPU does not run `isa`.
pub fn dense_acc_with(
    isa: Isa,
    x: &[f32],
    inp: usize,
    panels: &[f32],
    out: &mut [f32],
    n_out: usize,
) {
    assert!(isa.supported(), "this CPU does not run {}", isa.as_str());
    assert!(inp > 0 && n_out.is_multiple_of(PANEL));
    let rows = x.len() / inp;
    assert_eq!(x.len(), rows * inp);
    assert_eq!(out.len(), rows * n_out);
    assert_eq!(panels.len(), inp * n_out);
    // k in blocks of KC; rows in blocks whose KC-wide slice stays in L2 while every
    // panel passes over it; a panel's KC block stays in L1 while the block's tiles
    // pass over it.
    let block = ROW_BLOCK;
    let count = n_out / PANEL;
    let dst = SendPtr(out.as_mut_ptr());
    // The row block's KC-wide slice, repacked tile by tile as `[tile][k][TILE_ROWS]`,
    // so the kernel's broadcasts read one sequential stream.
    let mut xp = vec![0f32; rows.min(block).div_ceil(TILE_ROWS) * TILE_ROWS * KC];
    for k0 in (0..inp).step_by(KC) {
        let kc = KC.min(inp - k0);
        for r0 in (0..rows).step_by(block) {
            let n = block.min(rows - r0);
            for (t, tile) in xp
                .chunks_exact_mut(kc * TILE_ROWS)
                .take(n.div_ceil(TILE_ROWS))
                .enumerate()
            {
                for r in 0..TILE_ROWS.min(n - t * TILE_ROWS) {
                    let row = &x[(r0 + t * TILE_ROWS + r) * inp + k0..][..kc];
                    for (k, &v) in row.iter().enumerate() {
                        tile[k * TILE_ROWS + r] = v;
                    }
                }
            }
            let xp = &xp;
            // A unit of work: one panel (AVX2), or two adjacent ones (AVX-512; the
            // last alone when the count is odd).
            let per = if isa == Isa::Avx512 { 2 } else { 1 };
            let run = |u: usize| {
                let p = u * per;
                let w = |p: usize| {
                    // SAFETY: `p < count`, so panel `p`'s rows `k0..k0+kc` are inside
                    // `panels` (its length is asserted above).
                    unsafe { panels.as_ptr().add(p * inp * PANEL + k0 * PANEL) }
                };
                // SAFETY: the CPU runs `isa` (asserted above). Unit `u` writes only
                // columns `16p..16p+16·per`, so units never touch the same element;
                // rows `r0..r0+n`, columns `k0..k0+kc` of `x` and the panels' rows
                // `k0..k0+kc` are inside the slices whose shapes are asserted above.
                unsafe {
                    let o = dst.get().add(r0 * n_out + p * PANEL);
                    match isa {
                        Isa::Avx512 if p + 1 < count => {
                            panel_512(xp.as_ptr(), n, [w(p), w(p + 1)], kc, o, n_out)
                        }
                        Isa::Avx512 => panel_512(xp.as_ptr(), n, [w(p)], kc, o, n_out),
                        Isa::Avx2 => panel(xp.as_ptr(), n, w(p), kc, o, n_out),
                    }
                }
            };
            let units = count.div_ceil(per);
            if rayon::current_num_threads() > 1 {
                use rayon::prelude::*;
                (0..units).into_par_iter().for_each(run);
            } else {
                (0..units).for_each(run);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: threads write disjoint columns through it (see `dense_acc`).
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: shared only to write disjoint columns.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One panel over one block of rows and of `k`: `xp` the block's rows repacked
/// (`[tile][k][TILE_ROWS]`), `w` at the panel's first `k` of the block, `out` at the
/// block's first row and the panel's first column (row stride `ldo`).
///
/// # Safety
/// AVX2 and FMA are present; `xp` holds `rows.div_ceil(TILE_ROWS) * kc * TILE_ROWS`
/// values, `w` holds `kc * PANEL`, and `out` has `rows` rows of at least `PANEL`
/// writable columns at stride `ldo`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn panel(xp: *const f32, rows: usize, w: *const f32, kc: usize, out: *mut f32, ldo: usize) {
    let mut t = 0;
    while t + TILE_ROWS <= rows {
        // SAFETY: tile `t / TILE_ROWS` is whole (`t + TILE_ROWS <= rows`), so its
        // repacked rows and its `TILE_ROWS` output rows are inside the caller's bounds.
        unsafe { tile::<TILE_ROWS>(xp.add(t * kc), w, kc, out.add(t * ldo), ldo) };
        t += TILE_ROWS;
    }
    // SAFETY: `t <= rows`: at most one past the last whole tile, inside the buffers.
    let (xs, os) = unsafe { (xp.add(t * kc), out.add(t * ldo)) };
    // SAFETY: the last tile has `rows - t < TILE_ROWS` rows, each inside the caller's
    // bounds; `tile::<R>` touches only its first `R`.
    unsafe {
        match rows - t {
            0 => {}
            1 => tile::<1>(xs, w, kc, os, ldo),
            2 => tile::<2>(xs, w, kc, os, ldo),
            3 => tile::<3>(xs, w, kc, os, ldo),
            4 => tile::<4>(xs, w, kc, os, ldo),
            _ => tile::<5>(xs, w, kc, os, ldo),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn panel(_: *const f32, _: usize, _: *const f32, _: usize, _: *mut f32, _: usize) {
    unreachable!("sgemm needs x86_64 AVX2")
}

/// `R` tokens × 16 outputs over `kc` values of `k`: `xp` the tile's rows repacked
/// (`[k][TILE_ROWS]`, the first `R` of each `k` used), `w` at the panel's first `k`,
/// `out` at the tile's first element, row stride `ldo`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
/// # Safety
/// AVX2 and FMA are present; `xp` holds `kc * TILE_ROWS` values, `w` holds
/// `kc * PANEL`, and `out` has `R` rows of `PANEL` writable columns at stride `ldo`.
unsafe fn tile<const R: usize>(
    xp: *const f32,
    w: *const f32,
    kc: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for k in 0..kc {
        // SAFETY: `k < kc`, and the caller keeps `kc` values of `k` inside the panel
        // (`w`) and the repacked rows (`xp`).
        unsafe {
            let w0 = _mm256_loadu_ps(w.add(k * PANEL));
            let w1 = _mm256_loadu_ps(w.add(k * PANEL + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*xp.add(k * TILE_ROWS + r));
                a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: row `r < R` of the tile, 16 columns inside `out`.
        unsafe {
            let o = out.add(r * ldo);
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a[0]));
            _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_loadu_ps(o.add(8)), a[1]));
        }
    }
}

/// [`panel`] on AVX-512 over `P` adjacent panels (two, or one for an odd last panel):
/// `w[i]` at panel `i`'s first `k` of the block, `out` at the first panel's first
/// column (`P * PANEL` columns written).
///
/// # Safety
/// AVX-512F is present; as [`panel`], with every panel's `kc * PANEL` values readable
/// and `P * PANEL` writable columns per output row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn panel_512<const P: usize>(
    xp: *const f32,
    rows: usize,
    w: [*const f32; P],
    kc: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut t = 0;
    while t < rows {
        // SAFETY: tile `t / TILE_ROWS` has `min(TILE_ROWS, rows - t)` rows inside the
        // caller's bounds.
        unsafe {
            let (xs, os) = (xp.add(t * kc), out.add(t * ldo));
            match TILE_ROWS.min(rows - t) {
                6 => tile_512::<6, P>(xs, w, kc, os, ldo),
                5 => tile_512::<5, P>(xs, w, kc, os, ldo),
                4 => tile_512::<4, P>(xs, w, kc, os, ldo),
                3 => tile_512::<3, P>(xs, w, kc, os, ldo),
                2 => tile_512::<2, P>(xs, w, kc, os, ldo),
                _ => tile_512::<1, P>(xs, w, kc, os, ldo),
            }
        }
        t += TILE_ROWS;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn panel_512<const P: usize>(
    _: *const f32,
    _: usize,
    _: [*const f32; P],
    _: usize,
    _: *mut f32,
    _: usize,
) {
    unreachable!("AVX-512 needs x86_64")
}

/// `R` tokens × `P * 16` outputs (`P` panels) over `kc` values of `k`, as [`tile`].
///
/// # Safety
/// AVX-512F is present; `xp` holds `kc * TILE_ROWS` values, each `w[i]` holds
/// `kc * PANEL`, and `out` has `R` rows of `P * PANEL` writable columns at stride `ldo`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_512<const R: usize, const P: usize>(
    xp: *const f32,
    w: [*const f32; P],
    kc: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for k in 0..kc {
        // SAFETY: `k < kc`, inside every panel's block and the repacked rows.
        unsafe {
            let wv = w.map(|w| _mm512_loadu_ps(w.add(k * PANEL)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(k * TILE_ROWS + r));
                for (a, wv) in acc.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wv, *a);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: row `r < R` of the tile, columns `16i..16i+16` inside `out`.
            unsafe {
                let o = out.add(r * ldo + i * PANEL);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), *a));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_product_on_ragged_shapes() {
        if !available() {
            return;
        }
        // Rows not a multiple of the tile, k longer than one block and not a multiple,
        // rows over more than one row block.
        for (rows, inp, out) in [
            (1, 3, 16),
            (7, 300, 32),
            (13, 600, 48),
            (2, 384, 1536),
            (6, 256, 16),
            (ROW_BLOCK + 7, 270, 16),
        ] {
            let x: Vec<f32> = (0..rows * inp)
                .map(|i| ((i * 31 % 97) as f32 - 48.0) * 0.01)
                .collect();
            let w: Vec<f32> = (0..out * inp)
                .map(|i| ((i * 17 % 89) as f32 - 44.0) * 0.01)
                .collect();
            let mut wt = vec![0f32; inp * out];
            for o in 0..out {
                for k in 0..inp {
                    wt[k * out + o] = w[o * inp + k];
                }
            }
            let start: Vec<f32> = (0..rows * out).map(|i| i as f32 * 0.5).collect();
            for isa in [Isa::Avx512, Isa::Avx2] {
                if !isa.supported() {
                    eprintln!(
                        "sgemm: this CPU does not run {}: not tested here",
                        isa.as_str()
                    );
                    continue;
                }
                let mut got = start.clone();
                dense_acc_with(isa, &x, inp, &pack(&wt, inp, out), &mut got, out);
                for t in 0..rows {
                    for o in 0..out {
                        let want = start[t * out + o] as f64
                            + (0..inp)
                                .map(|k| x[t * inp + k] as f64 * w[o * inp + k] as f64)
                                .sum::<f64>();
                        let g = got[t * out + o] as f64;
                        assert!(
                            (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{} {rows}x{inp}x{out} at ({t}, {o}): {g} vs {want}",
                            isa.as_str()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn threads_split_panels_without_changing_the_result() {
        if !available() {
            return;
        }
        let (rows, inp, out) = (11, 384, 64);
        let x: Vec<f32> = (0..rows * inp).map(|i| (i % 13) as f32 * 0.1).collect();
        let wt: Vec<f32> = (0..inp * out).map(|i| (i % 7) as f32 * -0.1).collect();
        let panels = pack(&wt, inp, out);
        let mut one = vec![1f32; rows * out];
        dense_acc(&x, inp, &panels, &mut one, out);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut two = vec![1f32; rows * out];
        pool.install(|| dense_acc(&x, inp, &panels, &mut two, out));
        assert_eq!(one, two);
    }
}
