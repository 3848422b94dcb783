//! `text_classifier`: a BERT-family encoder with a linear head, from a model directory
//! with our `model.toml` (the spam model: an encoder and a head trained by `celeriac
//! train-head`). A Hugging Face `*ForSequenceClassification` checkpoint is served by
//! [`super::checkpoint`] under the same kind.
//!
//! Input `{"text": "..."}`; output `{"label": "spam", "probabilities": {"ham": 0.02,
//! "spam": 0.98}}`. On the CPU the weights are loaded once and shared by every worker;
//! a CUDA worker loads its own copy on its own stream. Each worker keeps its own task
//! instance and its own intra-op thread pool. Inputs are tokenized at submit
//! ([`TaskFactory::prepare`]); a worker warms up at every length bucket before it takes
//! work ([`Task::warm_up`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::{LoadError, Param, Params, Prepared, Task, TaskError, TaskFactory, WorkerContext};
use crate::config::{Config, DeviceSpec, TaskSpec};
use crate::model::{Kernels, Manifest, Precision, TextClassifier};

/// Sequence lengths a warm-up runs: powers of two from 8, and the model's
/// `max_length`.
fn warm_up_lengths(max_length: usize) -> Vec<usize> {
    let mut lengths: Vec<usize> = std::iter::successors(Some(8usize), |l| l.checked_mul(2))
        .take_while(|&l| l < max_length)
        .collect();
    lengths.push(max_length.max(2));
    lengths
}

struct ClassifierFactory {
    task: String,
    dir: PathBuf,
    manifest: Manifest,
    precision: Precision,
    /// The encoder implementation; `None`: the device's default.
    kernels: Option<Kernels>,
    /// The model on the CPU, loaded once and shared by the CPU workers. A CUDA worker
    /// loads its own copy (see [`ClassifierFactory::model_for`]).
    cpu: Mutex<Option<Arc<TextClassifier>>>,
    /// The model's tokenizer, for [`TaskFactory::prepare`] at submit time.
    tokenizer: tokenizers::Tokenizer,
    /// The same without truncation, to count what truncation would cut.
    untruncated: tokenizers::Tokenizer,
}

/// Builds the factory; checks the manifest and that the weights are present, so a
/// missing model is a start-up error that names it.
pub fn factory(
    name: &str,
    spec: &TaskSpec,
    config: &Config,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    let err = |message: String| LoadError {
        task: name.to_string(),
        message,
    };
    let model = spec.model.as_ref().ok_or_else(|| {
        err(format!(
            "kind `text_classifier` needs a model directory: set tasks.\"{name}\".model"
        ))
    })?;
    // A Hugging Face checkpoint (a directory without our model.toml, or hf:ORG/NAME):
    // its own head and labels.
    let dir = config.model_dir(model);
    if !dir.join("model.toml").exists() {
        return super::checkpoint::factory::<super::checkpoint::TextClassifier>(name, spec, config);
    }
    for (setting, set) in [
        ("normalize", spec.normalize.is_some()),
        ("dimensions", spec.dimensions.is_some()),
        ("max_length", spec.max_length.is_some()),
    ] {
        if set {
            return Err(err(format!(
                "tasks.\"{name}\".{setting} is for Hugging Face checkpoints; {} has a \
                 model.toml (set max_length there)",
                dir.display()
            )));
        }
    }
    let manifest = Manifest::read(&dir).map_err(|e| err(e.to_string()))?;
    let weights = dir.join(&manifest.weights);
    if !weights.exists() {
        return Err(err(format!(
            "{}: encoder weights are missing; fetch them with `scripts/fetch-model.sh {}`",
            weights.display(),
            model.display()
        )));
    }
    let tokenizer =
        crate::model::load_tokenizer(&dir, &manifest).map_err(|e| err(e.to_string()))?;
    let untruncated =
        crate::model::served::untruncated(&tokenizer).map_err(|e| err(e.to_string()))?;
    Ok(Arc::new(ClassifierFactory {
        tokenizer,
        untruncated,
        task: name.to_string(),
        dir,
        manifest,
        precision: spec.precision,
        kernels: spec.kernels,
        cpu: Mutex::new(None),
    }))
}

impl ClassifierFactory {
    /// The most tokens the model reads: where its tokenizer truncates.
    fn max_length(&self) -> usize {
        self.tokenizer
            .get_truncation()
            .map_or(self.manifest.max_length, |t| t.max_length)
    }

    /// The model for a worker on `device`. CPU workers share one copy of the weights.
    /// Each CUDA worker gets its own copy on its own stream with its own cuBLAS handle
    /// (device memory is plentiful: 45 MiB in f16 for MiniLM), so the workers of a GPU
    /// run concurrently and share no handle across threads.
    fn model_for(&self, device: DeviceSpec) -> Result<Arc<TextClassifier>, LoadError> {
        let mut shared = (device == DeviceSpec::Cpu).then(|| self.cpu.lock());
        if let Some(m) = shared.as_ref().and_then(|cpu| cpu.as_ref()) {
            return Ok(m.clone());
        }
        let started = Instant::now();
        let kernels = self.kernels.unwrap_or_else(|| Kernels::for_device(device));
        let model =
            TextClassifier::load_with(&self.dir, device, kernels, self.precision).map_err(|e| {
                LoadError {
                    task: self.task.clone(),
                    message: format!("loading {} on {device}: {e}", self.dir.display()),
                }
            })?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            task = %self.task,
            model = %self.dir.display(),
            %device,
            setting = %self.precision,
            precision = %model.precision(),
            %kernels,
            kernel = match kernels {
                Kernels::Packed => model.precision().kernel(),
                Kernels::Candle => "candle",
            },
            seconds,
            "model loaded"
        );
        crate::metrics::model_loaded(&self.task, seconds);
        let model = Arc::new(model);
        if let Some(cpu) = shared.as_mut() {
            **cpu = Some(model.clone());
        }
        Ok(model)
    }
}

/// Extracts and checks the text of an input.
fn text_of(input: &Value, max_chars: usize) -> Result<&str, String> {
    let obj = input
        .as_object()
        .ok_or("input must be an object {\"text\": \"...\"}")?;
    if let Some(extra) = obj.keys().find(|k| *k != "text") {
        return Err(format!(
            "unknown field `{extra}`; the input is {{\"text\": \"...\"}}"
        ));
    }
    let text = obj
        .get("text")
        .ok_or("field `text` is missing")?
        .as_str()
        .ok_or("field `text` must be a string")?;
    if text.trim().is_empty() {
        return Err("field `text` is empty".into());
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(format!(
            "field `text` has {chars} characters; the limit is {max_chars} (max_chars in the model's model.toml)"
        ));
    }
    Ok(text)
}

/// The text to classify: `spam.predict(text)`.
const TEXT: Param = Param::required("text");

impl TaskFactory for ClassifierFactory {
    fn validate(&self, input: &Value) -> Result<(), String> {
        text_of(input, self.manifest.max_chars).map(drop)
    }

    /// `spam.predict(text)`, as the seed's Celery task is called.
    fn params(&self) -> Params {
        Params::Fields(&[TEXT])
    }

    /// Tokenizes the text at submit time (on the submitting thread, not the worker's):
    /// the batch's token budget counts these tokens, and the worker uses these ids.
    fn prepare(&self, input: &Value) -> Option<Prepared> {
        let text = text_of(input, self.manifest.max_chars).ok()?;
        let ids = self.tokenizer.encode(text, true).ok()?.get_ids().to_vec();
        Some(Prepared {
            tokens: ids.len(),
            data: Arc::new(ids),
        })
    }

    fn length_before_truncation(&self, input: &Value) -> Option<(usize, usize)> {
        let text = text_of(input, self.manifest.max_chars).ok()?;
        let given = self.untruncated.encode(text, true).ok()?.len();
        Some((given, self.max_length()))
    }

    fn build(&self, ctx: &WorkerContext) -> Result<Box<dyn Task>, LoadError> {
        let model = self.model_for(ctx.device)?;
        let threads = ctx.intra_op_pool(&self.task)?;
        Ok(Box::new(ClassifierTask {
            task: self.task.clone(),
            pool: ctx.pool.clone(),
            device: ctx.device,
            max_batch_size: ctx.max_batch_size.max(1),
            max_batch_tokens: ctx.max_batch_tokens,
            memory_checked: None,
            model,
            threads,
        }))
    }

    fn pads_batches(&self) -> bool {
        true
    }

    fn describe(&self) -> Option<Value> {
        let kernels = self
            .kernels
            .unwrap_or_else(|| Kernels::for_device(DeviceSpec::Cpu));
        let precision = self
            .precision
            .for_kernels(kernels, DeviceSpec::Cpu)
            .unwrap_or(self.precision);
        Some(json!({
            "kind": "text_classifier",
            "inputs": ["text"],
            "source": self.dir.display().to_string(),
            "model_type": self.manifest.architecture,
            "architecture": "encoder + model.toml head (mean pooling, linear, softmax)",
            "labels": self.manifest.labels,
            "multi_label": false,
            "max_length": self.max_length(),
            "precision": precision,
            "kernels": kernels,
            "kernel": match kernels {
                Kernels::Packed => precision.kernel(),
                Kernels::Candle => "candle",
            },
        }))
    }

    fn warms_up(&self) -> bool {
        true
    }

    fn batching(&self) -> bool {
        true
    }
}

struct ClassifierTask {
    task: String,
    /// The worker's pool, for the metrics' `pool` label.
    pool: String,
    /// The worker's device, for the device metrics and the warm-up's shapes.
    device: DeviceSpec,
    /// The pool's batch limits, for the warm-up's shapes.
    max_batch_size: usize,
    max_batch_tokens: usize,
    /// When device memory was last read (at most once a second).
    memory_checked: Option<Instant>,
    model: Arc<TextClassifier>,
    /// This worker's intra-op threads: matmuls run inside it.
    threads: rayon::ThreadPool,
}

impl ClassifierTask {
    fn answer(&self, probs: &[f32]) -> Value {
        let labels = &self.model.manifest.labels;
        let best = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("at least two labels");
        let mut map = Map::new();
        for (label, p) in labels.iter().zip(probs) {
            map.insert(label.clone(), json!(p));
        }
        json!({ "label": labels[best], "probabilities": map })
    }
}

impl Task for ClassifierTask {
    fn run(&mut self, input: &Value) -> Result<Value, TaskError> {
        let text = text_of(input, self.model.manifest.max_chars).map_err(TaskError)?;
        let probs = self
            .threads
            .install(|| self.model.predict(&[text]))
            .map_err(|e| TaskError(e.to_string()))?;
        Ok(self.answer(&probs[0]))
    }

    fn run_batch(&mut self, inputs: &[&Value]) -> Vec<Result<Value, TaskError>> {
        self.run_prepared(inputs, &[])
    }

    /// Runs every input through `predict_batch` (one packed batch on the CPU, length
    /// groups with the candle kernels), with the token ids prepared at submit where
    /// given, else tokenizing here; answers in input order. Results equal `run`'s:
    /// packing and the attention mask keep texts apart.
    fn run_prepared(
        &mut self,
        inputs: &[&Value],
        prepared: &[Option<&Prepared>],
    ) -> Vec<Result<Value, TaskError>> {
        let max_chars = self.model.manifest.max_chars;
        let mut out: Vec<Option<Result<Value, TaskError>>> = vec![None; inputs.len()];
        // The valid inputs: their positions and their token ids.
        let (mut at, mut tokens) = (Vec::new(), Vec::new());
        for (i, input) in inputs.iter().enumerate() {
            let given = prepared
                .get(i)
                .copied()
                .flatten()
                .and_then(|p| p.data.downcast_ref::<Vec<u32>>());
            let ids = match given {
                Some(ids) => Ok(ids.clone()),
                None => text_of(input, max_chars)
                    .and_then(|t| self.model.token_ids(t).map_err(|e| e.to_string())),
            };
            match ids {
                Ok(ids) => {
                    at.push(i);
                    tokens.push(ids);
                }
                Err(e) => out[i] = Some(Err(TaskError(e))),
            }
        }
        let real: usize = tokens.iter().map(Vec::len).sum();
        let t0 = Instant::now();
        let (probs, padded) = self.threads.install(|| self.model.predict_batch(&tokens));
        let device_time = t0.elapsed();
        for (i, p) in at.into_iter().zip(probs) {
            out[i] = Some(p.map(|p| self.answer(&p)).map_err(TaskError));
        }
        if real > 0 {
            crate::metrics::padding(&self.pool, &self.task, padded, real);
            crate::metrics::model_batch(&self.pool, &self.task, self.device, real, device_time);
        }
        if self
            .memory_checked
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            self.memory_checked = Some(Instant::now());
            if let Some(bytes) = crate::model::device_memory_used(self.model.device()) {
                crate::metrics::device_memory(self.device, bytes);
            }
        }
        out.into_iter()
            .map(|o| o.expect("every input answered"))
            .collect()
    }

    /// A forward at every length bucket ([`warm_up_lengths`]) with one text, and on an
    /// accelerator also with the pool's largest batch at that length (within
    /// `max_batch_tokens`): what a GPU compiles and loads kernels for at first use. On
    /// the CPU one text per length pages the weights in and starts the worker's
    /// threads; a full batch would cost a second of CPU per worker.
    fn warm_up(&mut self) -> Result<usize, TaskError> {
        let sample = self
            .model
            .token_ids("warm up")
            .map_err(|e| TaskError(e.to_string()))?;
        let (&first, &last) = sample
            .first()
            .zip(sample.last())
            .ok_or_else(|| TaskError("the tokenizer gave no tokens for a warm-up text".into()))?;
        let filler = sample.get(1).copied().unwrap_or(first);
        let mut passes = 0;
        for len in warm_up_lengths(self.model.manifest.max_length) {
            let mut ids = vec![filler; len];
            ids[0] = first;
            ids[len - 1] = last;
            let mut sizes = vec![1];
            if self.device != DeviceSpec::Cpu && self.max_batch_size > 1 {
                let fit = match self.max_batch_tokens {
                    0 => self.max_batch_size,
                    budget => (budget / len).clamp(1, self.max_batch_size),
                };
                if fit > 1 {
                    sizes.push(fit);
                }
            }
            for size in sizes {
                let batch = vec![ids.clone(); size];
                let (probs, _) = self.threads.install(|| self.model.predict_batch(&batch));
                if let Some(Err(e)) = probs.into_iter().find(Result::is_err) {
                    return Err(TaskError(format!("{len} tokens x {size}: {e}")));
                }
                passes += 1;
            }
        }
        Ok(passes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_validation() {
        assert_eq!(text_of(&json!({"text": "hi"}), 10), Ok("hi"));
        assert!(text_of(&json!({}), 10).unwrap_err().contains("missing"));
        assert!(
            text_of(&json!({"text": 3}), 10)
                .unwrap_err()
                .contains("string")
        );
        assert!(
            text_of(&json!({"text": "  "}), 10)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            text_of(&json!({"text": "x".repeat(11)}), 10)
                .unwrap_err()
                .contains("limit")
        );
        assert!(
            text_of(&json!({"text": "a", "txt": 1}), 10)
                .unwrap_err()
                .contains("txt")
        );
        assert!(text_of(&json!("text"), 10).is_err());
    }
}
