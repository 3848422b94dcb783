//! The candle encoder path: candle-transformers' BERT (all-MiniLM-L6-v2 and other
//! BERT-family checkpoints), the reference implementation and the CUDA path. The
//! packed CPU kernels ([`super::packed`]) read the same checkpoint through
//! [`checkpoint_root`].
//!
//! The forward pass takes a padded batch and its attention mask; padded positions get
//! the most negative attention bias, so a text gives the same output alone or padded
//! in a batch.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::BertModel;
pub use candle_transformers::models::bert::{
    Config as BertConfig, HiddenAct, PositionEmbeddingType,
};

/// The tensor every BERT checkpoint has, under the `bert.` prefix or at the root.
const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// Checks that both encoder paths support `config`, and returns the var builder at the
/// model's root: under `bert.` when the checkpoint has that prefix (a
/// `BertForSequenceClassification` save), else the checkpoint's root.
///
/// candle-transformers' own prefix check asks for a tensor named `bert`, which no
/// checkpoint has, and falls back on `config.model_type`; looking for the word
/// embeddings under the prefix works without it.
pub fn checkpoint_root<'a>(vb: VarBuilder<'a>, config: &BertConfig) -> Result<VarBuilder<'a>> {
    if config.hidden_act != HiddenAct::Gelu {
        candle_core::bail!(
            "hidden_act `{:?}` is not supported (only `gelu`, the erf form)",
            config.hidden_act
        );
    }
    if config.position_embedding_type != PositionEmbeddingType::Absolute {
        candle_core::bail!("only absolute position embeddings are supported");
    }
    let (h, heads) = (config.hidden_size, config.num_attention_heads);
    if h == 0 || heads == 0 || !h.is_multiple_of(heads) {
        candle_core::bail!("hidden_size is not a multiple of num_attention_heads");
    }
    if config.type_vocab_size == 0 || config.intermediate_size == 0 {
        candle_core::bail!("type_vocab_size and intermediate_size must be at least 1");
    }
    Ok(if vb.contains_tensor(&format!("bert.{WORD_EMBEDDINGS}")) {
        vb.pp("bert")
    } else {
        vb
    })
}

/// candle-transformers' `BertModel`, run on padded batches.
pub struct CandleEncoder {
    model: BertModel,
}

impl CandleEncoder {
    /// Builds the encoder from a var builder over the checkpoint.
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let root = checkpoint_root(vb, config)?;
        Ok(CandleEncoder {
            model: BertModel::load(root, config)?,
        })
    }

    /// The last hidden state, `[batch, seq, hidden]`, for `ids` and `mask` of shape
    /// `[batch, seq]` (u32; mask 1 for tokens, 0 for padding). Every token is of type 0.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let types = ids.zeros_like()?;
        self.model.forward(ids, &types, Some(mask))
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

/// The device a worker's tensors live on.
pub fn device_of(spec: &crate::config::DeviceSpec) -> Result<Device> {
    match spec {
        crate::config::DeviceSpec::Cpu => Ok(Device::Cpu),
        crate::config::DeviceSpec::Cuda(n) => Device::new_cuda(*n),
    }
}
