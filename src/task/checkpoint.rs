//! The task kinds that serve a Hugging Face checkpoint as it is: `text_classifier` (on
//! a checkpoint directory), `embeddings`, `reranker` and `token_classifier`.
//!
//! One factory for all four ([`CheckpointFactory`]), generic over what differs: the
//! [`Kind`] says which head it needs, which fields its input has (in order), how an
//! input becomes sequences to tokenize, and how the model's outputs for those sequences
//! become the answer. The model is loaded once per device when the task is registered
//! (a checkpoint that will not load is a start-up error) and shared by the workers
//! there; a worker runs a batch of inputs as one forward pass.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokenizers::Encoding;

use super::{LoadError, Param, Params, Prepared, Task, TaskError, TaskFactory, WorkerContext};
use crate::config::{Config, DeviceSpec, TaskSpec};
use crate::model::family::Seq;
use crate::model::heads::{self, TokenOut};
use crate::model::hf::{self, Checkpoint};
use crate::model::served::{self, HeadKind, ModelInfo, Overrides, ServedModel};

/// Characters per text; longer ones are refused with 422 before tokenizing.
pub const MAX_CHARS: usize = 20_000;
/// Documents per reranker call, and texts per embeddings call.
pub const MAX_ITEMS: usize = 1024;

/// The model's outputs for one input's sequences.
pub enum Outputs {
    /// One row per sequence: logits (sequence heads) or embeddings (pooling).
    Rows(Vec<Vec<f32>>),
    /// Per-token logits per sequence (token heads).
    Tokens(Vec<Vec<Vec<f32>>>),
}

/// What differs between the checkpoint task kinds.
pub trait Kind: Send + Sync + 'static {
    /// The kind's name in config.
    const NAME: &'static str;
    /// The head it asks of the checkpoint.
    const HEAD: HeadKind;
    /// Its input fields, in order (Celery's positional arguments map onto them).
    const PARAMS: &'static [Param];
    /// The input's texts to tokenize, each a text or a text pair; the message says
    /// what is wrong with a bad input.
    fn texts(input: &Value) -> Result<Vec<(&str, Option<&str>)>, String>;
    /// The answer from the model's outputs for the input's sequences.
    fn answer(model: &ServedModel, input: &Value, encodings: &[Encoding], out: Outputs) -> Value;
}

/// Checks that `input` is an object with only the fields of `params`, and returns it.
pub fn object<'a>(input: &'a Value, params: &[Param]) -> Result<&'a Map<String, Value>, String> {
    let fields: Vec<&str> = params.iter().map(|p| p.name).collect();
    let shape = fields
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let obj = input
        .as_object()
        .ok_or_else(|| format!("input must be an object with the fields {shape}"))?;
    if let Some(extra) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{extra}`; the input's fields are {shape}"
        ));
    }
    Ok(obj)
}

/// A required non-empty string field of at most [`MAX_CHARS`] characters.
pub fn text_field<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    let v = obj
        .get(field)
        .ok_or_else(|| format!("field `{field}` is missing"))?;
    text_value(v, field)
}

/// A string value of at most [`MAX_CHARS`] characters, not blank.
pub fn text_value<'a>(v: &'a Value, field: &str) -> Result<&'a str, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("field `{field}` must be a string"))?;
    if text.trim().is_empty() {
        return Err(format!("field `{field}` is empty"));
    }
    let chars = text.chars().count();
    if chars > MAX_CHARS {
        return Err(format!(
            "field `{field}` has {chars} characters; the limit is {MAX_CHARS}"
        ));
    }
    Ok(text)
}

/// An optional boolean field.
pub fn bool_field(obj: &Map<String, Value>, field: &str) -> Result<bool, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("field `{field}` must be true or false")),
    }
}

/// The factory of a checkpoint task kind.
pub struct CheckpointFactory<K: Kind> {
    task: String,
    dir: PathBuf,
    source: String,
    spec: TaskSpec,
    overrides: Overrides,
    /// The model on the CPU, loaded at registration, shared by the CPU workers.
    cpu: Mutex<Option<Arc<ServedModel>>>,
    /// The checkpoint's tokenizer truncating at the model's maximum, for submit.
    tokenizer: tokenizers::Tokenizer,
    /// The same without truncation, to count what truncation would cut.
    untruncated: tokenizers::Tokenizer,
    /// What it serves, for `/v1/models`.
    info: ModelInfo,
    kind: std::marker::PhantomData<K>,
}

/// Builds the factory of kind `K` for `spec.model`: resolves it (a directory, or
/// `hf:ORG/NAME[@REV]` in the local hub cache), reads the checkpoint and loads the model
/// on the CPU (or, for a pool on CUDA only, checks it there at the first worker).
pub fn factory<K: Kind>(
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
            "kind `{}` needs a model: set tasks.\"{name}\".model to a Hugging Face \
             directory or to hf:ORG/NAME",
            K::NAME
        ))
    })?;
    let dir = hf::resolve(model, &config.base_dir).map_err(|e| err(e.to_string()))?;
    let source = model.display().to_string();
    let overrides = Overrides {
        normalize: spec.normalize,
        dimensions: spec.dimensions,
        max_length: spec.max_length,
    };
    if K::HEAD != HeadKind::Pooled && (spec.normalize.is_some() || spec.dimensions.is_some()) {
        return Err(err(format!(
            "normalize and dimensions are settings of kind `embeddings`, not `{}`",
            K::NAME
        )));
    }
    let ck = Checkpoint::open(&dir).map_err(|e| err(e.to_string()))?;
    // Every worker device the task's pool has: the model loads on the CPU now when one
    // of them is the CPU (so a bad checkpoint stops start-up with its reason).
    let devices = config
        .pools
        .get(&spec.pool)
        .map(|p| p.devices.clone())
        .unwrap_or_else(|| vec![DeviceSpec::Cpu]);
    let device = if devices.contains(&DeviceSpec::Cpu) {
        DeviceSpec::Cpu
    } else {
        devices.first().copied().unwrap_or(DeviceSpec::Cpu)
    };
    let started = Instant::now();
    let loaded = ServedModel::load(
        &ck,
        &source,
        K::HEAD,
        device,
        spec.kernels,
        spec.precision,
        overrides,
    )
    .map_err(|e| err(format!("loading {}: {e}", dir.display())))?;
    check_kind::<K>(&ck, &loaded).map_err(err)?;
    crate::metrics::model_loaded(name, started.elapsed().as_secs_f64());
    tracing::info!(
        task = name,
        kind = K::NAME,
        source = %source,
        model_type = %loaded.info.model_type,
        precision = %loaded.info.precision,
        kernels = %loaded.info.kernels,
        seconds = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    let tokenizer =
        served::tokenizer_for(&ck, loaded.info.max_length).map_err(|e| err(e.to_string()))?;
    let untruncated = served::untruncated(&tokenizer).map_err(|e| err(e.to_string()))?;
    let info = loaded.info.clone();
    let cpu = (device == DeviceSpec::Cpu).then(|| Arc::new(loaded));
    Ok(Arc::new(CheckpointFactory::<K> {
        task: name.to_string(),
        dir,
        source,
        spec: spec.clone(),
        overrides,
        cpu: Mutex::new(cpu),
        tokenizer,
        untruncated,
        info,
        kind: std::marker::PhantomData,
    }))
}

/// Checks that the checkpoint fits the kind beyond its head (which
/// [`ServedModel::load`] checked): a reranker is a cross-encoder with one output.
fn check_kind<K: Kind>(ck: &Checkpoint, model: &ServedModel) -> Result<(), String> {
    if K::NAME == "reranker" && model.info.labels.len() != 1 {
        return Err(format!(
            "kind `reranker` needs a cross-encoder with one output (num_labels = 1); {} \
             has {} labels",
            ck.dir.display(),
            model.info.labels.len()
        ));
    }
    Ok(())
}

impl<K: Kind> CheckpointFactory<K> {
    fn model_for(&self, device: DeviceSpec) -> Result<Arc<ServedModel>, LoadError> {
        let mut shared = (device == DeviceSpec::Cpu).then(|| self.cpu.lock());
        if let Some(m) = shared.as_ref().and_then(|cpu| cpu.as_ref()) {
            return Ok(m.clone());
        }
        let model = ServedModel::open(
            &self.dir,
            &self.source,
            K::HEAD,
            device,
            self.spec.kernels,
            self.spec.precision,
            self.overrides,
        )
        .map_err(|e| LoadError {
            task: self.task.clone(),
            message: format!("loading {} on {device}: {e}", self.dir.display()),
        })?;
        let model = Arc::new(model);
        if let Some(cpu) = shared.as_mut() {
            **cpu = Some(model.clone());
        }
        Ok(model)
    }

    fn encodings(&self, input: &Value) -> Result<Vec<Encoding>, String> {
        K::texts(input)?
            .into_iter()
            .map(|(t, p)| served::encode(&self.tokenizer, t, p).map_err(|e| e.to_string()))
            .collect()
    }
}

impl<K: Kind> TaskFactory for CheckpointFactory<K> {
    fn validate(&self, input: &Value) -> Result<(), String> {
        K::texts(input).map(drop)
    }

    fn prepare(&self, input: &Value) -> Option<Prepared> {
        let encodings = self.encodings(input).ok()?;
        Some(Prepared {
            tokens: encodings.iter().map(Encoding::len).sum(),
            data: Arc::new(encodings),
        })
    }

    fn length_before_truncation(&self, input: &Value) -> Option<(usize, usize)> {
        let mut longest = 0;
        for (t, p) in K::texts(input).ok()? {
            longest = longest.max(served::encode(&self.untruncated, t, p).ok()?.len());
        }
        Some((longest, self.info.max_length))
    }

    fn build(&self, ctx: &WorkerContext) -> Result<Box<dyn Task>, LoadError> {
        let model = self.model_for(ctx.device)?;
        let threads = ctx.intra_op_pool(&self.task)?;
        Ok(Box::new(CheckpointTask::<K> {
            task: self.task.clone(),
            pool: ctx.pool.clone(),
            device: ctx.device,
            model,
            threads,
            kind: std::marker::PhantomData,
        }))
    }

    fn batching(&self) -> bool {
        true
    }

    fn params(&self) -> Params {
        Params::Fields(K::PARAMS)
    }

    fn detokenize(&self, ids: &[u32]) -> Result<String, String> {
        let vocab = self.tokenizer.get_vocab_size(true);
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(format!(
                "token id {bad} is not in the model's vocabulary (0 to {})",
                vocab - 1
            ));
        }
        self.tokenizer.decode(ids, true).map_err(|e| e.to_string())
    }

    fn describe(&self) -> Option<Value> {
        let mut v = serde_json::to_value(&self.info).ok()?;
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), json!(K::NAME));
            let names: Vec<&str> = K::PARAMS.iter().map(|p| p.name).collect();
            o.insert("inputs".into(), json!(names));
        }
        Some(v)
    }
}

struct CheckpointTask<K: Kind> {
    task: String,
    pool: String,
    device: DeviceSpec,
    model: Arc<ServedModel>,
    threads: rayon::ThreadPool,
    kind: std::marker::PhantomData<K>,
}

impl<K: Kind> CheckpointTask<K> {
    fn forward(&self, seqs: &[Seq]) -> Result<Outputs, String> {
        let run = || match K::HEAD {
            HeadKind::Sequence => self.model.predict(seqs).map(Outputs::Rows),
            HeadKind::Pooled => self.model.embed(seqs).map(Outputs::Rows),
            HeadKind::Tokens => self.model.predict_tokens(seqs).map(Outputs::Tokens),
        };
        self.threads.install(run).map_err(|e| e.to_string())
    }
}

impl<K: Kind> Task for CheckpointTask<K> {
    fn run(&mut self, input: &Value) -> Result<Value, TaskError> {
        self.run_prepared(&[input], &[])
            .pop()
            .expect("one answer per input")
    }

    fn run_batch(&mut self, inputs: &[&Value]) -> Vec<Result<Value, TaskError>> {
        self.run_prepared(inputs, &[])
    }

    /// Every valid input's sequences run as one forward pass; the outputs are split back
    /// per input, in order.
    fn run_prepared(
        &mut self,
        inputs: &[&Value],
        prepared: &[Option<&Prepared>],
    ) -> Vec<Result<Value, TaskError>> {
        let mut out: Vec<Option<Result<Value, TaskError>>> = vec![None; inputs.len()];
        let mut valid: Vec<(usize, Vec<Encoding>)> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let given = prepared
                .get(i)
                .copied()
                .flatten()
                .and_then(|p| p.data.downcast_ref::<Vec<Encoding>>());
            let encodings = match given {
                Some(e) => Ok(e.clone()),
                None => K::texts(input).and_then(|texts| {
                    texts
                        .into_iter()
                        .map(|(t, p)| self.model.encode(t, p).map_err(|e| e.to_string()))
                        .collect()
                }),
            };
            match encodings {
                // A text the tokenizer turns into nothing fails alone, not its batch.
                Ok(e) if e.iter().any(|e| e.is_empty()) => {
                    out[i] = Some(Err(TaskError(
                        "the tokenizer gives no tokens for this text".into(),
                    )))
                }
                Ok(e) => valid.push((i, e)),
                Err(e) => out[i] = Some(Err(TaskError(e))),
            }
        }
        let seqs: Vec<Seq> = valid
            .iter()
            .flat_map(|(_, e)| e.iter().map(|e| self.model.seq(e)))
            .collect();
        let real: usize = seqs.iter().map(|s| s.ids.len()).sum();
        if !seqs.is_empty() {
            let t0 = Instant::now();
            let result = self.forward(&seqs);
            let elapsed = t0.elapsed();
            match result {
                Ok(outputs) => {
                    let (mut rows, mut tokens) = match outputs {
                        Outputs::Rows(r) => (r.into_iter(), Vec::new().into_iter()),
                        Outputs::Tokens(t) => (Vec::new().into_iter(), t.into_iter()),
                    };
                    for (i, encodings) in &valid {
                        let n = encodings.len();
                        let mine = match K::HEAD {
                            HeadKind::Tokens => Outputs::Tokens(tokens.by_ref().take(n).collect()),
                            _ => Outputs::Rows(rows.by_ref().take(n).collect()),
                        };
                        out[*i] = Some(Ok(K::answer(&self.model, inputs[*i], encodings, mine)));
                    }
                }
                Err(e) => {
                    for (i, _) in &valid {
                        out[*i] = Some(Err(TaskError(e.clone())));
                    }
                }
            }
            crate::metrics::model_batch(&self.pool, &self.task, self.device, real, elapsed);
        }
        out.into_iter()
            .map(|o| o.expect("every input answered"))
            .collect()
    }
}

// ---- the kinds ----

/// `text_classifier` on a checkpoint: `{"text"}` or `{"text", "text_pair"}` →
/// `{"label", "probabilities": {LABEL: p}}` (softmax), or with `problem_type =
/// "multi_label_classification"` sigmoids and `"labels"`: every label over 0.5. With
/// `"raw_scores": true` also `"logits": {LABEL: x}` (TEI's `/predict` asks for them).
pub struct TextClassifier;

impl Kind for TextClassifier {
    const NAME: &'static str = "text_classifier";
    const HEAD: HeadKind = HeadKind::Sequence;
    const PARAMS: &'static [Param] = &[
        Param::required("text"),
        Param::optional("text_pair"),
        Param::optional("raw_scores"),
    ];

    fn texts(input: &Value) -> Result<Vec<(&str, Option<&str>)>, String> {
        let obj = object(input, Self::PARAMS)?;
        bool_field(obj, "raw_scores")?;
        let text = text_field(obj, "text")?;
        let pair = match obj.get("text_pair") {
            None | Some(Value::Null) => None,
            Some(v) => Some(text_value(v, "text_pair")?),
        };
        Ok(vec![(text, pair)])
    }

    fn answer(model: &ServedModel, input: &Value, _: &[Encoding], out: Outputs) -> Value {
        let Outputs::Rows(rows) = out else {
            unreachable!("a sequence head answers rows")
        };
        let logits = &rows[0];
        let labels = &model.info.labels;
        let probs: Vec<f32> = if model.info.multi_label {
            logits.iter().map(|&l| heads::sigmoid(l)).collect()
        } else {
            heads::softmax(logits)
        };
        let best = argmax(&probs);
        let mut map = Map::new();
        for (label, p) in labels.iter().zip(&probs) {
            map.insert(label.clone(), json!(p));
        }
        let mut answer = json!({ "label": labels[best], "probabilities": map });
        if model.info.multi_label {
            let on: Vec<&String> = labels
                .iter()
                .zip(&probs)
                .filter(|(_, p)| **p > 0.5)
                .map(|(l, _)| l)
                .collect();
            answer["labels"] = json!(on);
        }
        if input.get("raw_scores").and_then(Value::as_bool) == Some(true) {
            let raw: Map<String, Value> = labels
                .iter()
                .zip(logits)
                .map(|(l, x)| (l.clone(), json!(x)))
                .collect();
            answer["logits"] = Value::Object(raw);
        }
        answer
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// `embeddings`: `{"text": "..."}` → `{"embedding": [...], "tokens": N}`; `{"text":
/// ["...", ...]}` → `{"embeddings": [[...], ...], "tokens": N}`. `tokens` counts what the
/// model read (special tokens included, after truncation): OpenAI's `usage`.
pub struct Embeddings;

impl Kind for Embeddings {
    const NAME: &'static str = "embeddings";
    const HEAD: HeadKind = HeadKind::Pooled;
    const PARAMS: &'static [Param] = &[Param::required("text")];

    fn texts(input: &Value) -> Result<Vec<(&str, Option<&str>)>, String> {
        let obj = object(input, Self::PARAMS)?;
        match obj.get("text") {
            Some(Value::Array(items)) => {
                if items.is_empty() || items.len() > MAX_ITEMS {
                    return Err(format!(
                        "field `text` lists {} texts; give 1 to {MAX_ITEMS}",
                        items.len()
                    ));
                }
                items
                    .iter()
                    .map(|v| text_value(v, "text").map(|t| (t, None)))
                    .collect()
            }
            _ => Ok(vec![(text_field(obj, "text")?, None)]),
        }
    }

    fn answer(_: &ServedModel, input: &Value, encodings: &[Encoding], out: Outputs) -> Value {
        let Outputs::Rows(rows) = out else {
            unreachable!("pooling answers rows")
        };
        let tokens: usize = encodings.iter().map(Encoding::len).sum();
        if input.get("text").is_some_and(Value::is_array) {
            json!({ "embeddings": rows, "tokens": tokens })
        } else {
            json!({ "embedding": rows[0], "tokens": tokens })
        }
    }
}

/// `reranker`: `{"query", "documents": [...], "raw_scores"?}` → `{"results": [{"index",
/// "score"}, ...]}`, best first; the score is the sigmoid of the cross-encoder's logit
/// (the logit itself with `raw_scores: true`).
pub struct Reranker;

impl Kind for Reranker {
    const NAME: &'static str = "reranker";
    const HEAD: HeadKind = HeadKind::Sequence;
    const PARAMS: &'static [Param] = &[
        Param::required("query"),
        Param::required("documents"),
        Param::optional("raw_scores"),
    ];

    fn texts(input: &Value) -> Result<Vec<(&str, Option<&str>)>, String> {
        let obj = object(input, Self::PARAMS)?;
        let query = text_field(obj, "query")?;
        bool_field(obj, "raw_scores")?;
        let docs = obj
            .get("documents")
            .ok_or("field `documents` is missing")?
            .as_array()
            .ok_or("field `documents` must be a list of strings")?;
        if docs.is_empty() || docs.len() > MAX_ITEMS {
            return Err(format!(
                "field `documents` lists {} documents; give 1 to {MAX_ITEMS}",
                docs.len()
            ));
        }
        docs.iter()
            .map(|d| text_value(d, "documents").map(|d| (query, Some(d))))
            .collect()
    }

    fn answer(_: &ServedModel, input: &Value, _: &[Encoding], out: Outputs) -> Value {
        let Outputs::Rows(rows) = out else {
            unreachable!("a sequence head answers rows")
        };
        let raw = input
            .get("raw_scores")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut results: Vec<(usize, f32)> = rows
            .iter()
            .enumerate()
            .map(|(i, l)| (i, if raw { l[0] } else { heads::sigmoid(l[0]) }))
            .collect();
        results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        json!({
            "results": results
                .into_iter()
                .map(|(index, score)| json!({"index": index, "score": score}))
                .collect::<Vec<_>>()
        })
    }
}

/// `token_classifier`: `{"text"}` → `{"entities": [{"entity_group", "score", "word",
/// "start", "end"}, ...]}`, as transformers' pipeline with
/// `aggregation_strategy="simple"` (character offsets).
pub struct TokenClassifier;

impl Kind for TokenClassifier {
    const NAME: &'static str = "token_classifier";
    const HEAD: HeadKind = HeadKind::Tokens;
    const PARAMS: &'static [Param] = &[Param::required("text")];

    fn texts(input: &Value) -> Result<Vec<(&str, Option<&str>)>, String> {
        let obj = object(input, Self::PARAMS)?;
        Ok(vec![(text_field(obj, "text")?, None)])
    }

    fn answer(model: &ServedModel, _: &Value, encodings: &[Encoding], out: Outputs) -> Value {
        let Outputs::Tokens(seqs) = out else {
            unreachable!("a token head answers tokens")
        };
        let enc = &encodings[0];
        let tokens: Vec<TokenOut> = enc
            .get_tokens()
            .iter()
            .zip(enc.get_offsets())
            .zip(enc.get_special_tokens_mask())
            .zip(&seqs[0])
            .map(|(((token, &offsets), &special), logits)| TokenOut {
                token,
                offsets,
                special: special == 1,
                probs: heads::softmax(logits),
            })
            .collect();
        let decoder = model.tokenizer().get_decoder();
        let entities = heads::aggregate_simple(&model.info.labels, &tokens, |words| {
            use tokenizers::Decoder;
            match decoder {
                Some(d) => d.decode(words.to_vec()).unwrap_or_else(|_| words.join(" ")),
                None => words.join(" "),
            }
        });
        json!({ "entities": entities })
    }
}

/// `embeddings`.
pub fn embeddings(
    name: &str,
    spec: &TaskSpec,
    config: &Config,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory::<Embeddings>(name, spec, config)
}

/// `reranker`.
pub fn reranker(
    name: &str,
    spec: &TaskSpec,
    config: &Config,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory::<Reranker>(name, spec, config)
}

/// `token_classifier`.
pub fn token_classifier(
    name: &str,
    spec: &TaskSpec,
    config: &Config,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory::<TokenClassifier>(name, spec, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked() {
        assert_eq!(
            TextClassifier::texts(&json!({"text": "a", "text_pair": "b"})).unwrap(),
            vec![("a", Some("b"))]
        );
        assert!(TextClassifier::texts(&json!({"txt": "a"})).is_err());
        assert!(TextClassifier::texts(&json!({"text": "a", "raw_scores": "yes"})).is_err());
        assert!(TextClassifier::texts(&json!({"text": ""})).is_err());
        assert_eq!(
            Reranker::texts(&json!({"query": "q", "documents": ["x", "y"]})).unwrap(),
            vec![("q", Some("x")), ("q", Some("y"))]
        );
        assert!(Reranker::texts(&json!({"query": "q", "documents": []})).is_err());
        assert!(Reranker::texts(&json!({"query": "q", "documents": [3]})).is_err());
        assert!(
            Reranker::texts(&json!({"query": "q", "documents": ["x"], "raw_scores": 1})).is_err()
        );
        assert_eq!(
            Embeddings::texts(&json!({"text": ["a", "b"]}))
                .unwrap()
                .len(),
            2
        );
        assert!(Embeddings::texts(&json!({"text": []})).is_err());
        assert!(TokenClassifier::texts(&json!("text")).is_err());
    }

    #[test]
    fn celery_signatures_follow_the_input_fields() {
        let sig = |p: &'static [Param], t| Params::Fields(p).signature(t);
        assert_eq!(
            sig(TextClassifier::PARAMS, "t.cls"),
            "t.cls(text, text_pair=None, raw_scores=None)"
        );
        assert_eq!(sig(Embeddings::PARAMS, "t.embed"), "t.embed(text)");
        assert_eq!(
            sig(Reranker::PARAMS, "t.rerank"),
            "t.rerank(query, documents, raw_scores=None)"
        );
        assert_eq!(sig(TokenClassifier::PARAMS, "t.ner"), "t.ner(text)");
        let bound = Params::Fields(Reranker::PARAMS)
            .bind("t.rerank", &[json!("q"), json!(["d"])], &Map::new())
            .unwrap();
        assert_eq!(Reranker::texts(&bound).unwrap(), vec![("q", Some("d"))]);
    }
}
