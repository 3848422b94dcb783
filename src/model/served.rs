//! A served checkpoint: its encoder family ([`super::family`]), the one head its task
//! kind needs ([`super::heads`]) and its own tokenizer, truncating at the model's
//! maximum. Loaded once per device and shared by the workers there (no per-call state).

use std::path::Path;

use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::family::{self, Encoder, Seq};
use super::heads::{self, SequenceHead, TokenHead};
use super::hf::{Checkpoint, Pooling};
use super::{Kernels, ModelError, Precision, runtime};
use crate::config::DeviceSpec;

/// What a task kind asks of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// Sequence-classification logits (`text_classifier`, `reranker`).
    Sequence,
    /// Per-token logits (`token_classifier`).
    Tokens,
    /// Pooled embeddings (`embeddings`).
    Pooled,
}

/// Settings a task may override on top of the checkpoint's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    /// Normalise embeddings (default: whether `modules.json` lists `Normalize`).
    pub normalize: Option<bool>,
    /// Keep the first `dimensions` values of each embedding (Matryoshka).
    pub dimensions: Option<usize>,
    /// Truncate inputs at this many tokens (at most the model's maximum).
    pub max_length: Option<usize>,
}

/// What a served model is, for `/v1/models` and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Where it came from (`hf:ORG/NAME` or the directory).
    pub source: String,
    /// `config.json`'s `model_type`.
    pub model_type: String,
    /// `config.json`'s first architecture.
    pub architecture: String,
    /// Labels in id order (classifiers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Whether labels are independent (sigmoid), `problem_type =
    /// "multi_label_classification"`.
    pub multi_label: bool,
    /// The embedding width (embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// The pooling (embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling: Option<&'static str>,
    /// Whether embeddings are normalised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// Tokens per input, special tokens included; longer inputs are truncated.
    pub max_length: usize,
    /// The precision its dense layers run in.
    pub precision: Precision,
    /// `packed` or `candle`.
    pub kernels: Kernels,
    /// The kernel of its dense layers.
    pub kernel: String,
    /// Whether the model gets the tokenizer's token types ([`Checkpoint::token_types`]).
    pub token_types: bool,
}

enum Head {
    Sequence(SequenceHead),
    Tokens(TokenHead),
    Pooled {
        pooling: Pooling,
        normalize: bool,
        dimensions: Option<usize>,
    },
}

/// A loaded checkpoint with one head, on one device.
pub struct ServedModel {
    encoder: Box<dyn Encoder>,
    head: Head,
    tokenizer: Tokenizer,
    /// What it is.
    pub info: ModelInfo,
}

/// The checkpoint's tokenizer truncating at `max_length` (longest first, for pairs), no
/// padding: what submit uses to tokenize off the worker's thread.
pub fn tokenizer_for(ck: &Checkpoint, max_length: usize) -> Result<Tokenizer, ModelError> {
    let mut t = ck.tokenizer.clone();
    t.with_padding(None);
    t.with_truncation(Some(TruncationParams {
        max_length,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
        direction: TruncationDirection::Right,
    }))
    .map_err(runtime)?;
    Ok(t)
}

/// `tokenizer` without truncation: counts an input's tokens before it is cut, for a
/// caller that refuses a long input rather than truncate it (TEI's `truncate: false`).
pub fn untruncated(tokenizer: &Tokenizer) -> Result<Tokenizer, ModelError> {
    let mut t = tokenizer.clone();
    t.with_truncation(None).map_err(runtime)?;
    Ok(t)
}

impl ServedModel {
    /// Loads `ck` with the head `kind` needs onto `device`. `source` is how the task
    /// named it.
    pub fn load(
        ck: &Checkpoint,
        source: &str,
        kind: HeadKind,
        device: DeviceSpec,
        kernels: Option<Kernels>,
        precision: Precision,
        overrides: Overrides,
    ) -> Result<Self, ModelError> {
        let wanted = match kind {
            HeadKind::Sequence => Some("ForSequenceClassification"),
            HeadKind::Tokens => Some("ForTokenClassification"),
            HeadKind::Pooled => None,
        };
        if let Some(suffix) = wanted
            && !ck.architecture.is_empty()
            && !ck.architecture.ends_with(suffix)
        {
            return Err(ck.config_error(format!(
                "architectures: this task needs a *{suffix} checkpoint, not a {}",
                ck.architecture
            )));
        }
        let encoder = load_encoder(ck, device, kernels, precision)?;
        let h = encoder.hidden_size();
        let labels = ck.labels.clone();
        let vb = family::var_builder(&ck.weights, &candle_core::Device::Cpu)?;
        let need_labels = || {
            if labels.is_empty() {
                Err(ck.config_error(
                    "field `id2label` is missing: a classifier's checkpoint names its labels",
                ))
            } else {
                Ok(labels.len())
            }
        };
        let head = match kind {
            HeadKind::Sequence => Head::Sequence(SequenceHead::load(ck, &vb, h, need_labels()?)?),
            HeadKind::Tokens => Head::Tokens(TokenHead::load(ck, &vb, h, need_labels()?)?),
            HeadKind::Pooled => {
                let pooling = ck.pooling.unwrap_or(Pooling::Mean);
                let dimensions = match overrides.dimensions {
                    Some(d) if d == 0 || d > h => {
                        return Err(runtime(format!(
                            "dimensions = {d}: the model's embeddings have {h} (1..={h})"
                        )));
                    }
                    d => d,
                };
                Head::Pooled {
                    pooling,
                    normalize: overrides.normalize.unwrap_or(ck.normalize),
                    dimensions,
                }
            }
        };
        let reach = encoder.max_tokens();
        let max_length = overrides
            .max_length
            .or(ck.declared_max_length)
            .unwrap_or(reach)
            .min(reach)
            .max(2);
        let tokenizer = tokenizer_for(ck, max_length)?;
        let (pooling, normalize, dimensions) = match &head {
            Head::Pooled {
                pooling,
                normalize,
                dimensions,
            } => (
                Some(pooling.as_str()),
                Some(*normalize),
                Some(dimensions.unwrap_or(h)),
            ),
            _ => (None, None, None),
        };
        let info = ModelInfo {
            source: source.to_string(),
            model_type: ck.model_type.clone(),
            architecture: ck.architecture.clone(),
            labels: if kind == HeadKind::Pooled {
                Vec::new()
            } else {
                labels
            },
            multi_label: ck.problem_type.as_deref() == Some("multi_label_classification"),
            dimensions,
            pooling,
            normalize,
            max_length,
            precision: encoder.precision(),
            kernels: encoder.kernels(),
            kernel: encoder.kernel(),
            token_types: ck.token_types,
        };
        Ok(ServedModel {
            encoder,
            head,
            tokenizer,
            info,
        })
    }

    /// Opens `dir` and loads it ([`Checkpoint::open`], [`ServedModel::load`]).
    pub fn open(
        dir: &Path,
        source: &str,
        kind: HeadKind,
        device: DeviceSpec,
        kernels: Option<Kernels>,
        precision: Precision,
        overrides: Overrides,
    ) -> Result<Self, ModelError> {
        let ck = Checkpoint::open(dir)?;
        Self::load(&ck, source, kind, device, kernels, precision, overrides)
    }

    /// The tokenizer, truncating at [`ModelInfo::max_length`].
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenizes a text or a text pair (character offsets).
    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Encoding, ModelError> {
        encode(&self.tokenizer, text, pair)
    }

    /// The sequence the encoder runs for an encoding.
    pub fn seq(&self, e: &Encoding) -> Seq {
        seq_of(e, self.info.token_types)
    }

    /// Whether a batch runs unpadded (packed kernels).
    pub fn packs_batches(&self) -> bool {
        self.encoder.packs_batches()
    }

    /// The encoder's packed hidden states for `seqs`, in order. A family that pads
    /// (candle) runs length groups ([`super::length_groups`]), so a short text does not
    /// pay for the longest of its batch; packed kernels run the batch as one.
    fn hidden(&self, seqs: &[Seq]) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
        if lens.contains(&0) {
            return Err(runtime("a sequence has no tokens"));
        }
        if self.encoder.packs_batches() || seqs.len() <= 1 {
            return Ok((self.encoder.forward(seqs)?, lens));
        }
        let h = self.encoder.hidden_size();
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        for group in super::length_groups(&lens, super::MAX_PADDING_WASTE) {
            let sub: Vec<Seq> = group.iter().map(|&i| seqs[i].clone()).collect();
            let out = self.encoder.forward(&sub)?;
            let mut start = 0;
            for &i in &group {
                rows[i] = out[start * h..(start + lens[i]) * h].to_vec();
                start += lens[i];
            }
        }
        Ok((rows.concat(), lens))
    }

    /// Sequence logits, one row per sequence (sequence heads).
    pub fn predict(&self, seqs: &[Seq]) -> Result<Vec<Vec<f32>>, ModelError> {
        let Head::Sequence(head) = &self.head else {
            return Err(runtime("this model was loaded without a sequence head"));
        };
        let (hidden, lens) = self.hidden(seqs)?;
        Ok(head.logits(&hidden, &lens, self.encoder.hidden_size()))
    }

    /// Per-token logits per sequence (token heads).
    pub fn predict_tokens(&self, seqs: &[Seq]) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        let Head::Tokens(head) = &self.head else {
            return Err(runtime("this model was loaded without a token head"));
        };
        let (hidden, lens) = self.hidden(seqs)?;
        Ok(head.logits(&hidden, &lens, self.encoder.hidden_size()))
    }

    /// Pooled embeddings per sequence.
    pub fn embed(&self, seqs: &[Seq]) -> Result<Vec<Vec<f32>>, ModelError> {
        let Head::Pooled {
            pooling,
            normalize,
            dimensions,
        } = self.head
        else {
            return Err(runtime("this model was loaded without pooling"));
        };
        let (hidden, lens) = self.hidden(seqs)?;
        Ok(heads::pool(
            &hidden,
            &lens,
            self.encoder.hidden_size(),
            pooling,
            normalize,
            dimensions,
        ))
    }
}

/// Tokenizes a text or a text pair with `tokenizer` (special tokens added, character
/// offsets).
pub fn encode(
    tokenizer: &Tokenizer,
    text: &str,
    pair: Option<&str>,
) -> Result<Encoding, ModelError> {
    match pair {
        Some(p) => tokenizer.encode_char_offsets((text, p), true),
        None => tokenizer.encode_char_offsets(text, true),
    }
    .map_err(runtime)
}

/// An encoding's ids and token types (all 0 unless `token_types`).
pub fn seq_of(e: &Encoding, token_types: bool) -> Seq {
    Seq {
        ids: e.get_ids().to_vec(),
        types: if token_types {
            e.get_type_ids().to_vec()
        } else {
            vec![0; e.len()]
        },
    }
}
/// Loads the encoder family that serves `ck` on `device`: the packed BERT-family
/// kernels on the CPU (the default there) or candle-transformers.
fn load_encoder(
    ck: &Checkpoint,
    device: DeviceSpec,
    kernels: Option<Kernels>,
    precision: Precision,
) -> Result<Box<dyn Encoder>, ModelError> {
    if family::is_bert_family(&ck.model_type) {
        let kernels = kernels.unwrap_or(Kernels::Packed);
        if kernels != Kernels::Packed || device != DeviceSpec::Cpu {
            return Err(runtime(format!(
                "model_type `{}` runs on the packed CPU kernels (kernels = \"packed\", \
                 device cpu); asked for {kernels} on {device}",
                ck.model_type
            )));
        }
        let precision = precision
            .for_kernels(Kernels::Packed, device)
            .map_err(runtime)?;
        let (config, layout) = family::bert_family(ck)?;
        let vb = family::var_builder(&ck.weights, &candle_core::Device::Cpu)?;
        let vb = family::encoder_root(vb, layout.prefix, "embeddings.word_embeddings.weight");
        let weights = ck.weights[0].clone();
        let load = || {
            super::bert::check_config(&config)?;
            super::packed::PackedEncoder::load_layout(vb, &config, &layout, precision)
        };
        let cache = super::packed::cache_dir();
        let encoder = if ck.weights.len() == 1 {
            super::packed::load_shared(&weights, &ck.config_text, precision, cache.as_deref(), load)
        } else {
            load()
        }
        .map_err(|e| ModelError::File {
            path: weights,
            message: e.to_string(),
        })?;
        return Ok(Box::new(encoder));
    }
    let kernels = kernels.unwrap_or(Kernels::Candle);
    if kernels != Kernels::Candle {
        return Err(runtime(format!(
            "model_type `{}` runs on the candle kernels (candle-transformers); the packed \
             kernels serve bert, roberta, xlm-roberta, camembert and distilbert",
            ck.model_type
        )));
    }
    match precision {
        Precision::Auto | Precision::F32 => {}
        p => {
            return Err(runtime(format!(
                "model_type `{}` runs in f32 (candle-transformers); precision {p} is for \
                 the packed BERT-family kernels",
                ck.model_type
            )));
        }
    }
    let dev = super::bert::device_of(&device).map_err(runtime)?;
    match ck.model_type.as_str() {
        "deberta-v2" => Ok(Box::new(super::debertav2::DebertaV2::load(ck, dev)?)),
        "modernbert" => Ok(Box::new(super::modernbert::ModernBert::load(ck, dev)?)),
        other => Err(runtime(format!(
            "model_type `{other}` has no encoder; supported: {}",
            super::hf::SUPPORTED.join(", ")
        ))),
    }
}
