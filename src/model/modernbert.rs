//! The ModernBERT family through candle-transformers: its encoder (rotary positions,
//! alternating global and sliding-window attention, GeGLU, pre-norm) on candle tensors,
//! f32, CPU or CUDA. The heads are ours ([`super::heads`]).

use candle_core::Device;
use candle_transformers::models::modernbert as upstream;
use serde_json::{Value, json};

use super::family::{self, Encoder, Seq};
use super::hf::Checkpoint;
use super::{Kernels, ModelError, Precision, runtime};

/// A loaded ModernBERT encoder.
pub struct ModernBert {
    model: upstream::ModernBert,
    device: Device,
    hidden: usize,
    vocab: usize,
    max_tokens: usize,
    pad_id: u32,
}

/// The checkpoint's config in the shape candle-transformers reads: transformers'
/// defaults under its own fields, the rotary bases from `rope_parameters` where a newer
/// transformers wrote them there, and no labels (the heads read those).
fn upstream_config(ck: &Checkpoint) -> Result<Value, ModelError> {
    let c = &ck.config;
    for flag in ["attention_bias", "mlp_bias", "norm_bias", "classifier_bias"] {
        if flag != "classifier_bias" && c.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(ck.config_error(format!(
                "{flag} = true is not supported (candle-transformers' ModernBERT has no \
                 biases there)"
            )));
        }
    }
    let mut merged = json!({
        "layer_norm_eps": 1e-5,
        "pad_token_id": 50283,
        "global_attn_every_n_layers": 3,
        "global_rope_theta": 160000.0,
        "local_attention": 128,
        "local_rope_theta": 10000.0,
        "max_position_embeddings": 8192,
    });
    let m = merged.as_object_mut().expect("an object");
    for (k, v) in c.as_object().into_iter().flatten() {
        if !matches!(k.as_str(), "id2label" | "label2id" | "classifier_pooling") && !v.is_null() {
            m.insert(k.clone(), v.clone());
        }
    }
    let theta = |kind: &str| {
        c.get("rope_parameters")
            .and_then(|r| r.get(kind))
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
    };
    if let Some(t) = theta("full_attention") {
        m.insert("global_rope_theta".into(), json!(t));
    }
    if let Some(t) = theta("sliding_attention") {
        m.insert("local_rope_theta".into(), json!(t));
    }
    // `layer_types`, where written, must be the alternation candle-transformers builds.
    if let Some(types) = c.get("layer_types").and_then(Value::as_array) {
        let every = m
            .get("global_attn_every_n_layers")
            .and_then(Value::as_u64)
            .unwrap_or(3)
            .max(1) as usize;
        for (i, t) in types.iter().enumerate() {
            let global = t.as_str() == Some("full_attention");
            if global != i.is_multiple_of(every) {
                return Err(ck.config_error(format!(
                    "layer_types[{i}] = {t}: only every {every}th layer global is supported"
                )));
            }
        }
    }
    Ok(merged)
}

impl ModernBert {
    /// Reads the encoder (`model.` in the checkpoint) onto `device`.
    pub fn load(ck: &Checkpoint, device: Device) -> Result<Self, ModelError> {
        let config: upstream::Config = serde_json::from_value(upstream_config(ck)?)
            .map_err(|e| ck.config_error(format!("as a ModernBERT config: {e}")))?;
        let vb = family::var_builder(&ck.weights, &device)?;
        let model = upstream::ModernBert::load(vb, &config).map_err(|e| ModelError::File {
            path: ck.weights[0].clone(),
            message: e.to_string(),
        })?;
        Ok(ModernBert {
            model,
            device,
            hidden: config.hidden_size,
            vocab: config.vocab_size,
            max_tokens: config.max_position_embeddings,
            pad_id: config.pad_token_id,
        })
    }
}

impl Encoder for ModernBert {
    fn forward(&self, seqs: &[Seq]) -> Result<Vec<f32>, ModelError> {
        family::check_seqs(seqs, self.vocab, self.max_tokens)?;
        let run = || -> candle_core::Result<Vec<f32>> {
            let (ids, _, mask) = family::pad(seqs, self.pad_id, &self.device)?;
            let hidden = self.model.forward(&ids, &mask)?;
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
