//! `text_classifier`: a BERT-family encoder with a linear head, from a model directory.
//!
//! Input `{"text": "..."}`; output `{"label": "spam", "probabilities": {"ham": 0.02,
//! "spam": 0.98}}`. The weights are loaded once per device and shared by every worker
//! on it; each worker keeps its own task instance and its own intra-op thread pool.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::{LoadError, Task, TaskError, TaskFactory, WorkerContext};
use crate::config::{Config, DeviceSpec, TaskSpec};
use crate::model::{Kernels, Manifest, Precision, TextClassifier};

struct ClassifierFactory {
    task: String,
    dir: PathBuf,
    manifest: Manifest,
    precision: Precision,
    /// One loaded model per device, shared by that device's workers.
    loaded: Mutex<HashMap<DeviceSpec, Arc<TextClassifier>>>,
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
    let dir = config.model_dir(model);
    let manifest = Manifest::read(&dir).map_err(|e| err(e.to_string()))?;
    let weights = dir.join(&manifest.weights);
    if !weights.exists() {
        return Err(err(format!(
            "{}: encoder weights are missing; fetch them with `scripts/fetch-model.sh {}`",
            weights.display(),
            model.display()
        )));
    }
    Ok(Arc::new(ClassifierFactory {
        task: name.to_string(),
        dir,
        manifest,
        precision: spec.precision,
        loaded: Mutex::new(HashMap::new()),
    }))
}

impl ClassifierFactory {
    fn model_for(&self, device: DeviceSpec) -> Result<Arc<TextClassifier>, LoadError> {
        let mut loaded = self.loaded.lock();
        if let Some(m) = loaded.get(&device) {
            return Ok(m.clone());
        }
        let started = Instant::now();
        let kernels = Kernels::for_device(device);
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
            kernel = match kernels {
                Kernels::Packed => model.precision().kernel(),
                Kernels::Candle => "candle",
            },
            seconds,
            "model loaded"
        );
        crate::metrics::model_loaded(&self.task, seconds);
        let model = Arc::new(model);
        loaded.insert(device, model.clone());
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

impl TaskFactory for ClassifierFactory {
    fn validate(&self, input: &Value) -> Result<(), String> {
        text_of(input, self.manifest.max_chars).map(drop)
    }

    fn build(&self, ctx: &WorkerContext) -> Result<Box<dyn Task>, LoadError> {
        let model = self.model_for(ctx.device)?;
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(ctx.intra_op_threads)
            .thread_name({
                let name = ctx.name.clone();
                move |i| format!("{name}-op{i}")
            })
            .start_handler({
                let nice = ctx.nice;
                move |_| crate::task::set_thread_nice(nice)
            })
            .build()
            .map_err(|e| LoadError {
                task: self.task.clone(),
                message: format!("starting {} intra-op threads: {e}", ctx.intra_op_threads),
            })?;
        Ok(Box::new(ClassifierTask {
            task: self.task.clone(),
            pool: ctx.pool.clone(),
            model,
            threads,
        }))
    }

    fn pads_batches(&self) -> bool {
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

    /// Tokenizes every input and runs them through `predict_batch` (one packed batch
    /// on the CPU, length groups with the candle kernels); answers in input order.
    /// Results equal `run`'s: packing and the attention mask keep texts apart.
    fn run_batch(&mut self, inputs: &[&Value]) -> Vec<Result<Value, TaskError>> {
        let max_chars = self.model.manifest.max_chars;
        let mut out: Vec<Option<Result<Value, TaskError>>> = vec![None; inputs.len()];
        // The valid inputs: their positions and their token ids.
        let (mut at, mut tokens) = (Vec::new(), Vec::new());
        for (i, input) in inputs.iter().enumerate() {
            match text_of(input, max_chars)
                .and_then(|t| self.model.token_ids(t).map_err(|e| e.to_string()))
            {
                Ok(ids) => {
                    at.push(i);
                    tokens.push(ids);
                }
                Err(e) => out[i] = Some(Err(TaskError(e))),
            }
        }
        let real: usize = tokens.iter().map(Vec::len).sum();
        let (probs, padded) = self.threads.install(|| self.model.predict_batch(&tokens));
        for (i, p) in at.into_iter().zip(probs) {
            out[i] = Some(p.map(|p| self.answer(&p)).map_err(TaskError));
        }
        if real > 0 {
            crate::metrics::padding(&self.pool, &self.task, padded, real);
        }
        out.into_iter()
            .map(|o| o.expect("every input answered"))
            .collect()
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
