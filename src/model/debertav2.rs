//! The DeBERTa-v2/v3 family through candle-transformers: its encoder (disentangled
//! relative attention) on candle tensors, f32, CPU or CUDA. The heads are ours
//! ([`super::heads`]); only the encoder comes from the crate.

use candle_core::Device;
use candle_transformers::models::debertav2 as upstream;
use serde_json::{Value, json};

use super::family::{self, Encoder, Seq};
use super::hf::Checkpoint;
use super::{Kernels, ModelError, Precision, runtime};

/// A loaded DeBERTa-v2 encoder.
pub struct DebertaV2 {
    model: upstream::DebertaV2Model,
    device: Device,
    hidden: usize,
    vocab: usize,
    max_tokens: usize,
    pad_id: u32,
}

/// transformers' `DebertaV2Config` defaults, under the checkpoint's own fields (older
/// checkpoints leave some out; candle-transformers wants them all).
fn config_with_defaults(config: &Value) -> Value {
    let mut merged = json!({
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-7,
        "relative_attention": false,
        "max_relative_positions": -1,
        "pad_token_id": 0,
        "position_biased_input": true,
        "pos_att_type": [],
    });
    if let (Some(m), Some(c)) = (merged.as_object_mut(), config.as_object()) {
        for (k, v) in c {
            // The labels are the heads' business (and candle's types for them differ).
            if k != "id2label" && k != "label2id" && !v.is_null() {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    merged
}

impl DebertaV2 {
    /// Reads the encoder (under `deberta.` in a task checkpoint) onto `device`.
    pub fn load(ck: &Checkpoint, device: Device) -> Result<Self, ModelError> {
        let config: upstream::Config = serde_json::from_value(config_with_defaults(&ck.config))
            .map_err(|e| ck.config_error(format!("as a DeBERTa-v2 config: {e}")))?;
        let vb = family::var_builder(&ck.weights, &device)?;
        let vb = family::encoder_root(vb, "deberta", "embeddings.word_embeddings.weight");
        let model = upstream::DebertaV2Model::load(vb, &config).map_err(|e| ModelError::File {
            path: ck.weights[0].clone(),
            message: e.to_string(),
        })?;
        // With relative positions only no table bounds the length; the config's maximum
        // is what the model was trained for, in both cases.
        let max_tokens = config.max_position_embeddings;
        Ok(DebertaV2 {
            model,
            device,
            hidden: config.hidden_size,
            vocab: config.vocab_size,
            max_tokens,
            pad_id: config.pad_token_id.unwrap_or(0) as u32,
        })
    }
}

impl Encoder for DebertaV2 {
    fn forward(&self, seqs: &[Seq]) -> Result<Vec<f32>, ModelError> {
        family::check_seqs(seqs, self.vocab, self.max_tokens)?;
        let run = || -> candle_core::Result<Vec<f32>> {
            let (ids, types, mask) = family::pad(seqs, self.pad_id, &self.device)?;
            let hidden = self.model.forward(&ids, Some(types), Some(mask))?;
            family::unpad(&hidden, seqs)
        };
        run().map_err(runtime)
    }

    fn hidden_size(&self) -> usize {
        self.hidden
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn kernels(&self) -> Kernels {
        Kernels::Candle
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }

    fn kernel(&self) -> String {
        "candle-transformers".into()
    }

    fn packs_batches(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_checkpoint_leaves_out() {
        let c = config_with_defaults(&json!({"hidden_size": 8, "id2label": {"0": "a"}}));
        assert_eq!(c["hidden_size"], 8);
        assert_eq!(c["hidden_act"], "gelu");
        assert!(c.get("id2label").is_none());
    }
}
