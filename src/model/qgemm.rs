//! The dense layers' matrix product in bf16 and in int8, for the packed encoder's
//! `precision = "bf16" | "int8"`, with the kernel chosen once at run time.
//!
//! Both keep [`super::sgemm`]'s shape: the weight packed at load into panels of
//! [`PANEL`] outputs, the activations repacked per call into tiles of [`TILE_ROWS`]
//! tokens, a micro-tile of accumulators in registers, panels shared among a worker's
//! threads. What differs is the element:
//!
//! - **bf16.** Weights rounded to bf16 (round to nearest even), stored as pairs along
//!   `k`: panel `p`, pair `j` holds `w[16p + o, 2j + {0, 1}]` for `o` in 0..16, one
//!   32-bit lane per output. Activations are rounded to bf16 the same way when
//!   repacked. Products accumulate in f32. Kernels: AVX512-BF16 (`vdpbf16ps`, 32
//!   multiply-adds per instruction), AVX2 + FMA (each pair widened to two f32 lanes by
//!   a shift and a mask), and a generic one.
//! - **int8.** Weights quantised symmetrically per output channel (`w ≈ s_w[o] · q`,
//!   `q` in -127..=127), stored as quads along `k` (panel `p`, quad `j`: 16 outputs ×
//!   4 bytes). Activations quantised per token, asymmetrically, to u8
//!   (`x ≈ lo[t] + s_x[t] · u`), at every call. Products accumulate exactly in i32 and
//!   are scaled back once: `Σ x·w ≈ s_w[o] · (s_x[t] · Σ u·q + lo[t] · Σ q)`, where
//!   `Σ q` is each output's column sum, kept from load. Kernels: AVX512-VNNI
//!   (`vpdpbusd`, u8 × i8, 64 multiply-adds per instruction, no saturation), AVX2
//!   (`vpmaddwd` on both operands widened to i16, exact), and a generic one. The i32
//!   sums are the same on every kernel.
//!
//! The generic kernels are plain loops over the same packed layout: they define what
//! the vector kernels compute, and the tests run every kernel the CPU supports against
//! them. `CELERIAC_ISA=avx2` caps the choice at AVX2, `CELERIAC_ISA=generic` forces the
//! generic kernels ([`super::sgemm::cap`]).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::amx;
use super::sgemm::{Cap, PANEL, ROW_BLOCK, TILE_ROWS, cap};
use super::weights::{Buf, Codec};

/// The kernels a precision can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX tiles ([`amx`]), where the shapes allow; the AVX-512 kernel otherwise.
    Amx,
    /// AVX-512 with the precision's dot-product instruction (BF16 or VNNI).
    Avx512,
    /// AVX2 + FMA.
    Avx2,
    /// Plain loops.
    Generic,
}

/// Every kernel, widest first.
pub const KERNELS: [Kernel; 4] = [Kernel::Amx, Kernel::Avx512, Kernel::Avx2, Kernel::Generic];

fn detected(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx512bf16" => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            "avx512vnni" => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            "avx2" => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

/// bf16 or int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// bf16 weights and activations, f32 sums.
    Bf16,
    /// int8 weights, u8 activations, i32 sums.
    Int8,
}

impl Element {
    fn op(self) -> amx::Op {
        match self {
            Element::Bf16 => amx::Op::Bf16,
            Element::Int8 => amx::Op::Int8,
        }
    }
}

impl Kernel {
    /// Its name for `element`, for logs and benchmarks.
    pub fn name(self, element: Element) -> &'static str {
        match (self, element) {
            (Kernel::Amx, Element::Bf16) => "amx-bf16",
            (Kernel::Amx, Element::Int8) => "amx-int8",
            (Kernel::Avx512, Element::Bf16) => "avx512-bf16",
            (Kernel::Avx512, Element::Int8) => "avx512-vnni",
            (Kernel::Avx2, _) => "avx2+fma",
            (Kernel::Generic, _) => "generic",
        }
    }

    /// Whether this CPU runs it for `element` (detected once).
    pub fn supported(self, element: Element) -> bool {
        static SUPPORTED: std::sync::OnceLock<[[bool; 2]; 4]> = std::sync::OnceLock::new();
        SUPPORTED
            .get_or_init(|| KERNELS.map(|k| [Element::Bf16, Element::Int8].map(|e| k.detect(e))))
            [self as usize][element as usize]
    }

    fn detect(self, element: Element) -> bool {
        match (self, element) {
            (Kernel::Amx, e) => Kernel::Avx512.detect(e) && amx::available(e.op()),
            (Kernel::Avx512, Element::Bf16) => detected("avx512bf16"),
            (Kernel::Avx512, Element::Int8) => detected("avx512vnni"),
            (Kernel::Avx2, _) => detected("avx2"),
            (Kernel::Generic, _) => true,
        }
    }
}

/// The kernel `element` runs on here: the widest this CPU supports, within
/// `CELERIAC_ISA`'s cap; chosen once per process.
pub fn kernel(element: Element) -> Kernel {
    static BF16: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    static INT8: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    let cell = match element {
        Element::Bf16 => &BF16,
        Element::Int8 => &INT8,
    };
    *cell.get_or_init(|| {
        let allowed = |k: &Kernel| match cap() {
            Cap::None => true,
            Cap::Avx512 => *k != Kernel::Amx,
            Cap::Avx2 => matches!(k, Kernel::Avx2 | Kernel::Generic),
            Cap::Generic => *k == Kernel::Generic,
        };
        KERNELS
            .into_iter()
            .filter(allowed)
            .find(|k| k.supported(element))
            .unwrap_or(Kernel::Generic)
    })
}

/// f32 to bf16 bits, rounding to nearest even (as `vcvtne2ps2bf16`; no NaN here).
#[inline(always)]
pub fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits back to f32 (exact).
#[inline(always)]
pub fn f32_of(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A weight in bf16, packed (see the module docs): `[panel][k / 2][16][2]`.
#[derive(Default)]
pub struct Bf16Weight {
    panels: Buf<u32>,
    inp: usize,
    out: usize,
}

/// A weight in int8 with a scale per output, packed (see the module docs):
/// `[panel][k / 4][16][4]`.
#[derive(Default)]
pub struct Int8Weight {
    panels: Buf<i8>,
    /// `s_w[o]`.
    scale: Buf<f32>,
    /// `Σ_k q[o, k]`, exact in f32.
    colsum: Buf<f32>,
    inp: usize,
    out: usize,
}

impl Bf16Weight {
    /// Rounds and packs a weight given transposed, `[inp, out]` row-major (`out` a
    /// multiple of [`PANEL`]).
    pub fn pack(weight_t: &[f32], inp: usize, out: usize) -> Self {
        assert!(out.is_multiple_of(PANEL) && weight_t.len() == inp * out);
        let pairs = inp.div_ceil(2);
        let mut panels = Vec::with_capacity(out / PANEL * pairs * PANEL);
        let at = |k: usize, o: usize| if k < inp { weight_t[k * out + o] } else { 0.0 };
        for p in 0..out / PANEL {
            for j in 0..pairs {
                for o in p * PANEL..(p + 1) * PANEL {
                    let (lo, hi) = (bf16(at(2 * j, o)), bf16(at(2 * j + 1, o)));
                    panels.push(lo as u32 | (hi as u32) << 16);
                }
            }
        }
        Bf16Weight {
            panels: panels.into(),
            inp,
            out,
        }
    }

    /// Writes or reads its fields ([`super::weights`]).
    pub fn codec(&mut self, c: &mut impl Codec) -> Result<(), String> {
        c.buf(&mut self.panels)?;
        c.usize(&mut self.inp)?;
        c.usize(&mut self.out)
    }

    /// Whether it is a whole packing of an `inp` × `out` weight.
    pub fn check(&self, inp: usize, out: usize) -> bool {
        self.inp == inp
            && self.out == out
            && inp > 0
            && out.is_multiple_of(PANEL)
            && self.panels.len() == out / PANEL * inp.div_ceil(2) * PANEL
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.panels.len() * 4
    }
}

impl Int8Weight {
    /// Quantises and packs a weight given transposed, `[inp, out]` row-major (`out` a
    /// multiple of [`PANEL`]).
    pub fn pack(weight_t: &[f32], inp: usize, out: usize) -> Self {
        assert!(out.is_multiple_of(PANEL) && weight_t.len() == inp * out);
        let quads = inp.div_ceil(4);
        let mut scale = vec![0f32; out];
        for (o, s) in scale.iter_mut().enumerate() {
            let max = (0..inp)
                .map(|k| weight_t[k * out + o].abs())
                .fold(0f32, f32::max);
            *s = if max > 0.0 { max / 127.0 } else { 1.0 };
        }
        let q = |k: usize, o: usize| -> i8 {
            if k < inp {
                (weight_t[k * out + o] / scale[o])
                    .round()
                    .clamp(-127.0, 127.0) as i8
            } else {
                0
            }
        };
        let mut panels = Vec::with_capacity(out / PANEL * quads * PANEL * 4);
        let mut colsum = vec![0f32; out];
        for p in 0..out / PANEL {
            for j in 0..quads {
                let first = p * PANEL;
                for (o, sum) in colsum[first..first + PANEL].iter_mut().enumerate() {
                    for k in 4 * j..4 * j + 4 {
                        let v = q(k, first + o);
                        *sum += v as f32;
                        panels.push(v);
                    }
                }
            }
        }
        Int8Weight {
            panels: panels.into(),
            scale: scale.into(),
            colsum: colsum.into(),
            inp,
            out,
        }
    }

    /// Writes or reads its fields ([`super::weights`]).
    pub fn codec(&mut self, c: &mut impl Codec) -> Result<(), String> {
        c.buf(&mut self.panels)?;
        c.buf(&mut self.scale)?;
        c.buf(&mut self.colsum)?;
        c.usize(&mut self.inp)?;
        c.usize(&mut self.out)
    }

    /// Whether it is a whole packing of an `inp` × `out` weight.
    pub fn check(&self, inp: usize, out: usize) -> bool {
        self.inp == inp
            && self.out == out
            && inp > 0
            && out.is_multiple_of(PANEL)
            && self.panels.len() == out / PANEL * inp.div_ceil(4) * PANEL * 4
            && self.scale.len() == out
            && self.colsum.len() == out
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.panels.len() + (self.scale.len() + self.colsum.len()) * 4
    }
}

/// A function whose body is compiled twice, plain and for AVX-512 (auto-vectorised
/// with 512-bit vectors), the latter chosen where the f32 kernel is AVX-512's.
macro_rules! wide_fn {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn wide($($a: $t),*) $(-> $r)? {
                body($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            if super::sgemm::isa() == Some(super::sgemm::Isa::Avx512) {
                // SAFETY: the f32 kernel is AVX-512's, so AVX-512F/BW/VL were detected.
                return unsafe { wide($($a),*) };
            }
            body($($a),*)
        }
    };
}

wide_fn! {
    /// The smallest and largest value of a row (16 lanes, so it vectorises).
    fn min_max(row: &[f32]) -> (f32, f32) {
        let mut lo = [f32::INFINITY; 16];
        let mut hi = [f32::NEG_INFINITY; 16];
        let chunks = row.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            for l in 0..16 {
                lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
                hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
            }
        }
        for &v in tail {
            lo[0] = lo[0].min(v);
            hi[0] = hi[0].max(v);
        }
        (lo.iter().copied().fold(f32::INFINITY, f32::min), hi.iter().copied().fold(f32::NEG_INFINITY, f32::max))
    }
}

/// `q` limited to 0..=255, NaN to 0 (`max` and `min` drop a NaN; `clamp` would keep it).
#[inline(always)]
#[allow(clippy::manual_clamp)]
fn saturate(q: f32) -> f32 {
    q.max(0.0).min(255.0)
}

wide_fn! {
    /// `dst[k] = round((row[k] - lo) · inv)`, saturated to 0..=255.
    fn quantize_row(row: &[f32], lo: f32, inv: f32, dst: &mut [u8]) {
        for (d, v) in dst.iter_mut().zip(row) {
            let q = saturate((v - lo) * inv + 0.5);
            // SAFETY: `q` is a number in 0..=255 (`saturate`), inside i32's range.
            *d = unsafe { q.to_int_unchecked::<i32>() } as u8;
        }
    }
}

wide_fn! {
    /// Each value rounded to bf16, as little-endian bytes.
    fn bf16_row(row: &[f32], dst: &mut [u8]) {
        for (d, v) in dst.chunks_exact_mut(2).zip(row) {
            d.copy_from_slice(&bf16(*v).to_le_bytes());
        }
    }
}

wide_fn! {
    /// `o += f32 sums` (given as bits).
    fn add_sums(o: &mut [f32], sums: &[u32]) {
        for (o, s) in o.iter_mut().zip(sums) {
            *o += f32::from_bits(*s);
        }
    }
}

wide_fn! {
    /// `o += s_w · (s_x · Σ + lo · Σq)` (see the module docs).
    fn dequant_add(o: &mut [f32], sums: &[u32], scale: &[f32], colsum: &[f32], sx: f32, lo: f32) {
        for (((o, s), sc), cs) in o.iter_mut().zip(sums).zip(scale).zip(colsum) {
            *o += sc * (sx * *s as i32 as f32 + lo * cs);
        }
    }
}

/// `out += x · wᵀ` in bf16, `x` `[rows, inp]`, `out` `[rows, out]`, on [`kernel`].
pub fn bf16_acc(x: &[f32], w: &Bf16Weight, out: &mut [f32]) {
    bf16_acc_with(kernel(Element::Bf16), x, w, out)
}

/// `out += x · wᵀ` in int8, `x` `[rows, inp]`, `out` `[rows, out]`, on [`kernel`].
pub fn int8_acc(x: &[f32], w: &Int8Weight, out: &mut [f32]) {
    int8_acc_with(kernel(Element::Int8), x, w, out)
}

/// [`bf16_acc`] on a given kernel.
///
/// # Panics
/// When the shapes disagree or the CPU does not run `k`.
pub fn bf16_acc_with(k: Kernel, x: &[f32], w: &Bf16Weight, out: &mut [f32]) {
    assert!(k.supported(Element::Bf16), "this CPU does not run {k:?}");
    let groups = w.inp.div_ceil(2);
    if k == Kernel::Amx && amx_fits(w.inp * 2, w.out) {
        let pw = |p: usize| w.panels[p * groups * PANEL..].as_ptr().cast::<u8>();
        return amx_drive(
            amx::Op::Bf16,
            x,
            w.inp,
            w.out,
            out,
            |_, row, dst| bf16_row(row, dst),
            &pw,
            &|_, _, sums, o| add_sums(o, sums),
        );
    }
    let k = if k == Kernel::Amx { Kernel::Avx512 } else { k };
    drive(
        x,
        w.inp,
        w.out,
        groups,
        out,
        |_, row, dst| {
            for (j, d) in dst.iter_mut().enumerate() {
                let lo = bf16(row[2 * j]);
                let hi = row.get(2 * j + 1).map_or(0, |&v| bf16(v));
                *d = lo as u32 | (hi as u32) << 16;
            }
        },
        &|tile: Tile| {
            let pw = |p: usize| &w.panels[p * groups * PANEL..][..groups * PANEL];
            match k {
                Kernel::Amx => unreachable!("replaced by AVX-512 above"),
                // SAFETY: the CPU runs AVX512-BF16 (asserted); `tile` is in bounds (`drive`).
                Kernel::Avx512 => unsafe { bf16_panels_512(tile, pw) },
                // SAFETY: the CPU runs AVX2 + FMA (asserted); `tile` is in bounds (`drive`).
                Kernel::Avx2 => unsafe { bf16_panels_avx2(tile, pw) },
                Kernel::Generic => bf16_panels_generic(tile, pw),
            }
        },
    );
}

/// [`int8_acc`] on a given kernel.
///
/// # Panics
/// When the shapes disagree or the CPU does not run `k`.
pub fn int8_acc_with(k: Kernel, x: &[f32], w: &Int8Weight, out: &mut [f32]) {
    assert!(k.supported(Element::Int8), "this CPU does not run {k:?}");
    let (inp, rows) = (w.inp, x.len() / w.inp.max(1));
    let groups = inp.div_ceil(4);
    // Per-token quantisation: x ≈ lo + s · u, u in 0..=255.
    let mut lo = vec![0f32; rows];
    let mut sx = vec![0f32; rows];
    for (t, row) in x.chunks_exact(inp).enumerate() {
        let (min, max) = min_max(row);
        lo[t] = min;
        sx[t] = if max > min { (max - min) / 255.0 } else { 0.0 };
    }
    let (lo, sx) = (&lo, &sx);
    let inv = |t: usize| if sx[t] > 0.0 { 1.0 / sx[t] } else { 0.0 };
    let quantize = |t: usize, v: f32| saturate((v - lo[t]) * inv(t) + 0.5) as u8;
    if k == Kernel::Amx && amx_fits(inp, w.out) {
        let pw = |p: usize| w.panels[p * groups * PANEL * 4..].as_ptr().cast::<u8>();
        return amx_drive(
            amx::Op::Int8,
            x,
            inp,
            w.out,
            out,
            |t, row, dst| quantize_row(row, lo[t], inv(t), dst),
            &pw,
            &|t, c0, sums, o| {
                let n = o.len();
                dequant_add(
                    o,
                    sums,
                    &w.scale[c0..][..n],
                    &w.colsum[c0..][..n],
                    sx[t],
                    lo[t],
                )
            },
        );
    }
    let k = if k == Kernel::Amx { Kernel::Avx512 } else { k };
    drive(
        x,
        inp,
        w.out,
        groups,
        out,
        |t, row, dst| {
            let u = |v: f32| quantize(t, v) as u32;
            for (j, d) in dst.iter_mut().enumerate() {
                let mut word = 0u32;
                for i in 0..4 {
                    word |= row.get(4 * j + i).map_or(0, |&v| u(v)) << (8 * i);
                }
                *d = word;
            }
        },
        &|tile: Tile| {
            let pw = |p: usize| &w.panels[p * groups * PANEL * 4..][..groups * PANEL * 4];
            let q = Quant {
                lo: &lo[tile.row0..tile.row0 + tile.rows],
                sx: &sx[tile.row0..tile.row0 + tile.rows],
                scale: &w.scale,
                colsum: &w.colsum,
            };
            match k {
                Kernel::Amx => unreachable!("replaced by AVX-512 above"),
                // SAFETY: the CPU runs AVX512-VNNI (asserted); `tile` is in bounds (`drive`).
                Kernel::Avx512 => unsafe { int8_panels_512(tile, pw, &q) },
                // SAFETY: the CPU runs AVX2 (asserted); `tile` is in bounds (`drive`).
                Kernel::Avx2 => unsafe { int8_panels_avx2(tile, pw, &q) },
                Kernel::Generic => int8_panels_generic(tile, pw, &q),
            }
        },
    );
}

/// Whether AMX runs a product: whole tile steps along `k` (`k_bytes` a multiple of 64)
/// and whole two-panel blocks.
fn amx_fits(k_bytes: usize, n_out: usize) -> bool {
    k_bytes > 0 && k_bytes.is_multiple_of(amx::ROW_BYTES) && n_out.is_multiple_of(2 * PANEL)
}

/// An AMX block's epilogue: `(row, first column, the row's sums, the row's outputs)`.
type Epilogue<'a> = dyn Fn(usize, usize, &[u32], &mut [f32]) + Sync + 'a;

/// Rows per AMX row block: its activations (at most 256 × 3 KiB) stay in L2 while every
/// panel pair passes over them.
const AMX_ROW_BLOCK: usize = 256;

/// The AMX blocking: row blocks of [`AMX_ROW_BLOCK`], each converted once to row-major
/// tile rows by `repack(index, row, bytes)`, then every pair of panels (`panel(p)`, the
/// packed weights' first byte) run in 32-row blocks, each block's 32 × 32 sums handed to
/// `epilogue(row, first column, sums of the row, the row's 32 outputs)`. Pairs are
/// shared among the calling rayon pool's threads.
#[allow(clippy::too_many_arguments)]
fn amx_drive(
    op: amx::Op,
    x: &[f32],
    inp: usize,
    n_out: usize,
    out: &mut [f32],
    repack: impl Fn(usize, &[f32], &mut [u8]),
    panel: &(dyn Fn(usize) -> *const u8 + Sync),
    epilogue: &Epilogue,
) {
    let rows = x.len() / inp;
    assert!(x.len() == rows * inp && out.len() == rows * n_out);
    let lda = match op {
        amx::Op::Bf16 => inp * 2,
        amx::Op::Int8 => inp,
    };
    let steps = lda / amx::ROW_BYTES;
    let pairs = n_out / (2 * PANEL);
    let br = amx::BLOCK_ROWS;
    let mut a = vec![0u8; rows.min(AMX_ROW_BLOCK).div_ceil(br) * br * lda];
    let dst = SendPtr(out.as_mut_ptr());
    for r0 in (0..rows).step_by(AMX_ROW_BLOCK) {
        let n = AMX_ROW_BLOCK.min(rows - r0);
        for r in 0..n {
            repack(
                r0 + r,
                &x[(r0 + r) * inp..][..inp],
                &mut a[r * lda..][..lda],
            );
        }
        let a = &a;
        let unit = |u: usize| {
            let p = 2 * u;
            let b = [panel(p), panel(p + 1)];
            let mut sums = [0u32; 32 * 32];
            // SAFETY: `amx_acc` callers checked `Kernel::Amx.supported`, so the tiles are
            // available and permitted.
            let tiles = unsafe { amx::Tiles::new() };
            for rb in (0..n).step_by(br) {
                // SAFETY: rows `rb..rb + 32` of `a` exist (its rows are rounded up to
                // 32), each `lda = steps * 64` bytes; panels `p`, `p + 1` hold `steps`
                // tile steps of 1024 bytes; `sums` is 32 × 32.
                unsafe {
                    tiles.block(
                        op,
                        a.as_ptr().add(rb * lda),
                        lda,
                        b,
                        steps,
                        sums.as_mut_ptr().cast(),
                    )
                };
                for r in 0..br.min(n - rb) {
                    let row = r0 + rb + r;
                    // SAFETY: row `row < rows`, columns `16p..16p + 32` inside `out`;
                    // units write disjoint columns.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(dst.get().add(row * n_out + p * PANEL), 32)
                    };
                    epilogue(row, p * PANEL, &sums[r * 32..][..32], o);
                }
            }
        };
        if rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            (0..pairs).into_par_iter().for_each(unit);
        } else {
            (0..pairs).for_each(unit);
        }
    }
}

/// A unit of work for a kernel: up to [`TILE_ROWS`]-row tiles of repacked activations
/// (`xp`, `[tile][group][TILE_ROWS]`, one u32 per row and group) over panels
/// `p0..p0 + count`, written to `out` (at the block's first row, column 0, row stride
/// `ldo`).
#[derive(Clone, Copy)]
struct Tile<'a> {
    xp: &'a [u32],
    /// Rows of the block (the last tile may be partial).
    rows: usize,
    /// The block's first row in the whole product (for per-row scales).
    row0: usize,
    groups: usize,
    p0: usize,
    count: usize,
    out: SendPtr,
    ldo: usize,
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: units write disjoint panels' columns through it (see `drive`).
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Panels per unit of work: two adjacent ones, as the AVX-512 micro-tile spans.
const UNIT: usize = 2;

/// The blocking shared by both elements: row blocks of [`ROW_BLOCK`], each repacked
/// once by `repack(index, row, groups_of_row)`, then every unit of [`UNIT`] panels run by
/// `run`, on the calling rayon pool's threads when it has more than one.
fn drive(
    x: &[f32],
    inp: usize,
    n_out: usize,
    groups: usize,
    out: &mut [f32],
    repack: impl Fn(usize, &[f32], &mut [u32]),
    run: &(dyn Fn(Tile) + Sync),
) {
    assert!(inp > 0 && n_out.is_multiple_of(PANEL));
    let rows = x.len() / inp;
    assert_eq!(x.len(), rows * inp);
    assert_eq!(out.len(), rows * n_out);
    let count = n_out / PANEL;
    let mut xp = vec![0u32; rows.min(ROW_BLOCK).div_ceil(TILE_ROWS) * TILE_ROWS * groups];
    let mut packed_row = vec![0u32; groups];
    for r0 in (0..rows).step_by(ROW_BLOCK) {
        let n = ROW_BLOCK.min(rows - r0);
        for r in 0..n {
            repack(r0 + r, &x[(r0 + r) * inp..][..inp], &mut packed_row);
            let (t, i) = (r / TILE_ROWS, r % TILE_ROWS);
            for (g, &v) in packed_row.iter().enumerate() {
                xp[(t * groups + g) * TILE_ROWS + i] = v;
            }
        }
        let base = Tile {
            xp: &xp,
            rows: n,
            row0: r0,
            groups,
            p0: 0,
            count: 0,
            // SAFETY: `r0 < rows`, so row `r0` starts inside `out`.
            out: SendPtr(unsafe { out.as_mut_ptr().add(r0 * n_out) }),
            ldo: n_out,
        };
        let unit = |u: usize| {
            let p0 = u * UNIT;
            run(Tile {
                p0,
                count: UNIT.min(count - p0),
                ..base
            })
        };
        let units = count.div_ceil(UNIT);
        if rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            (0..units).into_par_iter().for_each(unit);
        } else {
            (0..units).for_each(unit);
        }
    }
}

/// int8's per-row and per-output factors for a tile's block.
struct Quant<'a> {
    /// Per row of the block: `lo[t]`, `s_x[t]`.
    lo: &'a [f32],
    sx: &'a [f32],
    /// Per output: `s_w[o]`, `Σ q[o, ·]`.
    scale: &'a [f32],
    colsum: &'a [f32],
}

impl Tile<'_> {
    /// `out[r, c]` of the block, as a pointer.
    fn at(&self, r: usize, c: usize) -> *mut f32 {
        debug_assert!(r < self.rows && c < self.ldo);
        // SAFETY: row `r` of the block and column `c` are inside the product's `out`
        // (`drive` asserts its shape; `r < rows`, `c < ldo`).
        unsafe { self.out.get().add(r * self.ldo + c) }
    }
}

fn bf16_panels_generic<'w>(tile: Tile, pw: impl Fn(usize) -> &'w [u32]) {
    for p in tile.p0..tile.p0 + tile.count {
        let w = pw(p);
        for r in 0..tile.rows {
            let (t, i) = (r / TILE_ROWS, r % TILE_ROWS);
            for o in 0..PANEL {
                let mut acc = 0f32;
                for g in 0..tile.groups {
                    let xv = tile.xp[(t * tile.groups + g) * TILE_ROWS + i];
                    let wv = w[g * PANEL + o];
                    acc += f32_of(xv as u16) * f32_of(wv as u16)
                        + f32_of((xv >> 16) as u16) * f32_of((wv >> 16) as u16);
                }
                // SAFETY: row `r < rows`, column inside panel `p` (see `Tile::at`).
                unsafe { *tile.at(r, p * PANEL + o) += acc };
            }
        }
    }
}

fn int8_panels_generic<'w>(tile: Tile, pw: impl Fn(usize) -> &'w [i8], q: &Quant) {
    for p in tile.p0..tile.p0 + tile.count {
        let w = pw(p);
        for r in 0..tile.rows {
            let (t, i) = (r / TILE_ROWS, r % TILE_ROWS);
            for o in 0..PANEL {
                let mut acc = 0i32;
                for g in 0..tile.groups {
                    let xv = tile.xp[(t * tile.groups + g) * TILE_ROWS + i];
                    for b in 0..4 {
                        let u = (xv >> (8 * b)) as u8 as i32;
                        acc += u * w[(g * PANEL + o) * 4 + b] as i32;
                    }
                }
                let c = p * PANEL + o;
                let v = q.scale[c] * (q.sx[r] * acc as f32 + q.lo[r] * q.colsum[c]);
                // SAFETY: row `r < rows`, column `c` inside panel `p` (see `Tile::at`).
                unsafe { *tile.at(r, c) += v };
            }
        }
    }
}

/// Runs `f::<R>(t, r0)` over every sub-tile of at most `MAX` rows: for each tile of
/// the block, rows `r0..r0 + R`.
macro_rules! sub_tiles {
    ($tile:expr, $max:literal, |$t:ident, $r0:ident, $n:ident| $call:expr) => {{
        let tile = $tile;
        let mut row = 0;
        while row < tile.rows {
            let $t = row / TILE_ROWS;
            let $r0 = row % TILE_ROWS;
            let $n = ($max).min(TILE_ROWS - $r0).min(tile.rows - row);
            $call;
            row += $n;
        }
    }};
}

/// `f::<n, P>(args)` for a run-time row count `n` of at most 6 (or 4): the micro-tiles
/// take their row count as a const generic.
macro_rules! rows {
    (6, $n:expr, $f:ident $(, $p:literal)? ($($a:expr),*)) => {
        match $n {
            6 => $f::<6 $(, $p)?>($($a),*),
            5 => $f::<5 $(, $p)?>($($a),*),
            4 => $f::<4 $(, $p)?>($($a),*),
            3 => $f::<3 $(, $p)?>($($a),*),
            2 => $f::<2 $(, $p)?>($($a),*),
            _ => $f::<1 $(, $p)?>($($a),*),
        }
    };
    (4, $n:expr, $f:ident ($($a:expr),*)) => {
        match $n {
            4 => $f::<4>($($a),*),
            3 => $f::<3>($($a),*),
            2 => $f::<2>($($a),*),
            _ => $f::<1>($($a),*),
        }
    };
}

/// bf16 on AVX512-BF16: micro-tile of up to 6 rows × the unit's 1 or 2 panels.
///
/// # Safety
/// AVX-512F and AVX512-BF16 are present; `tile` is a unit of `drive`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_panels_512<'w>(tile: Tile, pw: impl Fn(usize) -> &'w [u32]) {
    let w0 = pw(tile.p0).as_ptr();
    sub_tiles!(tile, 6, |t, r0, n| {
        let xs = tile.xp[t * tile.groups * TILE_ROWS + r0..].as_ptr();
        let o = tile.at(t * TILE_ROWS + r0, tile.p0 * PANEL);
        // SAFETY: `n <= 6` rows of this tile from `r0`; panels `p0..p0 + count` hold
        // `groups * PANEL` values each, contiguous; `o` has `count * PANEL` columns.
        unsafe {
            if tile.count == 2 {
                let w1 = pw(tile.p0 + 1).as_ptr();
                rows!(
                    6,
                    n,
                    bf16_tile_512,
                    2(xs, [w0, w1], tile.groups, o, tile.ldo)
                )
            } else {
                rows!(6, n, bf16_tile_512, 1(xs, [w0], tile.groups, o, tile.ldo))
            }
        }
    });
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn bf16_panels_512<'w>(_: Tile, _: impl Fn(usize) -> &'w [u32]) {
    unreachable!("AVX-512 needs x86_64")
}

/// `R` rows × `P` panels of bf16 over every pair: `xs` at the rows' first value (stride
/// [`TILE_ROWS`] per pair), `w[i]` at panel `i`'s first pair, `out` at the first
/// output (row stride `ldo`).
///
/// # Safety
/// AVX-512F and AVX512-BF16 are present; `xs` holds `groups * TILE_ROWS` values, each
/// `w[i]` `groups * PANEL`, and `out` has `R` rows of `P * PANEL` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn bf16_tile_512<const R: usize, const P: usize>(
    xs: *const u32,
    w: [*const u32; P],
    groups: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for g in 0..groups {
        // SAFETY: `g < groups`: inside every panel and the repacked rows. The casts
        // reinterpret 16 lanes of two bf16 each, which is what the types hold.
        unsafe {
            let wv: [__m512bh; P] =
                w.map(|w| std::mem::transmute(_mm512_loadu_si512(w.add(g * PANEL).cast())));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*xs.add(g * TILE_ROWS + r) as i32));
                for (a, wv) in acc.iter_mut().zip(&wv) {
                    *a = _mm512_dpbf16_ps(*a, xv, *wv);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: row `r < R`, columns `16i..16i+16` inside `out`.
            unsafe {
                let o = out.add(r * ldo + i * PANEL);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), *a));
            }
        }
    }
}

/// bf16 on AVX2 + FMA: micro-tiles of up to 4 rows × one panel, each pair widened to
/// f32 (the low half shifted up, the high half masked).
///
/// # Safety
/// AVX2 and FMA are present; `tile` is a unit of `drive`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bf16_panels_avx2<'w>(tile: Tile, pw: impl Fn(usize) -> &'w [u32]) {
    for p in tile.p0..tile.p0 + tile.count {
        let w = pw(p).as_ptr();
        sub_tiles!(tile, 4, |t, r0, n| {
            let xs = tile.xp[t * tile.groups * TILE_ROWS + r0..].as_ptr();
            let o = tile.at(t * TILE_ROWS + r0, p * PANEL);
            // SAFETY: as in `bf16_panels_512`, one panel.
            unsafe { rows!(4, n, bf16_tile_avx2(xs, w, tile.groups, o, tile.ldo)) }
        });
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn bf16_panels_avx2<'w>(_: Tile, _: impl Fn(usize) -> &'w [u32]) {
    unreachable!("AVX2 needs x86_64")
}

/// `R` rows × one panel of bf16 on AVX2, as [`bf16_tile_512`].
///
/// # Safety
/// AVX2 and FMA are present; bounds as [`bf16_tile_512`] with `P = 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn bf16_tile_avx2<const R: usize>(
    xs: *const u32,
    w: *const u32,
    groups: usize,
    out: *mut f32,
    ldo: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
    for g in 0..groups {
        // SAFETY: `g < groups`: inside the panel and the repacked rows.
        unsafe {
            let mut we = [_mm256_setzero_ps(); 2];
            let mut wo = [_mm256_setzero_ps(); 2];
            for h in 0..2 {
                let v = _mm256_loadu_si256(w.add(g * PANEL + 8 * h).cast());
                we[h] = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                wo[h] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = *xs.add(g * TILE_ROWS + r);
                let xe = _mm256_set1_ps(f32::from_bits(xv << 16));
                let xo = _mm256_set1_ps(f32::from_bits(xv & 0xffff_0000));
                for h in 0..2 {
                    a[h] = _mm256_fmadd_ps(xe, we[h], _mm256_fmadd_ps(xo, wo[h], a[h]));
                }
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (h, a) in a.iter().enumerate() {
            // SAFETY: row `r < R`, columns `8h..8h+8` of the panel inside `out`.
            unsafe {
                let o = out.add(r * ldo + 8 * h);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *a));
            }
        }
    }
}

/// int8 on AVX512-VNNI: micro-tiles of up to 6 rows × the unit's 1 or 2 panels.
///
/// # Safety
/// AVX-512F and AVX512-VNNI are present; `tile` is a unit of `drive`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn int8_panels_512<'w>(tile: Tile, pw: impl Fn(usize) -> &'w [i8], q: &Quant) {
    let w0 = pw(tile.p0).as_ptr();
    sub_tiles!(tile, 6, |t, r0, n| {
        let xs = tile.xp[t * tile.groups * TILE_ROWS + r0..].as_ptr();
        let row = t * TILE_ROWS + r0;
        let o = tile.at(row, tile.p0 * PANEL);
        let f = Factors {
            lo: q.lo[row..].as_ptr(),
            sx: q.sx[row..].as_ptr(),
            scale: q.scale[tile.p0 * PANEL..].as_ptr(),
            colsum: q.colsum[tile.p0 * PANEL..].as_ptr(),
        };
        // SAFETY: as in `bf16_panels_512`; `f` points at this sub-tile's rows and
        // the unit's columns of the per-row and per-output factors.
        unsafe {
            if tile.count == 2 {
                let w1 = pw(tile.p0 + 1).as_ptr();
                rows!(
                    6,
                    n,
                    int8_tile_512,
                    2(xs, [w0, w1], tile.groups, o, tile.ldo, f)
                )
            } else {
                rows!(
                    6,
                    n,
                    int8_tile_512,
                    1(xs, [w0], tile.groups, o, tile.ldo, f)
                )
            }
        }
    });
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn int8_panels_512<'w>(_: Tile, _: impl Fn(usize) -> &'w [i8], _: &Quant) {
    unreachable!("AVX-512 needs x86_64")
}

/// A sub-tile's int8 factors: `lo`, `sx` at its first row; `scale`, `colsum` at its
/// first output.
#[derive(Clone, Copy)]
struct Factors {
    lo: *const f32,
    sx: *const f32,
    scale: *const f32,
    colsum: *const f32,
}

/// `R` rows × `P` panels of int8 over every quad, then scaled back into `out`
/// (see the module docs).
///
/// # Safety
/// AVX-512F and AVX512-VNNI are present; `xs` holds `groups * TILE_ROWS` values, each
/// `w[i]` `groups * PANEL * 4` bytes, `out` has `R` rows of `P * PANEL` columns, and
/// `f` has `R` rows and `P * PANEL` outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[inline]
unsafe fn int8_tile_512<const R: usize, const P: usize>(
    xs: *const u32,
    w: [*const i8; P],
    groups: usize,
    out: *mut f32,
    ldo: usize,
    f: Factors,
) {
    let mut acc = [[_mm512_setzero_si512(); P]; R];
    for g in 0..groups {
        // SAFETY: `g < groups`: inside every panel and the repacked rows.
        unsafe {
            let wv = w.map(|w| _mm512_loadu_si512(w.add(g * PANEL * 4).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32(*xs.add(g * TILE_ROWS + r) as i32);
                for (a, wv) in acc.iter_mut().zip(&wv) {
                    *a = _mm512_dpbusd_epi32(*a, xv, *wv);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row `r < R` of the factors.
        let (lo, sx) = unsafe { (_mm512_set1_ps(*f.lo.add(r)), _mm512_set1_ps(*f.sx.add(r))) };
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: row `r < R`, columns `16i..16i+16` inside `out` and the factors.
            unsafe {
                let scale = _mm512_loadu_ps(f.scale.add(i * PANEL));
                let colsum = _mm512_loadu_ps(f.colsum.add(i * PANEL));
                let v = _mm512_fmadd_ps(sx, _mm512_cvtepi32_ps(*a), _mm512_mul_ps(lo, colsum));
                let o = out.add(r * ldo + i * PANEL);
                _mm512_storeu_ps(o, _mm512_fmadd_ps(scale, v, _mm512_loadu_ps(o)));
            }
        }
    }
}

/// int8 on AVX2: micro-tiles of up to 4 rows × half a panel (8 outputs), both operands
/// widened to i16 and multiplied with `vpmaddwd` (exact: no saturation).
///
/// # Safety
/// AVX2 and FMA are present; `tile` is a unit of `drive`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn int8_panels_avx2<'w>(tile: Tile, pw: impl Fn(usize) -> &'w [i8], q: &Quant) {
    for p in tile.p0..tile.p0 + tile.count {
        for half in 0..2 {
            // SAFETY: bytes `32·half..` of every quad's 64 are inside the panel.
            let w = unsafe { pw(p).as_ptr().add(32 * half) };
            let c = p * PANEL + 8 * half;
            sub_tiles!(tile, 4, |t, r0, n| {
                let xs = tile.xp[t * tile.groups * TILE_ROWS + r0..].as_ptr();
                let row = t * TILE_ROWS + r0;
                let o = tile.at(row, c);
                let f = Factors {
                    lo: q.lo[row..].as_ptr(),
                    sx: q.sx[row..].as_ptr(),
                    scale: q.scale[c..].as_ptr(),
                    colsum: q.colsum[c..].as_ptr(),
                };
                // SAFETY: as in `int8_panels_512`, 8 outputs from column `c`.
                unsafe { rows!(4, n, int8_tile_avx2(xs, w, tile.groups, o, tile.ldo, f)) }
            });
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn int8_panels_avx2<'w>(_: Tile, _: impl Fn(usize) -> &'w [i8], _: &Quant) {
    unreachable!("AVX2 needs x86_64")
}

/// `R` rows × 8 outputs of int8 on AVX2: `w` at the half panel's first quad (64 bytes
/// per quad, this half's 32 used), the rest as [`int8_tile_512`].
///
/// # Safety
/// AVX2 and FMA are present; bounds as [`int8_tile_512`] with 8 outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn int8_tile_avx2<const R: usize>(
    xs: *const u32,
    w: *const i8,
    groups: usize,
    out: *mut f32,
    ldo: usize,
    f: Factors,
) {
    // acc[r][q]: outputs 4q..4q+4, two partial sums each (lanes o0 o0 o1 o1 | o2 o2 o3 o3).
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    for g in 0..groups {
        // SAFETY: `g < groups`: inside the panel and the repacked rows.
        unsafe {
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(g * PANEL * 4).cast()));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(g * PANEL * 4 + 16).cast()));
            for (r, a) in acc.iter_mut().enumerate() {
                let x = _mm_set1_epi32(*xs.add(g * TILE_ROWS + r) as i32);
                let xv = _mm256_cvtepu8_epi16(x);
                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(xv, w0));
                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(xv, w1));
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: row `r < R` of the factors and `out`, 8 outputs.
        unsafe {
            // [o0 o1 o4 o5 | o2 o3 o6 o7] → o0..o7.
            let sums = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(a[0], a[1]));
            let lo = _mm256_set1_ps(*f.lo.add(r));
            let sx = _mm256_set1_ps(*f.sx.add(r));
            let scale = _mm256_loadu_ps(f.scale);
            let colsum = _mm256_loadu_ps(f.colsum);
            let v = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(sums), _mm256_mul_ps(lo, colsum));
            let o = out.add(r * ldo);
            _mm256_storeu_ps(o, _mm256_fmadd_ps(scale, v, _mm256_loadu_ps(o)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(rows: usize, inp: usize, out: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x: Vec<f32> = (0..rows * inp)
            .map(|i| ((i * 31 % 97) as f32 - 40.0) * 0.013)
            .collect();
        let wt: Vec<f32> = (0..inp * out)
            .map(|i| ((i * 17 % 89) as f32 - 44.0) * 0.011)
            .collect();
        let start: Vec<f32> = (0..rows * out).map(|i| (i % 7) as f32 * 0.25).collect();
        (x, wt, start)
    }

    /// `start + x · w` in f64, with `w` given transposed.
    fn direct(x: &[f32], wt: &[f32], start: &[f32], inp: usize, out: usize) -> Vec<f64> {
        let rows = x.len() / inp;
        let mut want = vec![0f64; rows * out];
        for t in 0..rows {
            for o in 0..out {
                want[t * out + o] = start[t * out + o] as f64
                    + (0..inp)
                        .map(|k| x[t * inp + k] as f64 * wt[k * out + o] as f64)
                        .sum::<f64>();
            }
        }
        want
    }

    /// Shapes: rows not a multiple of the tile, `k` not a multiple of the group, an
    /// odd panel count, more than one row block (AMX's and the others'); those with
    /// whole panel pairs and `k` a multiple of 64 (bf16: 32) run on AMX where it is
    /// present, the others fall back to AVX-512 there.
    const SHAPES: [(usize, usize, usize); 8] = [
        (24, 1536, 384),
        (AMX_ROW_BLOCK + 40, 128, 64),
        (1, 3, 16),
        (7, 301, 48),
        (13, 384, 32),
        (2, 385, 1536),
        (6, 256, 16),
        (ROW_BLOCK + 7, 70, 48),
    ];

    #[test]
    fn every_kernel_matches_the_generic_one_and_stays_near_f32() {
        for element in [Element::Bf16, Element::Int8] {
            for (rows, inp, out) in SHAPES {
                let (x, wt, start) = case(rows, inp, out);
                let want = direct(&x, &wt, &start, inp, out);
                let run = |k: Kernel| {
                    let mut got = start.clone();
                    match element {
                        Element::Bf16 => {
                            bf16_acc_with(k, &x, &Bf16Weight::pack(&wt, inp, out), &mut got)
                        }
                        Element::Int8 => {
                            int8_acc_with(k, &x, &Int8Weight::pack(&wt, inp, out), &mut got)
                        }
                    }
                    got
                };
                let generic = run(Kernel::Generic);
                // Quantisation error against the exact product: relative to the size of
                // the terms summed.
                let mag = (inp as f64).sqrt() * 0.6 * 0.5;
                let tol = match element {
                    Element::Bf16 => 0.01 * mag,
                    Element::Int8 => 0.03 * mag,
                };
                for (g, w) in generic.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < tol,
                        "{element:?} generic {rows}x{inp}x{out}: {g} vs {w}"
                    );
                }
                for k in [Kernel::Amx, Kernel::Avx512, Kernel::Avx2] {
                    if !k.supported(element) {
                        eprintln!(
                            "qgemm: this CPU does not run {}: not tested here",
                            k.name(element)
                        );
                        continue;
                    }
                    let got = run(k);
                    for (i, (a, b)) in got.iter().zip(&generic).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                            "{} {rows}x{inp}x{out} at {i}: {a} vs generic {b}",
                            k.name(element)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_of(bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(f32_of(bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(f32_of(bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(f32_of(bf16(-2.5)), -2.5);
    }

    #[test]
    fn threads_split_panels_without_changing_the_result() {
        // An AMX-sized shape (whole panel pairs, k a multiple of 64) and one that is not.
        for (rows, inp, out) in [(40, 384, 96), (11, 384, 80)] {
            let (x, wt, start) = case(rows, inp, out);
            let w8 = Int8Weight::pack(&wt, inp, out);
            let w16 = Bf16Weight::pack(&wt, inp, out);
            let pool = |n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap()
            };
            let (one, two) = (pool(1), pool(2));
            let (mut a, mut b) = (start.clone(), start.clone());
            one.install(|| int8_acc(&x, &w8, &mut a));
            two.install(|| int8_acc(&x, &w8, &mut b));
            assert_eq!(a, b);
            let (mut a, mut b) = (start.clone(), start);
            one.install(|| bf16_acc(&x, &w16, &mut a));
            two.install(|| bf16_acc(&x, &w16, &mut b));
            assert_eq!(a, b);
        }
    }
}
