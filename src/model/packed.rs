//! The encoder's CPU path: packed batches and fused kernels.
//!
//! The candle encoder in [`super::bert`] pads a batch to its longest text and runs one
//! tensor op at a time, each allocating its output. This path runs the same arithmetic
//! on plain buffers:
//!
//! - **Packed batches.** Every text's tokens are laid end to end, with no padding: the
//!   dense layers see one `[tokens, hidden]` matrix, and attention runs per text over
//!   its own tokens. Padding costs nothing, so a batch needs no grouping by length.
//! - **Fused epilogues.** Each dense layer's output buffer is first filled with its bias
//!   (plus the residual where there is one) and the matrix product is accumulated onto
//!   it, so bias and residual adds cost no extra pass or buffer. Q, K and V are one
//!   dense layer with the three weights stacked.
//! - **Vectorised element-wise kernels.** GELU (with a rational `erf`), softmax (with a
//!   polynomial `exp`), layer norm and attention are written so the compiler vectorises
//!   them, and are compiled for AVX2 + FMA with run-time detection.
//! - **Four buffers per forward**, reused by every layer.
//!
//! The matrix products go through [`super::sgemm`] (weights packed at load) for
//! batches of up to [`SGEMM_MAX_ROWS`] tokens and through the `gemm` crate, the kernel
//! candle itself uses, for bigger ones. Outputs match PyTorch within 1e-4 and the
//! candle path within 1e-5 per element (tests/model.rs).

use std::path::{Path, PathBuf};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use gemm::Parallelism;

use super::bert::{BertConfig, checkpoint_root};
use super::family::{BertLayout, Encoder, Seq};
use super::sgemm::Write;
use super::weights::{Buf, Codec, Reader, Writer};
use super::{Kernels, ModelError, Precision, qgemm, runtime, sgemm};

/// A dense layer, `y = x · weightᵀ + bias`, its weight held in the layer's precision:
/// in f32, transposed (`weight_t`, row-major `[in, out]`, for the `gemm` crate) and/or
/// packed for [`sgemm`]; in bf16 or int8, packed for [`qgemm`] only.
#[derive(Default)]
struct Dense {
    /// The `gemm` crate's layout; empty where nothing reads it.
    weight_t: Buf<f32>,
    packed: Packed,
    bias: Buf<f32>,
    inp: usize,
    out: usize,
}

/// A dense weight packed for a kernel.
enum Packed {
    /// For [`sgemm`], where this CPU runs it.
    F32(Option<Buf<f32>>),
    Bf16(qgemm::Bf16Weight),
    Int8(qgemm::Int8Weight),
}

impl Default for Packed {
    fn default() -> Self {
        Packed::F32(None)
    }
}

#[derive(Default)]
struct Norm {
    weight: Buf<f32>,
    bias: Buf<f32>,
}

impl Norm {
    fn check(&self, n: usize) -> bool {
        self.weight.len() == n && self.bias.len() == n
    }

    fn codec(&mut self, c: &mut impl Codec) -> std::result::Result<(), String> {
        c.buf(&mut self.weight)?;
        c.buf(&mut self.bias)
    }
}

#[derive(Default)]
struct Layer {
    /// Query, key and value stacked: `[3 * hidden, hidden]`.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    intermediate: Dense,
    output: Dense,
    out_norm: Norm,
}

/// The encoder's weights as plain buffers, for the CPU: owned, or mapped from a shared
/// cache file ([`load_shared`]).
#[derive(Default)]
pub struct PackedEncoder {
    word: Buf<f32>,
    position: Buf<f32>,
    /// The token-type table, `[types, hidden]` (one zero row for families without
    /// token types).
    token_type: Buf<f32>,
    /// The position of a text's first token in the position table: 0 for BERT,
    /// `pad_token_id + 1` for the RoBERTa family.
    position_offset: usize,
    emb_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    max_positions: usize,
    eps: f32,
    precision: Precision,
}

fn flat(t: Tensor) -> Result<Buf<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?.into())
}

fn dense(vb: &VarBuilder, inp: usize, out: usize) -> Result<Dense> {
    Ok(Dense {
        weight_t: flat(vb.get((out, inp), "weight")?.t()?.contiguous()?)?,
        packed: Packed::F32(None),
        bias: flat(vb.get(out, "bias")?)?,
        inp,
        out,
    })
}

fn norm(vb: &VarBuilder, size: usize) -> Result<Norm> {
    Ok(Norm {
        weight: flat(vb.get(size, "weight")?)?,
        bias: flat(vb.get(size, "bias")?)?,
    })
}

/// Stacks dense layers with the same input width into one (outputs concatenated).
fn stack(parts: Vec<Dense>) -> Dense {
    let inp = parts[0].inp;
    let out = parts.iter().map(|d| d.out).sum();
    let mut weight_t = Vec::with_capacity(out * inp);
    let mut bias = Vec::with_capacity(out);
    for r in 0..inp {
        for d in &parts {
            weight_t.extend_from_slice(&d.weight_t[r * d.out..(r + 1) * d.out]);
        }
    }
    for d in parts {
        bias.extend_from_slice(&d.bias);
    }
    Dense {
        weight_t: weight_t.into(),
        packed: Packed::F32(None),
        bias: bias.into(),
        inp,
        out,
    }
}

impl Dense {
    /// Packs the weight for its precision's kernel. bf16 and int8 keep only their packed
    /// copy. f32 packs for [`sgemm`] where this CPU runs it; with AVX-512 every batch
    /// size goes through sgemm, so the `gemm` layout is dropped: one copy of the weights
    /// (AVX2 keeps both, for batches over [`SGEMM_MAX_ROWS`]). A layer whose width is
    /// not a whole number of panels stays in f32 on the `gemm` crate.
    fn finish(mut self, precision: Precision) -> Self {
        if !self.out.is_multiple_of(sgemm::PANEL) {
            return self;
        }
        let (w, inp, out) = (&self.weight_t, self.inp, self.out);
        self.packed = match precision.resolve() {
            Precision::Bf16 => Packed::Bf16(qgemm::Bf16Weight::pack(w, inp, out)),
            Precision::Int8 => Packed::Int8(qgemm::Int8Weight::pack(w, inp, out)),
            _ if sgemm::available() => Packed::F32(Some(sgemm::pack(w, inp, out).into())),
            _ => Packed::F32(None),
        };
        let gemm_reads_it = match self.packed {
            Packed::F32(None) => true,
            Packed::F32(Some(_)) => sgemm::isa() != Some(sgemm::Isa::Avx512),
            Packed::Bf16(_) | Packed::Int8(_) => false,
        };
        if !gemm_reads_it {
            self.weight_t = Buf::default();
        }
        self
    }

    /// Whether its buffers fit `inp` × `out` (see [`PackedEncoder::validate`]).
    fn check(&self, inp: usize, out: usize) -> bool {
        let (i, o) = (self.inp, self.out);
        i == inp
            && o == out
            && o > 0
            && self.bias.len() == o
            && (self.weight_t.is_empty() || self.weight_t.len() == i * o)
            && match &self.packed {
                Packed::F32(None) => self.weight_t.len() == i * o,
                Packed::F32(Some(p)) => o.is_multiple_of(sgemm::PANEL) && p.len() == i * o,
                Packed::Bf16(w) => w.check(i, o),
                Packed::Int8(w) => w.check(i, o),
            }
    }

    fn codec(&mut self, c: &mut impl Codec) -> std::result::Result<(), String> {
        c.buf(&mut self.weight_t)?;
        c.buf(&mut self.bias)?;
        c.usize(&mut self.inp)?;
        c.usize(&mut self.out)?;
        let mut tag = match self.packed {
            Packed::F32(None) => 0,
            Packed::F32(Some(_)) => 1,
            Packed::Bf16(_) => 2,
            Packed::Int8(_) => 3,
        };
        c.usize(&mut tag)?;
        match (tag, &mut self.packed) {
            (0, p) => *p = Packed::F32(None),
            (1, Packed::F32(Some(b))) => c.buf(b)?,
            (1, p) => {
                let mut b = Buf::default();
                c.buf(&mut b)?;
                *p = Packed::F32(Some(b));
            }
            (2, Packed::Bf16(w)) => w.codec(c)?,
            (2, p) => {
                let mut w = qgemm::Bf16Weight::default();
                w.codec(c)?;
                *p = Packed::Bf16(w);
            }
            (3, Packed::Int8(w)) => w.codec(c)?,
            (3, p) => {
                let mut w = qgemm::Int8Weight::default();
                w.codec(c)?;
                *p = Packed::Int8(w);
            }
            (t, _) => return Err(format!("unknown dense layout {t}")),
        }
        Ok(())
    }

    /// Bytes of weights held (both layouts where both are kept).
    fn weight_bytes(&self) -> usize {
        self.weight_t.len() * 4
            + match &self.packed {
                Packed::F32(p) => p.as_ref().map_or(0, |p| p.len() * 4),
                Packed::Bf16(w) => w.bytes(),
                Packed::Int8(w) => w.bytes(),
            }
    }
}

impl PackedEncoder {
    /// Reads the encoder's weights from a var builder over the checkpoint (the same
    /// names, prefix and checks as [`super::bert::CandleEncoder::load`]), the dense
    /// layers in `precision`.
    pub fn load(vb: VarBuilder, config: &BertConfig, precision: Precision) -> Result<Self> {
        let vb = checkpoint_root(vb, config)?;
        Self::load_layout(vb, config, &BertLayout::BERT, precision)
    }

    /// Reads the encoder of any BERT-family checkpoint (BERT, RoBERTa, XLM-RoBERTa,
    /// DistilBERT: [`BertLayout`] names its tensors and its position offset) from a var
    /// builder at the encoder's root, the dense layers in `precision`.
    pub fn load_layout(
        vb: VarBuilder,
        config: &BertConfig,
        layout: &BertLayout,
        precision: Precision,
    ) -> Result<Self> {
        let (h, heads) = (config.hidden_size, config.num_attention_heads);
        let e = vb.pp("embeddings");
        let token_type = match layout.token_type {
            Some(name) => flat(e.pp(name).get((config.type_vocab_size, h), "weight")?)?,
            None => vec![0f32; h].into(),
        };
        if layout.position_offset >= config.max_position_embeddings {
            candle_core::bail!(
                "max_position_embeddings {} leaves no position after the offset {}",
                config.max_position_embeddings,
                layout.position_offset
            );
        }
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("{}.{i}", layout.layers));
            layers.push(Layer {
                qkv: stack(vec![
                    dense(&l.pp(layout.query), h, h)?,
                    dense(&l.pp(layout.key), h, h)?,
                    dense(&l.pp(layout.value), h, h)?,
                ])
                .finish(precision),
                attn_out: dense(&l.pp(layout.attn_out), h, h)?.finish(precision),
                attn_norm: norm(&l.pp(layout.attn_norm), h)?,
                intermediate: dense(&l.pp(layout.intermediate), h, config.intermediate_size)?
                    .finish(precision),
                output: dense(&l.pp(layout.output), config.intermediate_size, h)?.finish(precision),
                out_norm: norm(&l.pp(layout.out_norm), h)?,
            });
        }
        Ok(PackedEncoder {
            word: flat(
                e.pp("word_embeddings")
                    .get((config.vocab_size, h), "weight")?,
            )?,
            position: flat(
                e.pp("position_embeddings")
                    .get((config.max_position_embeddings, h), "weight")?,
            )?,
            token_type,
            position_offset: layout.position_offset,
            emb_norm: norm(&e.pp("LayerNorm"), h)?,
            layers,
            hidden: h,
            heads,
            head_dim: h / heads,
            max_positions: config.max_position_embeddings - layout.position_offset,
            eps: config.layer_norm_eps as f32,
            precision: precision.resolve(),
        })
    }

    /// Writes or reads every field, in one order ([`super::weights`]).
    fn codec(&mut self, c: &mut impl Codec) -> std::result::Result<(), String> {
        c.buf(&mut self.word)?;
        c.buf(&mut self.position)?;
        c.buf(&mut self.token_type)?;
        self.emb_norm.codec(c)?;
        let mut n = self.layers.len();
        c.usize(&mut n)?;
        if n > 1024 {
            return Err(format!("{n} layers"));
        }
        self.layers.resize_with(n, Layer::default);
        for l in &mut self.layers {
            l.qkv.codec(c)?;
            l.attn_out.codec(c)?;
            l.attn_norm.codec(c)?;
            l.intermediate.codec(c)?;
            l.output.codec(c)?;
            l.out_norm.codec(c)?;
        }
        c.usize(&mut self.hidden)?;
        c.usize(&mut self.heads)?;
        c.usize(&mut self.head_dim)?;
        c.usize(&mut self.max_positions)?;
        c.usize(&mut self.position_offset)?;
        c.f32(&mut self.eps)?;
        let mut p = Precision::ALL
            .iter()
            .position(|p| *p == self.precision)
            .unwrap_or(0);
        c.usize(&mut p)?;
        self.precision = *Precision::ALL.get(p).ok_or("unknown precision")?;
        Ok(())
    }

    /// Checks every buffer's length against the shapes, so a damaged or foreign cache
    /// file is repacked instead of read out of bounds by the kernels.
    fn validate(&self) -> std::result::Result<(), String> {
        let h = self.hidden;
        let inter = self.layers.first().map_or(0, |l| l.intermediate.out);
        let ok = h > 0
            && self.heads > 0
            && self.head_dim * self.heads == h
            && !self.word.is_empty()
            && self.word.len().is_multiple_of(h)
            && self.position.len() == (self.max_positions + self.position_offset) * h
            && self.token_type.len() >= h
            && self.token_type.len().is_multiple_of(h)
            && self.emb_norm.check(h)
            && self.layers.iter().all(|l| {
                l.qkv.check(h, 3 * h)
                    && l.attn_out.check(h, h)
                    && l.attn_norm.check(h)
                    && l.intermediate.check(h, inter)
                    && l.output.check(inter, h)
                    && l.out_norm.check(h)
            });
        if ok {
            Ok(())
        } else {
            Err("buffer sizes do not match the model's shapes".into())
        }
    }

    /// Whether the weights live in a shared, read-only map of the cache file.
    pub fn weights_mapped(&self) -> bool {
        self.word.is_mapped()
    }

    /// The dense layers' precision (resolved: never `auto`).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of dense-layer weights held, in every layout kept.
    pub fn dense_weight_bytes(&self) -> usize {
        let l = |l: &Layer| {
            [&l.qkv, &l.attn_out, &l.intermediate, &l.output]
                .iter()
                .map(|d| d.weight_bytes())
                .sum::<usize>()
        };
        self.layers.iter().map(l).sum()
    }

    /// The hidden width.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The most tokens a text may have: the position table's rows past the offset.
    pub fn max_tokens(&self) -> usize {
        self.max_positions
    }

    /// The last hidden state of every token of every text, packed: text `i`'s rows are
    /// `offsets[i]..offsets[i + 1]` of the returned `[tokens, hidden]` matrix
    /// (row-major), where `offsets` is the running sum of the texts' lengths.
    pub fn forward(&self, texts: &[Vec<u32>]) -> Result<Vec<f32>> {
        self.forward_typed(texts, None)
    }

    /// [`PackedEncoder::forward`] of sequences with their token types (text pairs).
    pub fn forward_seqs(&self, seqs: &[Seq]) -> Result<Vec<f32>> {
        let ids: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
        let types: Vec<Vec<u32>> = seqs.iter().map(|s| s.types.clone()).collect();
        self.forward_typed(&ids, Some(&types))
    }

    /// [`PackedEncoder::forward`] with each token's type (`None`: type 0 everywhere).
    pub fn forward_typed(
        &self,
        texts: &[Vec<u32>],
        types: Option<&[Vec<u32>]>,
    ) -> Result<Vec<f32>> {
        if let Some(types) = types
            && (types.len() != texts.len()
                || types.iter().zip(texts).any(|(t, i)| t.len() != i.len()))
        {
            candle_core::bail!("token types do not match the token ids");
        }
        // A big batch goes through the layers in groups of consecutive texts, as many
        // as GROUP_TOKENS-token groups would take, of about equal size: a group's
        // activations stay in L2 from one operation to the next, where a whole
        // batch's spill to the last-level cache at every step. (A greedy cut at
        // GROUP_TOKENS would leave a short last group, which streams every weight for
        // a handful of tokens.) Texts never see each other, so the answers are the
        // same.
        let total: usize = texts.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(total * self.hidden);
        let groups = total.div_ceil(GROUP_TOKENS).max(1);
        // Text `i` starts a new group when more than half of it would fall past the
        // current group's share of the tokens.
        let (mut start, mut done, mut cut) = (0, 0, 1);
        for (i, t) in texts.iter().enumerate() {
            if i > start && (done + t.len() / 2) * groups > total * cut {
                self.forward_group(&texts[start..i], types.map(|t| &t[start..i]), &mut out)?;
                start = i;
                cut += 1;
            }
            done += t.len();
        }
        self.forward_group(&texts[start..], types.map(|t| &t[start..]), &mut out)?;
        Ok(out)
    }

    /// [`PackedEncoder::forward`] of one group: its rows are appended to `out`.
    fn forward_group(
        &self,
        texts: &[Vec<u32>],
        types: Option<&[Vec<u32>]>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let h = self.hidden;
        let vocab = self.word.len() / h;
        let type_rows = self.token_type.len() / h;
        if let Some(bad) = types
            .into_iter()
            .flatten()
            .flatten()
            .find(|&&t| t as usize >= type_rows)
        {
            candle_core::bail!("token type {bad} is outside the token-type table ({type_rows})");
        }
        let mut offsets = Vec::with_capacity(texts.len() + 1);
        offsets.push(0usize);
        for ids in texts {
            if ids.len() > self.max_positions {
                candle_core::bail!(
                    "a text has {} tokens; the encoder takes at most {}",
                    ids.len(),
                    self.max_positions
                );
            }
            if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                candle_core::bail!("token id {bad} is outside the vocabulary ({vocab})");
            }
            offsets.push(offsets.last().copied().unwrap_or(0) + ids.len());
        }
        let tokens = offsets[texts.len()];
        if tokens == 0 {
            return Ok(());
        }
        let inter = self.layers.first().map_or(0, |l| l.intermediate.out);
        let longest = texts.iter().map(Vec::len).max().unwrap_or(0);
        // Every value of the workspace is written before it is read (the embeddings,
        // `Write::Set`, attention), so a reused one needs no clearing. Its parts start
        // on 64-byte boundaries (whole multiples of 16 floats from an aligned start),
        // so no 512-bit load or store of the kernels splits a cache line. (Alternated
        // with a 16-byte offset, as `malloc` gives, batch 32 moved by less than the
        // noise, about 1 %.)
        let mut work = WORKSPACE.take();
        let sizes = [tokens * h, tokens * 3 * h, tokens * h, tokens * inter];
        let need = sizes
            .map(|n| n.next_multiple_of(ALIGN_FLOATS))
            .iter()
            .sum::<usize>()
            + attention_scratch(longest, h)
            + ALIGN_FLOATS;
        work.resize(work.len().max(need), 0.0);
        let skip = work
            .as_ptr()
            .align_offset(ALIGN_FLOATS * 4)
            .min(ALIGN_FLOATS);
        let mut rest = &mut work[skip..];
        let [x, qkv, ctx, mid] = sizes.map(|n| carve(&mut rest, n));
        let scratch = rest;
        let par = parallelism();
        for (i, (ids, &start)) in texts.iter().zip(&offsets).enumerate() {
            for (p, &id) in ids.iter().enumerate() {
                let row = &mut x[(start + p) * h..(start + p + 1) * h];
                let word = &self.word[id as usize * h..(id as usize + 1) * h];
                let at = p + self.position_offset;
                let pos = &self.position[at * h..(at + 1) * h];
                let ty = types.map_or(0, |t| t[i][p] as usize);
                let ty = &self.token_type[ty * h..(ty + 1) * h];
                for (((o, w), q), t) in row.iter_mut().zip(word).zip(pos).zip(ty) {
                    *o = w + q + t;
                }
            }
        }
        layer_norm(x, &self.emb_norm.weight, &self.emb_norm.bias, self.eps);

        let heads = Heads {
            count: self.heads,
            width: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        };
        for l in &self.layers {
            // Q, K, V for every token at once.
            apply(x, &l.qkv, qkv, par, Write::Set);
            // Attention, per text and head, over the text's own tokens.
            for w in offsets.windows(2) {
                let (s, e) = (w[0], w[1]);
                attention(
                    &qkv[s * 3 * h..e * 3 * h],
                    &mut ctx[s * h..e * h],
                    heads,
                    scratch,
                );
            }
            // x = norm(x + ctx · Woᵀ + bo)
            apply(ctx, &l.attn_out, x, par, Write::Add);
            layer_norm(x, &l.attn_norm.weight, &l.attn_norm.bias, self.eps);
            // mid = gelu(x · Wiᵀ + bi)
            apply(x, &l.intermediate, mid, par, Write::Gelu);
            // x = norm(x + mid · Wᵀ + b)
            apply(mid, &l.output, x, par, Write::Add);
            layer_norm(x, &l.out_norm.weight, &l.out_norm.bias, self.eps);
        }
        out.extend_from_slice(x);
        if work.len() <= WORKSPACE_KEPT {
            WORKSPACE.set(work);
        }
        Ok(())
    }
}

/// About the most tokens [`PackedEncoder::forward`] runs through the layers together. 384
/// tokens of f32 activations (Q/K/V, the intermediate layer) take about 4 MiB. Batch 32
/// of the bench texts (about 760 tokens) went from 202–211 to 220 msgs/s in f32 and
/// from 480–579 to 558–615 in bf16 (`bench_model`, 1 thread, alternated); int8 did
/// not move.
const GROUP_TOKENS: usize = 384;

/// Floats per 64-byte cache line: the workspace's parts start on line boundaries.
const ALIGN_FLOATS: usize = 16;

/// The first `n` floats of `rest`, which keeps what follows them rounded up to a whole
/// cache line (so a part that starts on a line leaves the next one on a line too).
fn carve<'a>(rest: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let (part, tail) = std::mem::take(rest).split_at_mut(n.next_multiple_of(ALIGN_FLOATS));
    *rest = tail;
    &mut part[..n]
}

/// The largest [`WORKSPACE`] a thread keeps between forward passes, in floats
/// (16 MiB: a batch of about 400 tokens; bigger ones allocate their own).
const WORKSPACE_KEPT: usize = 4 << 20;

thread_local! {
    /// A forward pass's intermediate activations (Q/K/V, attention output, the
    /// intermediate layer, attention scratch), kept between passes on the thread: a
    /// fresh one of a few MiB is page-faulted in on every pass. A pass takes it and
    /// puts it back, so a thread waiting in rayon that runs another pass meanwhile
    /// finds it empty and allocates its own.
    static WORKSPACE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Where packed weights are cached ([`load_shared`]): `$CELERIAC_CACHE_DIR/packed`
/// (set but empty: no cache), else `$XDG_CACHE_HOME/celeriac/packed`, else
/// `~/.cache/celeriac/packed`.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("CELERIAC_CACHE_DIR") {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(PathBuf::from(d).join("packed")),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("celeriac").join("packed")),
    }
}

/// FNV-1a, for cache file names and the code fingerprint (stable across builds and
/// Rust versions, unlike `std`'s hasher).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in *part {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The packing code itself: a change to any of these files makes a new cache key, so a
/// stale file is never read.
fn code_fingerprint() -> u64 {
    fnv(&[
        include_bytes!("packed.rs"),
        include_bytes!("qgemm.rs"),
        include_bytes!("sgemm.rs"),
        include_bytes!("weights.rs"),
        include_bytes!("bert.rs"),
        include_bytes!("family.rs"),
        include_bytes!("../model.rs"),
    ])
}

/// The encoder packed from `weights` in `precision`, through a cache file in `cache`
/// (see [`cache_dir`]), mapped read-only: every process that loads the same checkpoint
/// with the same precision and kernels maps the same file, so the page cache holds one
/// copy. The first process packs (`load`) and writes the file; processes that start
/// meanwhile wait for it (a lock file), then map it. The key checked on reading holds
/// the checkpoint's path, size and modification time, `config` (the model's
/// `config.json`), the precision, the kernels chosen here and the packing code's
/// fingerprint. Any cache failure (an unwritable directory, a damaged file) is logged
/// and the encoder is packed in memory instead.
pub fn load_shared(
    weights: &Path,
    config: &str,
    precision: Precision,
    cache: Option<&Path>,
    load: impl FnOnce() -> Result<PackedEncoder>,
) -> Result<PackedEncoder> {
    let precision = precision.resolve();
    let Some(dir) = cache else {
        return load();
    };
    // The checkpoint as it is now; checked again after packing, so a file replaced
    // meanwhile is never cached under the new file's key.
    let identity = || -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(weights).ok()?;
        let path = std::fs::canonicalize(weights).ok()?;
        Some(format!(
            "weights={} dev={} ino={} size={} mtime={}.{} ctime={}.{}",
            path.display(),
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        ))
    };
    let Some(before) = identity() else {
        return load();
    };
    let key = format!(
        "{before} config={:016x} precision={precision} f32={:?} bf16={:?} int8={:?} \
         code={:016x}",
        fnv(&[config.as_bytes()]),
        sgemm::isa(),
        qgemm::kernel(qgemm::Element::Bf16),
        qgemm::kernel(qgemm::Element::Int8),
        code_fingerprint(),
    );
    let stem = weights
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model");
    let canonical = std::fs::canonicalize(weights).unwrap_or_else(|_| weights.to_path_buf());
    // Files of other kernel sets (`CELERIAC_ISA`) keep their own names, so processes
    // with different caps do not replace each other's file.
    let kernel: String = precision
        .kernel()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let prefix = format!(
        "{stem}-{:08x}-{precision}-{kernel}-",
        fnv(&[canonical.as_os_str().as_encoded_bytes()]) as u32
    );
    let name = format!("{prefix}{:016x}.packed", fnv(&[key.as_bytes()]));
    let path = dir.join(&name);
    let read = || -> Option<PackedEncoder> {
        match Reader::open(&path, &key) {
            Ok(Some(mut r)) => {
                let mut e = PackedEncoder::default();
                match e.codec(&mut r).and_then(|()| e.validate()) {
                    Ok(()) if r.finished() => Some(e),
                    Ok(()) => {
                        tracing::warn!(path = %path.display(), "packed weights: more fields than this build reads; repacking");
                        None
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "packed weights unreadable; repacking");
                        None
                    }
                }
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "packed weights unreadable; repacking");
                None
            }
        }
    };
    if let Some(e) = read() {
        tracing::debug!(path = %path.display(), "packed weights mapped");
        return Ok(e);
    }
    let lock = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::File::create(dir.join(format!("{name}.lock"))));
    let lock = match lock {
        Ok(f) => f,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "packed-weights cache unusable; packing in memory");
            return load();
        }
    };
    // SAFETY: flock on a file descriptor we own; the lock goes with the descriptor
    // when `lock` is dropped at the end of this function.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        tracing::warn!(dir = %dir.display(), "packed-weights cache lock failed; packing in memory");
        return load();
    }
    // Another process may have written it while this one waited.
    if let Some(e) = read() {
        return Ok(e);
    }
    let mut encoder = load()?;
    if identity().as_deref() != Some(before.as_str()) {
        tracing::warn!(path = %weights.display(), "checkpoint replaced while loading; not cached");
        return Ok(encoder);
    }
    let mut w = Writer::default();
    let written = encoder
        .codec(&mut w)
        .map_err(std::io::Error::other)
        .and_then(|()| w.write(&path, &key));
    drop(w);
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "packed weights not cached; packing in memory");
        return Ok(encoder);
    }
    // Files of other keys for the same checkpoint, precision and kernels are stale once
    // they are an hour old (a process still mapping one keeps its pages until it exits;
    // younger ones may belong to another build running now). Lock files and other
    // processes' temporary files are left alone.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let n = entry.file_name();
            let n = n.to_string_lossy();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600));
            if n.starts_with(&prefix) && n.ends_with(".packed") && n != name && old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    tracing::info!(path = %path.display(), "packed weights cached");
    Ok(read().unwrap_or(encoder))
}

/// Attention-mask mean pooling of packed hidden states (see [`PackedEncoder::forward`]),
/// then L2 normalisation when `normalize`: `[texts, hidden]`, row-major.
pub fn mean_pool(packed: &[f32], texts: &[Vec<u32>], hidden: usize, normalize: bool) -> Vec<f32> {
    let mut out = vec![0f32; texts.len() * hidden];
    let mut start = 0;
    for (ids, o) in texts.iter().zip(out.chunks_exact_mut(hidden)) {
        for row in packed[start * hidden..(start + ids.len()) * hidden].chunks_exact(hidden) {
            for (a, v) in o.iter_mut().zip(row) {
                *a += v;
            }
        }
        start += ids.len();
        let count = (ids.len() as f32).max(1e-9);
        o.iter_mut().for_each(|a| *a /= count);
        if normalize {
            let norm = o.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            o.iter_mut().for_each(|a| *a /= norm);
        }
    }
    out
}

/// Intra-op parallelism: the calling rayon pool's threads (a worker's own pool).
fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Sets every row of `m` (row width `row.len()`) to `row`.
fn fill_rows(m: &mut [f32], row: &[f32]) {
    for r in m.chunks_exact_mut(row.len()) {
        r.copy_from_slice(row);
    }
}

/// Adds `row` to every row of `m`.
fn add_rows(m: &mut [f32], row: &[f32]) {
    for r in m.chunks_exact_mut(row.len()) {
        for (o, b) in r.iter_mut().zip(row) {
            *o += b;
        }
    }
}

/// Batches of up to this many tokens go through [`sgemm`], bigger ones through the
/// `gemm` crate. Measured with `bench_model` (BENCHMARKS.md): sgemm runs batch 1
/// (about 24 tokens) in less than half the time and batches 4–10 (up to about 240) 8–14 %
/// faster, but loses at 16 and 32, where `gemm`'s blocking reuses the weights better.
/// Up to this size the activations are one of sgemm's row blocks (252 tokens).
const SGEMM_MAX_ROWS: usize = sgemm::ROW_BLOCK;

/// `out = x · weightᵀ + bias`, `out += x · weightᵀ + bias` or
/// `out = gelu(x · weightᵀ + bias)` ([`Write`]), with `x` `[rows, d.inp]` and `out`
/// `[rows, d.out]`. sgemm applies the bias, the mode and GELU as it writes; the other
/// kernels accumulate onto the bias (or the residual plus the bias), set in a pass of
/// its own, and GELU takes a pass after them.
fn apply(x: &[f32], d: &Dense, out: &mut [f32], par: Parallelism, write: Write) {
    if let Packed::F32(Some(panels)) = &d.packed
        // With AVX-512, sgemm wins at every batch size measured (BENCHMARKS.md) and
        // the `gemm` layout is not kept.
        && (x.len() <= SGEMM_MAX_ROWS * d.inp || d.weight_t.is_empty())
    {
        let isa = sgemm::isa().expect("f32 panels are packed only where sgemm runs");
        return sgemm::dense(isa, x, d.inp, panels, Some(&d.bias), write, out, d.out);
    }
    match write {
        Write::Set | Write::Gelu => fill_rows(out, &d.bias),
        Write::Add => add_rows(out, &d.bias),
    }
    match &d.packed {
        Packed::Bf16(w) => qgemm::bf16_acc(x, w, out),
        Packed::Int8(w) => qgemm::int8_acc(x, w, out),
        Packed::F32(_) => gemm_acc(x, d, out, par),
    }
    if write == Write::Gelu {
        gelu(out);
    }
}

/// `out += x · weightᵀ` through the `gemm` crate (f32 without sgemm's panels).
///
/// `gemm` vectorises along the destination's unit-stride dimension and wants the
/// left operand unit-stride along it too, so this computes the transposed product
/// `outᵀ += weight · xᵀ`, reading the weight from its transposed copy `[inp, out]`
/// (unit stride along `out`) and `x` as it is: no operand needs transposing at run
/// time.
fn gemm_acc(x: &[f32], d: &Dense, out: &mut [f32], par: Parallelism) {
    let rows = x.len() / d.inp;
    assert_eq!(x.len(), rows * d.inp);
    assert_eq!(out.len(), rows * d.out);
    assert_eq!(d.weight_t.len(), d.out * d.inp);
    // SAFETY: the asserts above bound every access. dst is `out x rows` (unit row
    // stride, column stride `out`) over `out`; lhs is `out x inp` over `weight_t`
    // (unit row stride, column stride `out`); rhs is `inp x rows` over `x` (unit row
    // stride, column stride `inp`); none overlap.
    unsafe {
        gemm::gemm(
            d.out,
            rows,
            d.inp,
            out.as_mut_ptr(),
            d.out as isize,
            1,
            true,
            d.weight_t.as_ptr(),
            d.out as isize,
            1,
            x.as_ptr(),
            d.inp as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

// The element-wise kernels: one body each, compiled three times (baseline, AVX2 + FMA,
// AVX-512) and chosen at run time with the same detection as `sgemm`.

/// One module of the element-wise kernels compiled for `features` (the bodies are
/// `#[inline(always)]`, so each module gets its own vectorised copy).
macro_rules! simd_build {
    ($name:ident, $features:literal, $tile:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            #[target_feature(enable = $features)]
            pub unsafe fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
                super::layer_norm_body(x, w, b, eps)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn attention(
                qkv: &[f32],
                ctx: &mut [f32],
                heads: super::Heads,
                scratch: &mut [f32],
            ) {
                super::attention_body::<super::Fused, $tile>(qkv, ctx, heads, scratch)
            }
        }
    };
}

// Query tiles: 4 queries × 16 keys are 8 AVX accumulators but only 4 AVX-512 ones,
// too few to cover an FMA's latency on two ports; AVX-512 takes 8.
simd_build!(avx2, "avx2,fma", 4);
simd_build!(avx512, "avx512f,avx512bw,avx512vl,avx2,fma", 8);

/// Whether the element-wise kernels' AVX-512 build runs here (with the f32 kernel's).
fn wide() -> bool {
    sgemm::isa() == Some(sgemm::Isa::Avx512)
}

/// Calls the element-wise kernel `$f` of the widest build this CPU runs (AVX-512, else
/// AVX2 + FMA), else evaluates `$plain`.
macro_rules! widest {
    ($f:ident($($arg:expr),*), $plain:expr) => {{
        #[cfg(target_arch = "x86_64")]
        if wide() {
            // SAFETY: AVX-512F/BW/VL were detected (the f32 kernel is AVX-512's).
            return unsafe { avx512::$f($($arg),*) };
        }
        #[cfg(target_arch = "x86_64")]
        if sgemm::available() {
            // SAFETY: AVX2 and FMA were detected.
            return unsafe { avx2::$f($($arg),*) };
        }
        $plain
    }};
}

/// GELU in place (with the GEMM kernels, whose fused epilogue runs it too).
pub(super) use super::sgemm::gelu;

/// Layer norm of every row of `x`, in place (see `layer_norm_body`).
fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    widest!(layer_norm(x, w, b, eps), layer_norm_body(x, w, b, eps))
}

/// The attention's heads: how many, how wide, and the scale of their scores.
#[derive(Debug, Clone, Copy)]
struct Heads {
    count: usize,
    width: usize,
    scale: f32,
}

/// Self-attention of one text (see `attention_body`; on AVX-512 with head widths a
/// multiple of 16, [`attention_512`]).
fn attention(qkv: &[f32], ctx: &mut [f32], heads: Heads, scratch: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if wide() && heads.width.is_multiple_of(KEY_BLOCK) {
        let h = heads.count * heads.width;
        let len = ctx.len() / h;
        assert!(qkv.len() >= len * 3 * h && scratch.len() >= attention_scratch(len, h));
        // SAFETY: AVX-512F/BW/VL were detected; the shapes are asserted above.
        return unsafe { attention_512(qkv, ctx, heads, scratch) };
    }
    widest!(
        attention(qkv, ctx, heads, scratch),
        attention_body::<Plain, 4>(qkv, ctx, heads, scratch)
    )
}

/// [`attention`] on AVX-512 for head widths that are a multiple of 16, written with
/// intrinsics: the generic body's loops are short (about 24 keys, 32 columns) and the
/// compiler's vectorisation of them left the attention at about a tenth of a batch's
/// time, several times its arithmetic.
///
/// Only the keys are staged (transposed to `[hidden, lp]`, `lp` the length rounded up
/// to 16); queries and values are read where the QKV product wrote them. Per head, 8
/// queries at a time: their scores, 16 keys per vector, go to `probs` with the padding
/// keys masked to minus infinity as they are stored (out of the maximum); each query's
/// row then takes its exponentials in place, the padding's set to zero, and the weighted sum of values runs 32 columns at a time
/// (16 accumulators), the softmax's division applied once, to the sums.
///
/// # Safety
/// AVX-512F is present; `d` is a multiple of 16; `qkv` holds at least `len` rows of
/// `3 * heads * d` and `scratch` at least [`attention_scratch`]`(len, heads * d)`
/// floats, `len = ctx.len() / (heads * d)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attention_512(qkv: &[f32], ctx: &mut [f32], shape: Heads, scratch: &mut [f32]) {
    use std::arch::x86_64::*;
    const QT: usize = QUERY_TILE;
    let Heads {
        count: heads,
        width: d,
        scale,
    } = shape;
    let h = heads * d;
    let len = ctx.len() / h;
    if len == 0 {
        return;
    }
    let lp = len.next_multiple_of(KEY_BLOCK);
    let (kt, probs) = scratch.split_at_mut(lp * h);
    let probs = &mut probs[..QT * lp];
    for (j, row) in qkv.chunks_exact(3 * h).take(len).enumerate() {
        for (c, &kv) in row[h..2 * h].iter().enumerate() {
            kt[c * lp + j] = kv;
        }
    }
    for c in 0..h {
        kt[c * lp + len..(c + 1) * lp].fill(0.0);
    }
    // The last key block's real keys.
    let tail: __mmask16 = if len.is_multiple_of(KEY_BLOCK) {
        !0
    } else {
        (1u16 << (len % KEY_BLOCK)) - 1
    };
    let blocks = lp / KEY_BLOCK;
    let row = 3 * h;
    // `qp` reads the queries and the values, both in `qkv`'s rows.
    let (qp, kp, pp, cp) = (
        qkv.as_ptr(),
        kt.as_ptr(),
        probs.as_mut_ptr(),
        ctx.as_mut_ptr(),
    );
    let vscale = _mm512_set1_ps(scale);
    for head in 0..heads {
        for i0 in (0..len).step_by(QT) {
            let n = QT.min(len - i0);
            // A short last tile repeats its last query; those rows are not written.
            let q: [usize; QT] = std::array::from_fn(|t| (i0 + t.min(n - 1)) * row + head * d);
            let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); QT];
            for b in 0..blocks {
                let mut s = [_mm512_setzero_ps(); QT];
                for c in 0..d {
                    // SAFETY: column `head·d + c < h` of `kt`, keys `16b..16b+16 <= lp`;
                    // query rows `< len` of `qkv`, column `head·d + c < h`.
                    unsafe {
                        let k = _mm512_loadu_ps(kp.add((head * d + c) * lp + b * KEY_BLOCK));
                        for t in 0..QT {
                            let qv = _mm512_set1_ps(*qp.add(q[t] + c));
                            s[t] = _mm512_fmadd_ps(qv, k, s[t]);
                        }
                    }
                }
                let keep = if b + 1 == blocks { tail } else { !0 };
                for t in 0..QT {
                    let v =
                        _mm512_mask_mul_ps(_mm512_set1_ps(f32::NEG_INFINITY), keep, s[t], vscale);
                    max[t] = _mm512_max_ps(max[t], v);
                    // SAFETY: row `t < QT` of `probs`, keys `16b..16b+16 <= lp`.
                    unsafe { _mm512_storeu_ps(pp.add(t * lp + b * KEY_BLOCK), v) };
                }
            }
            let mut inv = [0f32; QT];
            for t in 0..n {
                let m = _mm512_set1_ps(_mm512_reduce_max_ps(max[t]));
                let mut sum = _mm512_setzero_ps();
                for b in 0..blocks {
                    let keep = if b + 1 == blocks { tail } else { !0 };
                    // SAFETY: as above.
                    unsafe {
                        let at = pp.add(t * lp + b * KEY_BLOCK);
                        // Padding keys weigh nothing.
                        let e = _mm512_maskz_mov_ps(
                            keep,
                            exp_nonpositive_512(_mm512_sub_ps(_mm512_loadu_ps(at), m)),
                        );
                        sum = _mm512_add_ps(sum, e);
                        _mm512_storeu_ps(at, e);
                    }
                }
                inv[t] = 1.0 / _mm512_reduce_add_ps(sum);
            }
            let mut c0 = 0;
            while c0 < d {
                // 32 columns (two vectors) at a time, or the last 16.
                let two = c0 + 2 * KEY_BLOCK <= d;
                let mut acc = [[_mm512_setzero_ps(); 2]; QT];
                for j in 0..len {
                    // SAFETY: value row `j < len`, columns `head·d + c0 .. + 32 <= h`
                    // (or `+ 16` when only one vector is left); probs row `t < QT`,
                    // key `j < lp`.
                    unsafe {
                        let v = qp.add(j * row + 2 * h + head * d + c0);
                        let v0 = _mm512_loadu_ps(v);
                        let v1 = if two {
                            _mm512_loadu_ps(v.add(KEY_BLOCK))
                        } else {
                            v0
                        };
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let p = _mm512_set1_ps(*pp.add(t * lp + j));
                            acc[0] = _mm512_fmadd_ps(p, v0, acc[0]);
                            if two {
                                acc[1] = _mm512_fmadd_ps(p, v1, acc[1]);
                            }
                        }
                    }
                }
                for t in 0..n {
                    let w = _mm512_set1_ps(inv[t]);
                    // SAFETY: context row `i0 + t < len`, columns inside head `head`.
                    unsafe {
                        let o = cp.add((i0 + t) * h + head * d + c0);
                        _mm512_storeu_ps(o, _mm512_mul_ps(acc[t][0], w));
                        if two {
                            _mm512_storeu_ps(o.add(KEY_BLOCK), _mm512_mul_ps(acc[t][1], w));
                        }
                    }
                }
                c0 += if two { 2 * KEY_BLOCK } else { KEY_BLOCK };
            }
        }
    }
}

/// [`exp_nonpositive`] on 16 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn exp_nonpositive_512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let x = _mm512_min_ps(x, _mm512_setzero_ps());
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
        _mm512_set1_ps(0.5),
    ));
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let e = _mm512_add_ps(
        _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
        _mm512_set1_ps(1.0),
    );
    let two_n = _mm512_slli_epi32::<23>(_mm512_castps_si512(_mm512_add_ps(
        n,
        _mm512_set1_ps(127.0 + 8_388_608.0),
    )));
    _mm512_mul_ps(e, _mm512_castsi512_ps(two_n))
}

/// `a · b + c`, fused into one FMA (inside the AVX2 and AVX-512 builds, whose target
/// features include FMA) or as a multiply and an add (the generic build, where
/// `f32::mul_add` would be a library call).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One rounding: `vfmadd` where the caller's target features include FMA.
struct Fused;
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// Two roundings, for the generic build.
struct Plain;
impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Lanes of the hand-split reductions (one AVX-512 register of f32, two AVX ones).
const LANES: usize = 16;

/// ln 2 in two parts for [`exp_nonpositive`]'s range reduction,
/// `r = x - n·LN2_HI + n·LN2_LO`: `n·LN2_HI` is exact for the `n` it sees.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = 2.121_944_4e-4;
/// [`exp_nonpositive`]'s polynomial in `r`, highest degree first (it approximates
/// `(exp(r) - 1 - r) / r²`).
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `exp(x)` for `x <= 0` down to -87 (softmax inputs after subtracting the maximum):
/// range reduction by ln 2 and a degree-6 polynomial (relative error < 2e-7 against
/// libm). Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI + n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    // 2^n, built from its exponent bits (n is in [-126, 0]). n + 127 + 2^23 is an
    // integer below 2^24, so its low mantissa bits are n + 127 exactly; shifting them
    // into the exponent field needs no float-to-int conversion (Rust's saturating
    // `as i32` is scalarised in vector loops: it had made the softmax most of the
    // attention's time).
    e * f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23)
}

#[inline(always)]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&t| f(t)).sum::<f32>()
}

/// Layer norm of every row of `x` (row width `w.len()`), in place.
#[inline(always)]
fn layer_norm_body(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = w.len();
    for row in x.chunks_exact_mut(n) {
        let mean = lane_sum(row, |v| v) / n as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &g), &c) in row.iter_mut().zip(w).zip(b) {
            *v = (*v - mean) * inv * g + c;
        }
    }
}

/// Keys per block of the attention kernel: a text's scores are computed over its length
/// rounded up to this, so every vector loop is whole.
const KEY_BLOCK: usize = 16;
/// The most queries an [`attention`] build computes together (its query tile): their
/// accumulators are independent, so the multiply-adds of one do not wait for another's.
const QUERY_TILE: usize = 8;

/// The scratch floats [`attention`] needs for a text of `len` tokens and `h` values
/// per token in each of Q, K and V (heads × head width).
fn attention_scratch(len: usize, h: usize) -> usize {
    len.next_multiple_of(KEY_BLOCK) * (3 * h + QUERY_TILE)
}

/// The largest value of `v` (16 lanes, so it vectorises; `v` a multiple of 16 long).
#[inline(always)]
fn lane_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; KEY_BLOCK];
    for c in v.chunks_exact(KEY_BLOCK) {
        for l in 0..KEY_BLOCK {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Self-attention of one text: `qkv` is its `[len, 3 * hidden]` rows (Q | K | V, each
/// `heads x d` wide), `ctx` its `[len, hidden]` output. `scratch` holds at least
/// [`attention_scratch`]`(len, heads * d)` floats.
///
/// First, one pass over the text's rows (in a batch they have left L2 by now, and
/// going head by head would read each row twelve times, 128 bytes at a time) copies
/// them out: the keys transposed to `[hidden, lp]` (`lp` the length rounded up to
/// [`KEY_BLOCK`], zero-padded), the queries scaled (so the scores' broadcasts are plain
/// loads), the values as they are. Then per head, queries go `QT` at a time: their
/// scores are
/// blocks of 16 keys accumulated in registers over `d`; the padding scores are set to
/// minus infinity before the softmax and their weights to zero after it; the weighted
/// sum of values is accumulated 16 columns at a time (when `d` is a multiple of 16).
#[inline(always)]
fn attention_body<M: MulAdd, const QT: usize>(
    qkv: &[f32],
    ctx: &mut [f32],
    shape: Heads,
    scratch: &mut [f32],
) {
    let Heads {
        count: heads,
        width: d,
        scale,
    } = shape;
    let h = heads * d;
    let len = ctx.len() / h;
    let lp = len.next_multiple_of(KEY_BLOCK);
    let (kt, rest) = scratch[..lp * (3 * h + QT)].split_at_mut(lp * h);
    let (qs, rest) = rest.split_at_mut(lp * h);
    let (vs, probs) = rest.split_at_mut(lp * h);
    for (j, row) in qkv.chunks_exact(3 * h).take(len).enumerate() {
        let (q, kv) = row.split_at(h);
        let (k, v) = kv.split_at(h);
        for (o, &qv) in qs[j * h..][..h].iter_mut().zip(q) {
            *o = qv * scale;
        }
        for (c, &kv) in k.iter().enumerate() {
            kt[c * lp + j] = kv;
        }
        vs[j * h..][..h].copy_from_slice(v);
    }
    // The padding columns of `kt`: zero, so that padding scores are finite.
    for c in 0..h {
        kt[c * lp + len..(c + 1) * lp].fill(0.0);
    }
    for head in 0..heads {
        let kt = &kt[head * d * lp..][..d * lp];
        for i0 in (0..len).step_by(QT) {
            let n = QT.min(len - i0);
            // A short last tile repeats its last query; those rows are not written.
            let q: [&[f32]; QT] =
                std::array::from_fn(|t| &qs[(i0 + t.min(n - 1)) * h + head * d..][..d]);
            for b in 0..lp / KEY_BLOCK {
                let mut s = [[0f32; KEY_BLOCK]; QT];
                for c in 0..d {
                    let k = &kt[c * lp + b * KEY_BLOCK..][..KEY_BLOCK];
                    for (s, q) in s.iter_mut().zip(&q) {
                        let qv = q[c];
                        for l in 0..KEY_BLOCK {
                            s[l] = M::mul_add(qv, k[l], s[l]);
                        }
                    }
                }
                for (t, s) in s.iter().enumerate() {
                    probs[t * lp + b * KEY_BLOCK..][..KEY_BLOCK].copy_from_slice(s);
                }
            }
            for row in probs.chunks_exact_mut(lp).take(n) {
                row[len..].fill(f32::NEG_INFINITY);
                let max = lane_max(row);
                for r in row.iter_mut() {
                    *r = exp_nonpositive(*r - max);
                }
                row[len..].fill(0.0);
                let inv = 1.0 / lane_sum(row, |v| v);
                row.iter_mut().for_each(|r| *r *= inv);
            }
            let v = |j: usize| &vs[j * h + head * d..][..d];
            if d.is_multiple_of(KEY_BLOCK) {
                for db in (0..d).step_by(KEY_BLOCK) {
                    let mut acc = [[0f32; KEY_BLOCK]; QT];
                    for j in 0..len {
                        let v = &v(j)[db..][..KEY_BLOCK];
                        for (t, acc) in acc.iter_mut().enumerate() {
                            let p = probs[t * lp + j];
                            for l in 0..KEY_BLOCK {
                                acc[l] = M::mul_add(p, v[l], acc[l]);
                            }
                        }
                    }
                    for (t, acc) in acc.iter().enumerate().take(n) {
                        ctx[(i0 + t) * h + head * d + db..][..KEY_BLOCK].copy_from_slice(acc);
                    }
                }
            } else {
                for t in 0..n {
                    let out = &mut ctx[(i0 + t) * h + head * d..][..d];
                    out.fill(0.0);
                    for j in 0..len {
                        let p = probs[t * lp + j];
                        for (o, &vv) in out.iter_mut().zip(v(j)) {
                            *o += p * vv;
                        }
                    }
                }
            }
        }
    }
}

/// The BERT family on these kernels, as the served models see an encoder.
impl Encoder for PackedEncoder {
    fn forward(&self, seqs: &[Seq]) -> std::result::Result<Vec<f32>, ModelError> {
        self.forward_seqs(seqs).map_err(runtime)
    }

    fn hidden_size(&self) -> usize {
        PackedEncoder::hidden_size(self)
    }

    fn max_tokens(&self) -> usize {
        PackedEncoder::max_tokens(self)
    }

    fn kernels(&self) -> Kernels {
        Kernels::Packed
    }

    fn precision(&self) -> Precision {
        PackedEncoder::precision(self)
    }

    fn kernel(&self) -> String {
        self.precision().kernel().to_string()
    }

    fn packs_batches(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::sgemm::{erf, gelu_body};
    use super::*;

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let d = (erf(x) as f64 - libm_erf(x as f64)).abs();
            worst = worst.max(d);
        }
        assert!(worst < 1e-6, "worst |erf - libm| {worst:e}");
    }

    fn libm_erf(x: f64) -> f64 {
        // candle's dependency `libm` (pure Rust) is the reference.
        libm::erf(x)
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let want = (x as f64).exp();
            let rel = ((exp_nonpositive(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1e4) < 1e-37);
        assert!(exp_nonpositive(f32::NEG_INFINITY) >= 0.0);
    }

    #[test]
    fn kernels_agree_with_the_generic_build() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.13)
            .collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        gelu(&mut a);
        gelu_body(&mut b);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-6);
        }
        let w: Vec<f32> = (0..100).map(|i| 1.0 + i as f32 * 0.01).collect();
        let bias: Vec<f32> = (0..100).map(|i| i as f32 * -0.02).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        layer_norm(&mut a, &w, &bias, 1e-12);
        layer_norm_body(&mut b, &w, &bias, 1e-12);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5);
        }
        // A normalised row has mean 0 and variance 1 before the affine part.
        let mut row: Vec<f32> = x[..100].to_vec();
        layer_norm_body(&mut row, &[1.0; 100], &[0.0; 100], 1e-12);
        let mean = row.iter().sum::<f32>() / 100.0;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 100.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "{mean} {var}"
        );
    }

    #[test]
    fn attention_matches_a_direct_computation() {
        // Head widths off and on the 16-column path; lengths inside one key block,
        // a whole block, over one, and query tiles with a short last one.
        for (heads, d, len) in [
            (3, 4, 5),
            (2, 32, 21),
            (1, 16, 16),
            (2, 32, 1),
            (1, 48, 34),
            (12, 32, 140),
        ] {
            attention_case(heads, d, len);
        }
    }

    fn attention_case(heads: usize, d: usize, len: usize) {
        let h = heads * d;
        let qkv: Vec<f32> = (0..len * 3 * h)
            .map(|i| ((i * 29 % 83) as f32 - 41.0) * 0.05)
            .collect();
        // Scores of the size a model's 1/sqrt(d) gives (up to about ±20 here).
        let scale = 2.0 / d as f32;
        // The widest build this CPU runs (AVX-512's intrinsics where `d` is a multiple
        // of 16), then the generic one.
        let mut scratch = vec![0f32; attention_scratch(len, h)];
        let mut widest = vec![0f32; len * h];
        let shape = Heads {
            count: heads,
            width: d,
            scale,
        };
        attention(&qkv, &mut widest, shape, &mut scratch);
        let mut plain = vec![0f32; len * h];
        attention_body::<Plain, 4>(&qkv, &mut plain, shape, &mut scratch);
        for ctx in [widest, plain] {
            check_attention(&qkv, &ctx, heads, d, scale);
        }
    }

    fn check_attention(qkv: &[f32], ctx: &[f32], heads: usize, d: usize, scale: f32) {
        let h = heads * d;
        let len = ctx.len() / h;
        for head in 0..heads {
            for i in 0..len {
                let q = |c: usize| qkv[i * 3 * h + head * d + c];
                let k = |j: usize, c: usize| qkv[j * 3 * h + h + head * d + c];
                let v = |j: usize, c: usize| qkv[j * 3 * h + 2 * h + head * d + c];
                let s: Vec<f64> = (0..len)
                    .map(|j| (0..d).map(|c| (q(c) * k(j, c)) as f64).sum::<f64>() * scale as f64)
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let want: f64 = (0..len).map(|j| e[j] / z * v(j, c) as f64).sum();
                    let got = ctx[i * h + head * d + c] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "head {head} row {i} col {c}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
