//! The encoder families behind one small trait: which forward pass serves a checkpoint.
//!
//! A family turns tokenized sequences into the last hidden state of every token
//! ([`Encoder::forward`]); what a task does with those states is a head's business
//! ([`super::heads`]), so each family has one forward pass, whatever the task kind.
//!
//! - **BERT family on the packed CPU kernels** ([`super::packed`]): `bert`, `roberta`,
//!   `xlm-roberta`, `camembert`, `distilbert`. Their differences are fields of one
//!   [`BertLayout`], not copies: the tensor names, whether token types exist, and the
//!   position-id offset (`pad_token_id + 1` for the RoBERTa family, whose positions start
//!   after the padding index). f32, bf16 and int8, on the kernels the CPU has.
//! - **candle-transformers** for the rest: `deberta-v2` ([`super::debertav2`]) and
//!   `modernbert` ([`super::modernbert`]), in f32, on the CPU or CUDA.

use std::path::Path;

use candle_core::DType;
use candle_nn::VarBuilder;

use super::bert::BertConfig;
use super::hf::Checkpoint;
use super::{Kernels, ModelError, Precision, runtime};

/// One tokenized sequence: its ids and their token types (0 for a single text; the
/// second segment of a text pair is 1 where the tokenizer says so).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seq {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Token types, one per id.
    pub types: Vec<u32>,
}

/// What every encoder family provides: a forward pass to hidden states (as TEI's
/// `Model` trait, with the heads kept apart).
pub trait Encoder: Send + Sync {
    /// The last hidden state of every token of every sequence, packed: sequence `i`'s
    /// rows are `offsets[i]..offsets[i + 1]` of the `[tokens, hidden]` row-major matrix,
    /// `offsets` being the running sum of the sequences' lengths.
    fn forward(&self, seqs: &[Seq]) -> Result<Vec<f32>, ModelError>;
    /// The hidden width.
    fn hidden_size(&self) -> usize;
    /// The most tokens a sequence may have (the position table's reach).
    fn max_tokens(&self) -> usize;
    /// Which implementation runs it (`packed` or `candle`).
    fn kernels(&self) -> Kernels;
    /// The precision its dense layers run in (resolved).
    fn precision(&self) -> Precision;
    /// The kernel its dense layers run on, for `/v1/models` and logs.
    fn kernel(&self) -> String;
    /// Whether a batch runs unpadded, so grouping sequences by length gains nothing.
    fn packs_batches(&self) -> bool;
}

/// Where a BERT-family checkpoint keeps its tensors and how its positions count: the
/// only differences between BERT, RoBERTa, XLM-RoBERTa, CamemBERT and DistilBERT that
/// the encoder sees.
#[derive(Debug, Clone)]
pub struct BertLayout {
    /// The prefix of the encoder's tensors in a task-model checkpoint (`bert`,
    /// `roberta`, `distilbert`); a bare encoder has none.
    pub prefix: &'static str,
    /// The token-type table under `embeddings.`, `None` where the family has none.
    pub token_type: Option<&'static str>,
    /// The position of a sequence's first token in the position table.
    pub position_offset: usize,
    /// The list of layers (`encoder.layer`, `transformer.layer`).
    pub layers: &'static str,
    /// Per layer: the query, key and value projections.
    pub query: &'static str,
    /// The key projection.
    pub key: &'static str,
    /// The value projection.
    pub value: &'static str,
    /// The attention output projection.
    pub attn_out: &'static str,
    /// The layer norm after attention.
    pub attn_norm: &'static str,
    /// The feed-forward's first layer.
    pub intermediate: &'static str,
    /// The feed-forward's second layer.
    pub output: &'static str,
    /// The layer norm after the feed-forward.
    pub out_norm: &'static str,
}

impl BertLayout {
    /// BERT's names (also RoBERTa's, XLM-RoBERTa's and CamemBERT's, with their prefix
    /// and position offset).
    pub const BERT: BertLayout = BertLayout {
        prefix: "bert",
        token_type: Some("token_type_embeddings"),
        position_offset: 0,
        layers: "encoder.layer",
        query: "attention.self.query",
        key: "attention.self.key",
        value: "attention.self.value",
        attn_out: "attention.output.dense",
        attn_norm: "attention.output.LayerNorm",
        intermediate: "intermediate.dense",
        output: "output.dense",
        out_norm: "output.LayerNorm",
    };

    /// DistilBERT's names: no token types.
    pub const DISTILBERT: BertLayout = BertLayout {
        prefix: "distilbert",
        token_type: None,
        position_offset: 0,
        layers: "transformer.layer",
        query: "attention.q_lin",
        key: "attention.k_lin",
        value: "attention.v_lin",
        attn_out: "attention.out_lin",
        attn_norm: "sa_layer_norm",
        intermediate: "ffn.lin1",
        output: "ffn.lin2",
        out_norm: "output_layer_norm",
    };
}

/// A BERT-family checkpoint's encoder settings: the shared [`BertConfig`] (DistilBERT's
/// own field names mapped onto it) and its [`BertLayout`].
pub fn bert_family(ck: &Checkpoint) -> Result<(BertConfig, BertLayout), ModelError> {
    if ck.model_type == "distilbert" {
        let act = ck.str("activation").unwrap_or("gelu").to_string();
        let config = BertConfig {
            vocab_size: ck.usize("vocab_size")?,
            hidden_size: ck.usize("dim")?,
            num_hidden_layers: ck.usize("n_layers")?,
            num_attention_heads: ck.usize("n_heads")?,
            intermediate_size: ck.usize("hidden_dim")?,
            hidden_act: act,
            max_position_embeddings: ck.usize("max_position_embeddings")?,
            type_vocab_size: 1,
            // transformers builds DistilBERT's layer norms with eps = 1e-12.
            layer_norm_eps: 1e-12,
            position_embedding_type: None,
        };
        return Ok((config, BertLayout::DISTILBERT));
    }
    let config: BertConfig =
        serde_json::from_value(ck.config.clone()).map_err(|e| ck.config_error(e))?;
    let layout = match ck.model_type.as_str() {
        "bert" => BertLayout::BERT,
        // Positions start after the padding index.
        _ => BertLayout {
            prefix: "roberta",
            position_offset: ck.usize_or("pad_token_id", 1) + 1,
            ..BertLayout::BERT
        },
    };
    Ok((config, layout))
}

/// Whether `model_type` runs on the packed BERT-family kernels.
pub fn is_bert_family(model_type: &str) -> bool {
    matches!(
        model_type,
        "bert" | "roberta" | "xlm-roberta" | "camembert" | "distilbert"
    )
}

/// A var builder over the checkpoint's safetensors (memory-mapped, read as f32).
pub fn var_builder(
    weights: &[impl AsRef<Path>],
    device: &candle_core::Device,
) -> Result<VarBuilder<'static>, ModelError> {
    // SAFETY: the files are not modified while mapped (checkpoints are replaced by
    // rename, as save_pretrained and the hub cache do, never in place).
    unsafe { VarBuilder::from_mmaped_safetensors(weights, DType::F32, device) }.map_err(runtime)
}

/// The var builder at a family's encoder root: under `prefix.` in a task checkpoint
/// (`BertForSequenceClassification` saves `bert.embeddings...`), else the root.
pub fn encoder_root<'a>(vb: VarBuilder<'a>, prefix: &str, probe: &str) -> VarBuilder<'a> {
    if vb.contains_tensor(&format!("{prefix}.{probe}")) {
        vb.pp(prefix)
    } else {
        vb
    }
}

/// Pads sequences to the longest (at least one position) for the candle families:
/// `[batch, seq]` ids, types and mask (u32), and the length of each.
pub fn pad(
    seqs: &[Seq],
    pad_id: u32,
    device: &candle_core::Device,
) -> candle_core::Result<(
    candle_core::Tensor,
    candle_core::Tensor,
    candle_core::Tensor,
)> {
    use candle_core::Tensor;
    let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0).max(1);
    let b = seqs.len();
    let mut ids = vec![pad_id; b * t];
    let mut types = vec![0u32; b * t];
    let mut mask = vec![0u32; b * t];
    for (row, s) in seqs.iter().enumerate() {
        let n = s.ids.len();
        ids[row * t..row * t + n].copy_from_slice(&s.ids);
        types[row * t..row * t + n].copy_from_slice(&s.types);
        mask[row * t..row * t + n].fill(1);
    }
    Ok((
        Tensor::from_vec(ids, (b, t), device)?,
        Tensor::from_vec(types, (b, t), device)?,
        Tensor::from_vec(mask, (b, t), device)?,
    ))
}

/// The rows of a padded `[batch, seq, hidden]` output that hold real tokens, packed as
/// [`Encoder::forward`] returns them.
pub fn unpad(hidden: &candle_core::Tensor, seqs: &[Seq]) -> candle_core::Result<Vec<f32>> {
    let (_, t, h) = hidden.dims3()?;
    let all = hidden
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(seqs.iter().map(|s| s.ids.len()).sum::<usize>() * h);
    for (i, s) in seqs.iter().enumerate() {
        out.extend_from_slice(&all[i * t * h..(i * t + s.ids.len()) * h]);
    }
    Ok(out)
}

/// Checks sequences against a vocabulary and a length limit before a candle family
/// runs them (an id past the table would fail deep inside candle).
pub fn check_seqs(seqs: &[Seq], vocab: usize, max_tokens: usize) -> Result<(), ModelError> {
    for s in seqs {
        if s.ids.is_empty() {
            return Err(runtime("a sequence has no tokens"));
        }
        if s.ids.len() > max_tokens {
            return Err(runtime(format!(
                "a sequence has {} tokens; the model takes at most {max_tokens}",
                s.ids.len()
            )));
        }
        if let Some(bad) = s.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(runtime(format!(
                "token id {bad} is outside the vocabulary ({vocab} ids)"
            )));
        }
    }
    Ok(())
}
