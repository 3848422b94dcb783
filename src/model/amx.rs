//! Intel AMX tiles for [`super::qgemm`]'s bf16 and int8 products (Sapphire Rapids and
//! later): one `tdpbf16ps` is 16 × 16 × 32 multiply-adds, one `tdpbusd` 16 × 16 × 64,
//! against 32 and 64 for the AVX-512 dot-product instructions.
//!
//! The weight panels need no other layout: a panel's 16 consecutive pairs (bf16) or
//! quads (int8) of `k` are 16 rows of 64 bytes, which is exactly a B tile. The
//! activations are given row-major (`[rows][inp]`, bf16 or u8, rows padded to a
//! multiple of 32). A block is 32 rows × 2 panels: four accumulator tiles, two A tiles,
//! two B tiles (8 of the 8 tile registers), stored to a 32 × 32 scratch and added into
//! the output by the caller's epilogue.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly.
//! Linux hands out AMX state only to processes that ask (`arch_prctl`), once;
//! [`available`] asks, and reports false where the kernel or the CPU says no.

#[cfg(target_arch = "x86_64")]
use std::arch::asm;

/// The element of a tile product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `tdpbf16ps`: bf16 pairs, f32 sums.
    Bf16,
    /// `tdpbusd`: u8 × i8 quads, i32 sums.
    Int8,
}

/// Bytes of one tile row: 32 bf16 or 64 bytes of `k`.
pub const ROW_BYTES: usize = 64;
/// Rows of a block (two A tiles).
pub const BLOCK_ROWS: usize = 32;

/// Whether this CPU and kernel run `op` on AMX (asks Linux for the tile state once).
pub fn available(op: Op) -> bool {
    static AVAILABLE: std::sync::OnceLock<[bool; 2]> = std::sync::OnceLock::new();
    AVAILABLE.get_or_init(detect)[op as usize]
}

/// CPUID (AMX-TILE, AMX-BF16, AMX-INT8), then Linux's permission for the tile data.
fn detect() -> [bool; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 7 exists where the maximum leaf is at least 7 (checked first).
        if std::arch::x86_64::__cpuid(0).eax < 7 {
            return [false; 2];
        }
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        let (tile, bf16, int8) = (edx >> 24 & 1 == 1, edx >> 22 & 1 == 1, edx >> 25 & 1 == 1);
        if !tile {
            return [false; 2];
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments; it changes only which
        // extended state this process may use.
        let permitted = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        } == 0;
        [bf16 && permitted, int8 && permitted]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        [false; 2]
    }
}

/// `ldtilecfg`'s operand: palette 1, tiles 0–7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: Config = Config {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The tile registers configured on this thread, released when dropped (so a thread
/// switch saves no tile data). Neither `Send` nor `Sync`: the configuration belongs to
/// the thread that loaded it.
pub struct Tiles(std::marker::PhantomData<*const ()>);

impl Tiles {
    /// Configures the tiles on this thread.
    ///
    /// # Safety
    /// [`available`] returned true for the ops that will run.
    pub unsafe fn new() -> Self {
        // SAFETY: AMX is present and permitted (the caller's contract); CONFIG is a
        // valid palette-1 configuration, 64-byte aligned.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, preserves_flags));
        }
        Tiles(std::marker::PhantomData)
    }

    /// One block: `c` (32 × 32 four-byte sums, row stride 128 bytes) = rows
    /// `a[0..32]` (row stride `lda` bytes) times panels `b[0]`, `b[1]` (64-byte rows)
    /// over `steps` tile steps of [`ROW_BYTES`] bytes of `k`.
    ///
    /// # Safety
    /// The tiles hold this crate's configuration (`self`); `op` is [`available`]; `a`
    /// has 32 rows of `steps * 64` readable bytes at stride `lda`; each `b[i]` has
    /// `steps * 1024` readable bytes; `c` has 32 × 32 writable four-byte values.
    #[inline]
    pub unsafe fn block(
        &self,
        op: Op,
        a: *const u8,
        lda: usize,
        b: [*const u8; 2],
        steps: usize,
        c: *mut u8,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: every load reads one tile (16 rows of 64 bytes) inside the bounds
        // the caller guarantees; the stores write the 32 × 32 values of `c`.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, preserves_flags)
            );
            let a1 = a.add(16 * lda);
            for s in 0..steps {
                let (a0, a1) = (a.add(s * ROW_BYTES), a1.add(s * ROW_BYTES));
                let (b0, b1) = (b[0].add(s * 1024), b[1].add(s * 1024));
                if s + 1 < steps {
                    // The next step's weight tiles, a line per row (a prefetch never
                    // faults; these are inside the panels anyway).
                    for r in 0..16 {
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                            b0.add(1024 + r * 64).cast(),
                        );
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                            b1.add(1024 + r * 64).cast(),
                        );
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                            a0.add(ROW_BYTES + r * lda).cast(),
                        );
                        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                            a1.add(ROW_BYTES + r * lda).cast(),
                        );
                    }
                }
                match op {
                    Op::Bf16 => asm!(
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm6, [{b0} + {ldb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {ldb}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                        lda = in(reg) lda, ldb = in(reg) 64usize,
                        options(nostack, preserves_flags, readonly)
                    ),
                    Op::Int8 => asm!(
                        "tileloadd tmm4, [{a0} + {lda}*1]",
                        "tileloadd tmm6, [{b0} + {ldb}*1]",
                        "tdpbusd tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {ldb}*1]",
                        "tdpbusd tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {lda}*1]",
                        "tdpbusd tmm2, tmm5, tmm6",
                        "tdpbusd tmm3, tmm5, tmm7",
                        a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                        lda = in(reg) lda, ldb = in(reg) 64usize,
                        options(nostack, preserves_flags, readonly)
                    ),
                }
            }
            asm!(
                "tilestored [{c} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                "tilestored [{c2} + {ldc}*1], tmm2",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c = in(reg) c, c1 = in(reg) c.add(64), c2 = in(reg) c.add(16 * 128),
                c3 = in(reg) c.add(16 * 128 + 64), ldc = in(reg) 128usize,
                options(nostack, preserves_flags)
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (op, a, lda, b, steps, c);
            unreachable!("AMX needs x86_64")
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `new`; releasing returns them to the
        // initial state.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            asm!("tilerelease", options(nostack, preserves_flags));
        }
    }
}
