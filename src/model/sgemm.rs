//! The dense layers' matrix product on AVX-512 or AVX2 + FMA (chosen once, at run
//! time), with weights packed once at load.
//!
//! `out[t, o] += Σ_k x[t, k] · w[o, k]` for a `[rows, inp]` activation `x` and a weight
//! packed into panels of [`PANEL`] outputs: panel `p` holds `w[16p..16p+16, k]` for
//! every `k`, the 16 values of one `k` side by side, and the panels follow each other,
//! so the whole weight is one sequential stream.
//!
//! **AVX2.** A micro-tile of up to [`TILE_ROWS`] tokens × 16 outputs keeps its 12
//! accumulators in registers; per `k` it loads the panel's two vectors once and
//! broadcasts each token's `x[t, k]`. The loop runs panel by panel, in blocks of [`KC`]
//! along `k`, so a panel's block stays in L1 while every token tile passes over it.
//!
//! **AVX-512F.** A pass of up to [`PASS_ROWS`] tokens × two panels (32 outputs, one
//! 512-bit vector each) keeps 24 accumulators in registers and runs over the whole of
//! `k`, prefetching the panels ahead. Batch 1 (one text, about 20 tokens) is then one or
//! two passes per panel pair that read the weight once, front to back, as the
//! multiply-adds run; the blocked loop above made its first tile wait on each block's
//! weights and left the other tiles with nothing to load. Batches go in row blocks
//! that stay in L2, each pass reusing the panel pair from L1 or L2.
//! `CELERIAC_ISA=avx2` forces the AVX2 kernel (tests, and side-by-side benchmarks on one
//! machine).
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

/// The kernel the encoder runs [`dense`] on: the widest this CPU runs, chosen once, within
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

/// Whether [`dense`] runs here (AVX2 and FMA at least, not capped off).
pub fn available() -> bool {
    isa().is_some()
}

/// GELU (the erf form) in place, on the widest ISA here: the intermediate layer's
/// activation, fused into [`dense`]'s epilogue and run on its own by the heads.
pub fn gelu(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        // SAFETY: the ISA's features were detected.
        Some(Isa::Avx512) => return unsafe { gelu_avx512(x) },
        // SAFETY: AVX2 and FMA were detected.
        Some(Isa::Avx2) => return unsafe { gelu_avx2(x) },
        None => {}
    }
    gelu_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn gelu_avx512(x: &mut [f32]) {
    gelu_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: &mut [f32]) {
    gelu_body(x)
}

#[inline(always)]
pub(super) fn gelu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        let t = *v;
        *v = 0.5 * t * (1.0 + erf(t * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `erf(x)`, as a rational function on [-4, 4] (|error| < 1e-6 against libm; `erf` is
/// ±1 in f32 beyond ±4). Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_2e-3;
    q = q * x2 - 1.426_473_9e-2;
    x * p / q
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

/// What a product does with its output, in the kernel's last step (no separate pass
/// over the output for the bias or the residual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `out = x · wᵀ + bias`: the output's previous contents are not read.
    Set,
    /// `out += x · wᵀ + bias`: a residual connection.
    Add,
    /// `out = gelu(x · wᵀ + bias)` (the erf form): the intermediate layer, its
    /// activation taken as the sums are stored rather than in a pass of its own.
    Gelu,
}

/// `out = x · wᵀ + bias` or `out += x · wᵀ + bias` ([`Write`]) on kernel `isa` ([`isa`]
/// gives this CPU's; tests run every kernel it supports): `x` is `[rows, inp]`, `out`
/// `[rows, n_out]`, both row-major, `panels` the weight packed by [`pack`], and `bias`
/// `n_out` long (or none). Panels are shared among the calling rayon pool's threads
/// when it has more than one.
///
/// # Panics
/// When the shapes disagree, or when the CPU does not run `isa`.
#[allow(clippy::too_many_arguments)]
pub fn dense(
    isa: Isa,
    x: &[f32],
    inp: usize,
    panels: &[f32],
    bias: Option<&[f32]>,
    write: Write,
    out: &mut [f32],
    n_out: usize,
) {
    assert!(isa.supported(), "this CPU does not run {}", isa.as_str());
    assert!(inp > 0 && n_out.is_multiple_of(PANEL));
    let rows = x.len() / inp;
    assert_eq!(x.len(), rows * inp);
    assert_eq!(out.len(), rows * n_out);
    assert_eq!(panels.len(), inp * n_out);
    assert!(bias.is_none_or(|b| b.len() == n_out));
    let dst = Dst {
        out: out.as_mut_ptr(),
        ldo: n_out,
        bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
        set: write != Write::Add,
        gelu: write == Write::Gelu,
    };
    if rows == 0 {
        return;
    }
    if isa == Isa::Avx512 {
        return acc_512(x, inp, panels, dst, rows);
    }
    // AVX2: k in blocks of KC; rows in blocks whose KC-wide slice stays in L2 while
    // every panel passes over it; a panel's KC block stays in L1 while the block's
    // tiles pass over it.
    let block = ROW_BLOCK;
    let count = n_out / PANEL;
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
            // The bias and the output's mode apply once, with the first block of `k`;
            // later blocks add to what it wrote; GELU applies with the last.
            let first = if k0 == 0 { dst } else { dst.accumulate() };
            let dst = Dst {
                gelu: dst.gelu && k0 + kc == inp,
                ..first
            };
            // A unit of work: one panel.
            let run = |p: usize| {
                // SAFETY: the CPU runs AVX2 and FMA (asserted above). Unit `p` writes
                // only columns `16p..16p+16`, so units never touch the same element;
                // rows `r0..r0+n`, columns `k0..k0+kc` of `x`, panel `p`'s rows
                // `k0..k0+kc` (`p < count`) and the bias's columns are inside the
                // slices whose shapes are asserted above.
                unsafe {
                    let w = panels.as_ptr().add(p * inp * PANEL + k0 * PANEL);
                    panel(xp.as_ptr(), n, w, kc, dst.at(r0, p * PANEL))
                }
            };
            if rayon::current_num_threads() > 1 {
                use rayon::prelude::*;
                (0..count).into_par_iter().for_each(run);
            } else {
                (0..count).for_each(run);
            }
        }
    }
}

/// A [`Dst`] store for one vector width: writes one vector of sums for row `r` at column
/// `c`, adding the bias (if any) and the output's contents (unless it is set).
///
/// # Safety (of the generated method)
/// The target features are present; the vector's columns are inside the output and the
/// bias.
macro_rules! put {
    ($name:ident, $features:literal, $vec:ty, $load:ident, $add:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $name(self, r: usize, c: usize, mut v: $vec) {
            // SAFETY: the caller keeps the vector's columns inside both buffers.
            unsafe {
                let o = self.out.add(r * self.ldo + c);
                if !self.bias.is_null() {
                    v = $add(v, $load(self.bias.add(c)));
                }
                if !self.set {
                    v = $add(v, $load(o));
                }
                $store(o, v);
            }
        }
    };
}

/// Where a kernel writes: the output at a tile's first element (row stride `ldo`),
/// the bias at the tile's first column (null: none), whether the output is set
/// rather than added to, and whether GELU is applied to what is stored ([`Write`]).
#[derive(Clone, Copy)]
struct Dst {
    out: *mut f32,
    ldo: usize,
    bias: *const f32,
    set: bool,
    gelu: bool,
}
// SAFETY: threads write disjoint columns through it (see `dense`) and only read
// the bias.
unsafe impl Send for Dst {}
// SAFETY: as for `Send`.
unsafe impl Sync for Dst {}

impl Dst {
    /// Row `r`, column `c` further on.
    ///
    /// # Safety
    /// The element is inside the output (and column `c` inside the bias).
    unsafe fn at(self, r: usize, c: usize) -> Dst {
        // SAFETY: the caller keeps the offsets inside both buffers.
        unsafe {
            Dst {
                out: self.out.add(r * self.ldo + c),
                bias: if self.bias.is_null() {
                    self.bias
                } else {
                    self.bias.add(c)
                },
                ..self
            }
        }
    }

    /// GELU over the `rows × cols` a tile has just stored (still in L1), if this
    /// output takes it. A call of its own, after the stores: inlined into the kernel,
    /// its constants took registers from the accumulators (half the speed).
    ///
    /// # Safety
    /// The tile's rows and columns are inside the output.
    #[inline(never)]
    unsafe fn finish(self, rows: usize, cols: usize) {
        if !self.gelu {
            return;
        }
        for r in 0..rows {
            // SAFETY: row `r` of the tile, `cols` columns, inside the output (the
            // caller's bounds); no other reference to it is live.
            let row = unsafe { std::slice::from_raw_parts_mut(self.out.add(r * self.ldo), cols) };
            gelu(row);
        }
    }

    /// The same output, added to, without the bias or GELU (a later block of `k`).
    fn accumulate(self) -> Dst {
        Dst {
            bias: std::ptr::null(),
            set: false,
            gelu: false,
            ..self
        }
    }

    put!(
        put_512,
        "avx512f",
        __m512,
        _mm512_loadu_ps,
        _mm512_add_ps,
        _mm512_storeu_ps
    );
    put!(
        put_256,
        "avx2",
        __m256,
        _mm256_loadu_ps,
        _mm256_add_ps,
        _mm256_storeu_ps
    );
}

/// One panel over one block of rows and of `k`: `xp` the block's rows repacked
/// (`[tile][k][TILE_ROWS]`), `w` at the panel's first `k` of the block, `dst` at the
/// block's first row and the panel's first column.
///
/// # Safety
/// AVX2 and FMA are present; `xp` holds `rows.div_ceil(TILE_ROWS) * kc * TILE_ROWS`
/// values, `w` holds `kc * PANEL`, and `dst` has `rows` rows of at least `PANEL`
/// writable columns (and `PANEL` bias values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn panel(xp: *const f32, rows: usize, w: *const f32, kc: usize, dst: Dst) {
    let mut t = 0;
    while t + TILE_ROWS <= rows {
        // SAFETY: tile `t / TILE_ROWS` is whole (`t + TILE_ROWS <= rows`), so its
        // repacked rows and its `TILE_ROWS` output rows are inside the caller's bounds.
        unsafe { tile::<TILE_ROWS>(xp.add(t * kc), w, kc, dst.at(t, 0)) };
        t += TILE_ROWS;
    }
    // SAFETY: `t <= rows`: at most one past the last whole tile, inside the buffers.
    let (xs, ds) = unsafe { (xp.add(t * kc), dst.at(t, 0)) };
    // SAFETY: the last tile has `rows - t < TILE_ROWS` rows, each inside the caller's
    // bounds; `tile::<R>` touches only its first `R`.
    unsafe {
        match rows - t {
            0 => {}
            1 => tile::<1>(xs, w, kc, ds),
            2 => tile::<2>(xs, w, kc, ds),
            3 => tile::<3>(xs, w, kc, ds),
            4 => tile::<4>(xs, w, kc, ds),
            _ => tile::<5>(xs, w, kc, ds),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn panel(_: *const f32, _: usize, _: *const f32, _: usize, _: Dst) {
    unreachable!("sgemm needs x86_64 AVX2")
}

/// `R` tokens × 16 outputs over `kc` values of `k`: `xp` the tile's rows repacked
/// (`[k][TILE_ROWS]`, the first `R` of each `k` used), `w` at the panel's first `k`,
/// `dst` at the tile's first element.
///
/// # Safety
/// AVX2 and FMA are present; `xp` holds `kc * TILE_ROWS` values, `w` holds
/// `kc * PANEL`, and `dst` has `R` rows of `PANEL` writable columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize>(xp: *const f32, w: *const f32, kc: usize, dst: Dst) {
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
        // SAFETY: row `r < R` of the tile, 16 columns inside `dst`.
        unsafe {
            dst.put_256(r, 0, a[0]);
            dst.put_256(r, 8, a[1]);
        }
    }
    // SAFETY: the tile's `R` rows of `PANEL` columns, as above.
    unsafe { dst.finish(R, PANEL) };
}

/// Tokens per pass of the AVX-512 kernel: 12 tokens × 2 panels keep 24 accumulators in
/// registers; per `k` two panel loads and 12 broadcasts feed 24 multiply-adds.
pub const PASS_ROWS: usize = 12;
/// The AVX-512 kernel's row blocks: their repacked activations take at most this much,
/// so they stay in L2 while every panel pair passes over them.
const ROW_BLOCK_BYTES: usize = 1 << 20;
/// Values of `k` per chunk of the AVX-512 kernel's repacked activations.
const CHUNK: usize = 16;
/// How far ahead (in values of `k`, one 64-byte line of each panel per value) the
/// AVX-512 kernel prefetches the weight. The weights stream from the last-level cache
/// at batch 1; without the prefetch the loads wait on it (sgemm_bench: 24 lines ahead
/// took batch 1 from about 100 to 130 GFLOP/s on a Sapphire Rapids-class Xeon).
const PREFETCH_AHEAD: usize = 24;

thread_local! {
    /// The AVX-512 kernel's repacked activations, kept between calls (a fresh buffer
    /// of a few MiB would be page-faulted in on every call). A call takes it and puts
    /// it back: a thread waiting in rayon may run another product meanwhile, which then
    /// finds it empty and allocates its own.
    static REPACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// [`dense`] on AVX-512. Rows go in blocks that stay in L2; within a block, in
/// passes of at most [`PASS_ROWS`] tokens. A unit of work is a pair of panels: for each
/// pass it runs over the whole of `k`, so a panel pair (24 or 96 KiB) stays in L1 or
/// L2 across the passes, and the weight is read front to back, one stream per panel,
/// with the multiply-adds running while the next lines arrive.
fn acc_512(x: &[f32], inp: usize, panels: &[f32], dst: Dst, rows: usize) {
    let kp = inp.next_multiple_of(CHUNK);
    let block = (ROW_BLOCK_BYTES / (kp * 4) / PASS_ROWS * PASS_ROWS).max(PASS_ROWS);
    let mut xp = REPACKED.take();
    for r0 in (0..rows).step_by(block) {
        let n = block.min(rows - r0);
        // Passes of nearly equal size (no short last pass), each repacked in chunks of
        // 16 values of `k`, `[k / 16][len][16]` (the last chunk zero-padded): copies of
        // whole vectors, after which the kernel's broadcasts are at constant offsets.
        let passes = n.div_ceil(PASS_ROWS);
        let per = n.div_ceil(passes);
        xp.resize(xp.len().max(n * kp), 0.0);
        for start in (0..n).step_by(per) {
            let len = per.min(n - start);
            let dst = &mut xp[start * kp..(start + len) * kp];
            for r in 0..len {
                let row = &x[(r0 + start + r) * inp..][..inp];
                let chunks = row.chunks_exact(CHUNK);
                let tail = chunks.remainder();
                for (kb, chunk) in chunks.enumerate() {
                    // A fixed-size copy: one vector move, not a call to memcpy.
                    let to: &mut [f32; CHUNK] = (&mut dst[(kb * len + r) * CHUNK..][..CHUNK])
                        .try_into()
                        .expect("CHUNK values");
                    *to = chunk.try_into().expect("CHUNK values");
                }
                if !tail.is_empty() {
                    let to = &mut dst[((inp / CHUNK) * len + r) * CHUNK..][..CHUNK];
                    to[..tail.len()].copy_from_slice(tail);
                    to[tail.len()..].fill(0.0);
                }
            }
        }
        let xp = &xp[..n * kp];
        let count = dst.ldo / PANEL;
        let run = |u: usize| {
            let p = 2 * u;
            // SAFETY: `p < count`: panel `p`, all `inp` of its rows, is in `panels`.
            let w = |p: usize| unsafe { panels.as_ptr().add(p * inp * PANEL) };
            for start in (0..n).step_by(per) {
                let len = per.min(n - start);
                // SAFETY: the caller checked AVX-512F. Unit `u` writes only columns
                // `16p..16p+32` (or `..16p+16` for an odd last panel) of rows
                // `r0+start..r0+start+len`, which no other unit writes; the pass's
                // repacked rows are `xp[start·kp..(start+len)·kp]`; the shapes
                // were asserted by the caller.
                unsafe {
                    let xs = xp.as_ptr().add(start * kp);
                    let d = dst.at(r0 + start, p * PANEL);
                    if p + 1 < count {
                        pass_512::<2>(len, xs, [w(p), w(p + 1)], inp, d);
                    } else {
                        pass_512::<1>(len, xs, [w(p)], inp, d);
                    }
                }
            }
        };
        let units = count.div_ceil(2);
        if rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            (0..units).into_par_iter().for_each(run);
        } else {
            (0..units).for_each(run);
        }
    }
    REPACKED.set(xp);
}

/// [`tile_512`] with its row count as a constant.
///
/// # Safety
/// As [`tile_512`], with `1 <= len <= PASS_ROWS`.
#[cfg(target_arch = "x86_64")]
unsafe fn pass_512<const P: usize>(
    len: usize,
    xp: *const f32,
    w: [*const f32; P],
    kc: usize,
    dst: Dst,
) {
    macro_rules! by_len {
        ($($r:literal)*) => {
            match len {
                // SAFETY: as the caller's, with `R == len`.
                $($r => unsafe { tile_512::<$r, P>(xp, w, kc, dst) },)*
                _ => unreachable!("a pass has 1 to {PASS_ROWS} rows"),
            }
        };
    }
    by_len!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pass_512<const P: usize>(_: usize, _: *const f32, _: [*const f32; P], _: usize, _: Dst) {
    unreachable!("AVX-512 needs x86_64")
}

/// `R` tokens × `P * 16` outputs over `kc` values of `k`: `xp` the pass's rows
/// repacked `[k / 16][R][16]`, `w[i]` panel `i` at its first `k`, `dst` the pass's
/// first row at the first panel's column.
///
/// # Safety
/// AVX-512F is present; `xp` holds `kc.next_multiple_of(16) * R` values, each `w[i]`
/// holds `kc * PANEL`, and
/// `dst` has `R` rows of `P * PANEL` writable columns (and as many bias values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_512<const R: usize, const P: usize>(
    xp: *const f32,
    w: [*const f32; P],
    kc: usize,
    dst: Dst,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // One value of `k`: `x` the pass's chunk holding it, `kk` its place in the chunk.
    let step = |acc: &mut [[__m512; P]; R], x: *const f32, k: usize, kk: usize| {
        // SAFETY: `k < kc`, inside every panel; `x` is a chunk of `R * 16` repacked
        // values. The prefetch may point past the panel (into the next one, or past the
        // allocation): a prefetch never faults, and `wrapping_add` makes no claim about
        // the address.
        unsafe {
            let wv = w.map(|w| _mm512_loadu_ps(w.add(k * PANEL)));
            for w in w {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((k + PREFETCH_AHEAD) * PANEL).cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(r * CHUNK + kk));
                for (a, wv) in acc.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wv, *a);
                }
            }
        }
    };
    let whole = kc / CHUNK;
    for kb in 0..whole {
        // SAFETY: chunk `kb < kc / 16` is inside the repacked rows.
        let x = unsafe { xp.add(kb * R * CHUNK) };
        for kk in 0..CHUNK {
            step(&mut acc, x, kb * CHUNK + kk, kk);
        }
    }
    // SAFETY: the last, partial chunk (if any) is inside the repacked rows.
    let x = unsafe { xp.add(whole * R * CHUNK) };
    for k in whole * CHUNK..kc {
        step(&mut acc, x, k, k - whole * CHUNK);
    }
    for (r, acc) in acc.iter().enumerate() {
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: row `r < R`, columns `16i..16i+16` inside `dst`.
            unsafe { dst.put_512(r, i * PANEL, *a) };
        }
    }
    // SAFETY: the pass's `R` rows of `P * PANEL` columns, as above.
    unsafe { dst.finish(R, P * PANEL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_product_on_ragged_shapes() {
        if !available() {
            return;
        }
        // Rows not a multiple of the tile or pass, k longer than one block and not a
        // multiple, rows over more than one row block.
        for (rows, inp, out) in [
            (1, 3, 16),
            (7, 300, 32),
            (13, 600, 48),
            (2, 384, 1536),
            (6, 256, 16),
            (ROW_BLOCK + 7, 270, 16),
            // AVX-512: three row blocks, passes of 12 and of 11, an odd last panel.
            (500, 1100, 48),
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
            let bias: Vec<f32> = (0..out).map(|o| o as f32 * -0.25).collect();
            // Set must not read the output: NaN there would show.
            let cases = [
                (None, Write::Add, start.clone()),
                (Some(&bias[..]), Write::Add, start.clone()),
                (Some(&bias[..]), Write::Set, vec![f32::NAN; rows * out]),
                (Some(&bias[..]), Write::Gelu, vec![f32::NAN; rows * out]),
            ];
            for (isa, (b, write, before)) in [Isa::Avx512, Isa::Avx2]
                .into_iter()
                .flat_map(|isa| cases.iter().map(move |c| (isa, c)))
            {
                if !isa.supported() {
                    eprintln!(
                        "sgemm: this CPU does not run {}: not tested here",
                        isa.as_str()
                    );
                    continue;
                }
                let mut got = before.clone();
                dense(
                    isa,
                    &x,
                    inp,
                    &pack(&wt, inp, out),
                    *b,
                    *write,
                    &mut got,
                    out,
                );
                for t in 0..rows {
                    for o in 0..out {
                        let sum = if *write == Write::Add {
                            start[t * out + o] as f64
                        } else {
                            0.0
                        } + b.map_or(0.0, |b| b[o] as f64)
                            + (0..inp)
                                .map(|k| x[t * inp + k] as f64 * w[o * inp + k] as f64)
                                .sum::<f64>();
                        let want = if *write == Write::Gelu {
                            let erf = crate::model::sgemm::erf(
                                (sum * std::f64::consts::FRAC_1_SQRT_2) as f32,
                            ) as f64;
                            0.5 * sum * (1.0 + erf)
                        } else {
                            sum
                        };
                        let g = got[t * out + o] as f64;
                        assert!(
                            (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{} {write:?} {rows}x{inp}x{out} at ({t}, {o}): {g} vs {want}",
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
        let isa = isa().expect("checked above");
        dense(isa, &x, inp, &panels, None, Write::Add, &mut one, out);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut two = vec![1f32; rows * out];
        pool.install(|| dense(isa, &x, inp, &panels, None, Write::Add, &mut two, out));
        assert_eq!(one, two);
    }
}
