//! The candle encoder path: a BERT-family encoder (all-MiniLM-L6-v2 and other BERT
//! checkpoints) written on candle tensor ops, so it runs wherever candle runs: the CUDA
//! path, and the CPU as the reference the packed kernels ([`super::packed`]) are tested
//! against. The packed kernels read the same checkpoint through [`checkpoint_root`].
//!
//! The dense layers and the residual stream run in the encoder's [`DType`]: f32, or on
//! CUDA f16/bf16 (tensor cores; cuBLAS sums in f32). Layer norm and softmax sum in f32
//! in every dtype (candle's kernels widen half inputs), and pooling and the head run on
//! the f32 copy of the last hidden state ([`mean_pool`]).
//!
//! Fewer launches than one op per PyTorch module: query, key and value are one matmul
//! (their weights concatenated at load), the attention scale is folded into the query
//! weights, and the token-type row is folded into the position table.
//!
//! The forward pass takes a padded batch and its attention mask; padded positions get
//! the most negative attention bias of the dtype, so a text gives the same output alone
//! or padded in a batch.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

/// The tensor every BERT checkpoint has, under the `bert.` prefix or at the root.
const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// The fields of a BERT `config.json` the encoders use (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// The feed-forward activation; only `gelu` (the erf form) is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Rows of the position-embedding table: the longest input.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (every token is of type 0 here).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Layer norm's epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Only `absolute` (the default) is supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}

/// Checks that both encoder paths support `config`, and returns the var builder at the
/// model's root: under `bert.` when the checkpoint has that prefix (a
/// `BertForSequenceClassification` save), else the checkpoint's root.
pub fn checkpoint_root<'a>(vb: VarBuilder<'a>, config: &BertConfig) -> Result<VarBuilder<'a>> {
    check_config(config)?;
    Ok(if vb.contains_tensor(&format!("bert.{WORD_EMBEDDINGS}")) {
        vb.pp("bert")
    } else {
        vb
    })
}

/// Checks that the encoders support `config` (activation, position embeddings, shapes).
pub fn check_config(config: &BertConfig) -> Result<()> {
    if config.hidden_act != "gelu" {
        candle_core::bail!(
            "hidden_act `{}` is not supported (only `gelu`, the erf form)",
            config.hidden_act
        );
    }
    if config
        .position_embedding_type
        .as_deref()
        .is_some_and(|p| p != "absolute")
    {
        candle_core::bail!("only absolute position embeddings are supported");
    }
    let (h, heads) = (config.hidden_size, config.num_attention_heads);
    if h == 0 || heads == 0 || !h.is_multiple_of(heads) {
        candle_core::bail!("hidden_size is not a multiple of num_attention_heads");
    }
    if config.type_vocab_size == 0 || config.intermediate_size == 0 {
        candle_core::bail!("type_vocab_size and intermediate_size must be at least 1");
    }
    Ok(())
}

/// A linear layer: `weight` `[out, in]`, `bias` `[out]`.
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// Reads `prefix.weight` and `prefix.bias` (f32); the caller converts.
    fn read(vb: &VarBuilder, inputs: usize, outputs: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            vb.get((outputs, inputs), "weight")?,
            vb.get(outputs, "bias")?,
        ))
    }

    fn new((weight, bias): (Tensor, Tensor), dtype: DType) -> Result<Self> {
        Ok(Dense {
            weight: weight.to_dtype(dtype)?,
            bias: bias.to_dtype(dtype)?,
        })
    }

    /// `x [n, in]` → `[n, out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// Layer norm's scale and shift.
struct Norm {
    gamma: Tensor,
    beta: Tensor,
}

impl Norm {
    fn new(vb: &VarBuilder, h: usize, dtype: DType) -> Result<Self> {
        Ok(Norm {
            gamma: vb.get(h, "weight")?.to_dtype(dtype)?,
            beta: vb.get(h, "bias")?.to_dtype(dtype)?,
        })
    }

    /// Normalises the last dimension (sums in f32 in every dtype).
    fn forward(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.gamma, &self.beta, eps)
    }
}

struct Layer {
    /// Query (pre-scaled by 1/√head_dim), key and value, stacked: `[3h, h]`.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    intermediate: Dense,
    output: Dense,
    out_norm: Norm,
}

/// A BERT encoder on candle tensors, in one dtype, on one device.
pub struct CandleEncoder {
    word: Tensor,
    /// Position embeddings plus the token-type-0 row, `[max_positions, h]`.
    position: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    vocab: usize,
    heads: usize,
    head_dim: usize,
    max_positions: usize,
    eps: f32,
    dtype: DType,
}

impl CandleEncoder {
    /// Builds the encoder from a var builder over the checkpoint (read as f32), its
    /// weights converted to `dtype` (f32, f16 or bf16).
    pub fn load(vb: VarBuilder, config: &BertConfig, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            candle_core::bail!("the candle encoder runs f32, f16 or bf16, not {dtype:?}");
        }
        let vb = checkpoint_root(vb, config)?;
        let (h, heads) = (config.hidden_size, config.num_attention_heads);
        let head_dim = h / heads;
        let e = vb.pp("embeddings");
        let word = e
            .pp("word_embeddings")
            .get((config.vocab_size, h), "weight")?;
        let position = e
            .pp("position_embeddings")
            .get((config.max_position_embeddings, h), "weight")?;
        let type0 = e
            .pp("token_type_embeddings")
            .get((config.type_vocab_size, h), "weight")?
            .narrow(0, 0, 1)?;
        let position = position.broadcast_add(&type0)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let (qw, qb) = Dense::read(&a.pp("self.query"), h, h)?;
            let (kw, kb) = Dense::read(&a.pp("self.key"), h, h)?;
            let (vw, vb_) = Dense::read(&a.pp("self.value"), h, h)?;
            let qkv = (
                Tensor::cat(&[(qw * scale)?, kw, vw], 0)?,
                Tensor::cat(&[(qb * scale)?, kb, vb_], 0)?,
            );
            layers.push(Layer {
                qkv: Dense::new(qkv, dtype)?,
                attn_out: Dense::new(Dense::read(&a.pp("output.dense"), h, h)?, dtype)?,
                attn_norm: Norm::new(&a.pp("output.LayerNorm"), h, dtype)?,
                intermediate: Dense::new(
                    Dense::read(&l.pp("intermediate.dense"), h, config.intermediate_size)?,
                    dtype,
                )?,
                output: Dense::new(
                    Dense::read(&l.pp("output.dense"), config.intermediate_size, h)?,
                    dtype,
                )?,
                out_norm: Norm::new(&l.pp("output.LayerNorm"), h, dtype)?,
            });
        }
        Ok(CandleEncoder {
            word: word.to_dtype(dtype)?,
            position: position.to_dtype(dtype)?,
            emb_norm: Norm::new(&e.pp("LayerNorm"), h, dtype)?,
            layers,
            vocab: config.vocab_size,
            heads,
            head_dim,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            dtype,
        })
    }

    /// Checks tokenized texts before they reach the device (an id past the vocabulary
    /// would read outside the embedding table there).
    pub fn check(&self, token_ids: &[Vec<u32>]) -> Result<()> {
        for ids in token_ids {
            if ids.is_empty() {
                candle_core::bail!("a text has no tokens");
            }
            if ids.len() > self.max_positions {
                candle_core::bail!(
                    "a text has {} tokens; the model takes at most {}",
                    ids.len(),
                    self.max_positions
                );
            }
            if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
                candle_core::bail!(
                    "token id {bad} is outside the vocabulary ({} ids)",
                    self.vocab
                );
            }
        }
        Ok(())
    }

    /// The dtype of its weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The last hidden state, `[batch, seq, hidden]` in f32, for `ids` and `mask` of
    /// shape `[batch, seq]` (u32; mask 1 for tokens, 0 for padding). Every token is of
    /// type 0.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.max_positions {
            candle_core::bail!("{t} tokens; the model has {} positions", self.max_positions);
        }
        let h = self.heads * self.head_dim;
        let x = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?
            .broadcast_add(&self.position.narrow(0, 0, t)?)?;
        let mut x = self.emb_norm.forward(&x, self.eps)?.reshape((b * t, h))?;
        // 0 on tokens, the dtype's most negative value on padding: `[b, 1, 1, t]`.
        let lowest = match self.dtype {
            DType::F16 => -65504.0,
            DType::BF16 => -3.389_531_4e38,
            _ => f64::from(f32::MIN),
        };
        let bias = mask
            .to_dtype(DType::F32)?
            .affine(-lowest, lowest)?
            .to_dtype(self.dtype)?
            .reshape((b, 1, 1, t))?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &bias, b, t)?;
        }
        x.reshape((b, t, h))?.to_dtype(DType::F32)
    }

    /// One encoder layer on `x [b*t, h]`.
    fn layer(&self, l: &Layer, x: &Tensor, bias: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let (nh, dh) = (self.heads, self.head_dim);
        let qkv = l
            .qkv
            .forward(x)?
            .reshape((b, t, 3, nh, dh))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
        let probs = softmax(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b * t, nh * dh))?;
        let x = l
            .attn_norm
            .forward(&(l.attn_out.forward(&context)? + x)?, self.eps)?;
        let inner = l.intermediate.forward(&x)?.gelu_erf()?;
        l.out_norm
            .forward(&(l.output.forward(&inner)? + &x)?, self.eps)
    }
}

/// Softmax over the last dimension, summing in f32: candle's CUDA kernel widens half
/// inputs itself; its CPU kernel sums in the input's dtype, so on the CPU half scores
/// are widened first (the same numerics as the CUDA kernel).
fn softmax(scores: &Tensor) -> Result<Tensor> {
    let dtype = scores.dtype();
    if scores.device().is_cpu() && dtype != DType::F32 {
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)
    } else {
        candle_nn::ops::softmax_last_dim(scores)
    }
}

/// Attention-mask mean pooling over `[batch, seq, hidden]`, then L2 normalisation when
/// `normalize`.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor, normalize: bool) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    let pooled = summed.broadcast_div(&counts)?;
    if normalize {
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norm)
    } else {
        Ok(pooled)
    }
}

/// The device a model's tensors live on: on CUDA a handle with a stream (and cuBLAS
/// handle) of its own, so the models of several workers on one GPU run concurrently.
pub fn device_of(spec: &crate::config::DeviceSpec) -> Result<Device> {
    match spec {
        crate::config::DeviceSpec::Cpu => Ok(Device::Cpu),
        crate::config::DeviceSpec::Cuda(n) => {
            let device = Device::new_cuda_with_stream(*n)?;
            #[cfg(feature = "cuda")]
            if let Device::Cuda(d) = &device {
                // SAFETY: cudarc's event tracking orders buffers used across streams.
                // A model's buffers never cross streams here: its weights, inputs,
                // activations and outputs are all created, used and freed on this
                // device's one stream, in stream order. Tracking would only add two
                // events per allocation and an event wait per launch.
                unsafe { d.disable_event_tracking() };
            }
            Ok(device)
        }
    }
}
