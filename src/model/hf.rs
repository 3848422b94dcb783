//! Loading a model as users hand it over: a Hugging Face directory (`config.json`,
//! `tokenizer.json`, `model.safetensors`; for sentence-transformers models also
//! `modules.json` and `1_Pooling/config.json`), given by path or as `hf:ORG/NAME[@REV]`
//! from the local Hugging Face cache, without network.
//!
//! One reader for both routes: [`resolve`] turns the task's `model` into a directory,
//! [`Checkpoint::open`] reads what the encoder families ([`super::family`]) and the heads
//! ([`super::heads`]) need, once, with errors that name the file and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use super::ModelError;

/// The `model_type`s this build serves, in the order start-up errors list them.
pub const SUPPORTED: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "camembert",
    "distilbert",
    "deberta-v2",
    "modernbert",
];

/// The local Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (as `huggingface_hub` lays it out).
pub fn hub_cache() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("HF_HUB_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = var("HF_HOME") {
        return PathBuf::from(d).join("hub");
    }
    var("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/huggingface/hub")
}

/// A task's `model` setting: `hf:ORG/NAME[@REVISION]` (from the hub cache), else a path
/// (relative ones against `base`). Returns the directory.
pub fn resolve(model: &Path, base: &Path) -> Result<PathBuf, ModelError> {
    match model.to_str().and_then(|s| s.strip_prefix("hf:")) {
        Some(spec) => resolve_hub(&hub_cache(), spec),
        None if model.is_absolute() => Ok(model.to_path_buf()),
        None => Ok(base.join(model)),
    }
}

/// `ORG/NAME[@REVISION]` split into the repository id and the revision (default
/// `main`); an error names what is wrong with it.
pub fn parse_hub_spec(spec: &str) -> Result<(&str, &str), String> {
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2 || !parts.iter().all(|p| hub_name(p)) || !hub_name(revision) {
        return Err(format!(
            "model `hf:{spec}`: expected hf:ORG/NAME or hf:ORG/NAME@REVISION"
        ));
    }
    Ok((repo, revision))
}

/// A repository owner or name, a ref or a commit: no path separators or dot names.
fn hub_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `ORG/NAME[@REVISION]` in the cache at `cache`: `models--ORG--NAME/snapshots/<commit>`,
/// where the revision (default `main`) is a branch or tag under `refs/` or a commit hash.
pub fn resolve_hub(cache: &Path, spec: &str) -> Result<PathBuf, ModelError> {
    let bad = |message: String| ModelError::File {
        path: cache.to_path_buf(),
        message,
    };
    let (repo, revision) = parse_hub_spec(spec).map_err(bad)?;
    let (org, name) = repo.split_once('/').expect("checked by parse_hub_spec");
    let repo_dir = cache.join(format!("models--{org}--{name}"));
    if !repo_dir.is_dir() {
        return Err(bad(format!(
            "model `hf:{spec}` is not in the Hugging Face cache ({} is missing); download it \
             there (celeriac fetch-model hf:{spec}, or huggingface-cli download {repo}) or \
             point `model` at a directory",
            repo_dir.display()
        )));
    }
    let reference = repo_dir.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&reference) {
        Ok(c) => c.trim().to_string(),
        Err(_) => revision.to_string(),
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !hub_name(&commit) || !snapshot.is_dir() {
        return Err(bad(format!(
            "model `hf:{spec}`: revision `{revision}` is neither a ref under {} nor a \
             snapshot under {}",
            repo_dir.join("refs").display(),
            repo_dir.join("snapshots").display()
        )));
    }
    Ok(snapshot)
}

/// How token states become one vector (sentence-transformers' `1_Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's state.
    Cls,
    /// The mean over the text's tokens.
    Mean,
    /// The element-wise maximum over the text's tokens.
    Max,
    /// The last token's state.
    LastToken,
    /// The sum over the tokens divided by the square root of their count.
    MeanSqrtLen,
}

impl Pooling {
    /// Its name in `/v1/models` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::LastToken => "lasttoken",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
        }
    }
}

/// A checkpoint directory, read: what every family and head needs.
pub struct Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// `config.json`'s text (part of the packed-weights cache key).
    pub config_text: String,
    /// `config.json`, parsed.
    pub config: Value,
    /// `model_type` (one of [`SUPPORTED`]).
    pub model_type: String,
    /// The first of `architectures` (e.g. `BertForSequenceClassification`); empty if absent.
    pub architecture: String,
    /// `id2label` in id order (empty when the config has none).
    pub labels: Vec<String>,
    /// `problem_type`, if set.
    pub problem_type: Option<String>,
    /// The safetensors files (one, or the shards of an index).
    pub weights: Vec<PathBuf>,
    /// The checkpoint's own tokenizer (no padding, no truncation yet).
    pub tokenizer: Tokenizer,
    /// The pooling `1_Pooling/config.json` declares (sentence-transformers layout).
    pub pooling: Option<Pooling>,
    /// Whether `modules.json` lists a `Normalize` module.
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`, or `tokenizer_config.json`'s
    /// `model_max_length` when it is a real bound, or the truncation `tokenizer.json`
    /// declares.
    pub declared_max_length: Option<usize>,
    /// Whether the model gets the tokenizer's token types (a text pair's second segment
    /// as type 1), as transformers decides it: `tokenizer_config.json`'s
    /// `model_input_names`, else its `tokenizer_class` ([`TOKEN_TYPE_TOKENIZERS`]), else
    /// the family (BERT and DeBERTa-v2 take them). Otherwise every token is type 0.
    pub token_types: bool,
}

/// Tokenizer classes whose `model_input_names` include `token_type_ids` in transformers
/// (the `Fast` variants alike).
pub const TOKEN_TYPE_TOKENIZERS: &[&str] = &[
    "BertTokenizer",
    "DebertaV2Tokenizer",
    "DebertaTokenizer",
    "ElectraTokenizer",
    "MobileBertTokenizer",
    "ConvBertTokenizer",
    "FunnelTokenizer",
    "LayoutLMTokenizer",
    "SqueezeBertTokenizer",
];

fn file_error(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_error(path, e))
}

impl Checkpoint {
    /// Reads `dir`: `config.json` (an unsupported `model_type` is an error listing the
    /// supported ones), the tokenizer, the weights' paths, and the sentence-transformers
    /// modules where present.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| file_error(&config_path, e))?;
        let config: Value =
            serde_json::from_str(&config_text).map_err(|e| file_error(&config_path, e))?;
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| file_error(&config_path, "field `model_type` is missing"))?
            .to_string();
        if !SUPPORTED.contains(&model_type.as_str()) {
            return Err(file_error(
                &config_path,
                format!(
                    "model_type `{model_type}` is not supported; supported: {}",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        let architecture = config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let labels = match config.get("id2label") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(map)) => {
                let mut labels = vec![None; map.len()];
                for (k, v) in map {
                    let i: usize = k.parse().ok().filter(|&i| i < map.len()).ok_or_else(|| {
                        file_error(
                            &config_path,
                            format!("id2label key `{k}` is not an id in 0..{}", map.len()),
                        )
                    })?;
                    let name = v.as_str().ok_or_else(|| {
                        file_error(&config_path, format!("id2label `{k}` is not a string"))
                    })?;
                    labels[i] = Some(name.to_string());
                }
                labels.into_iter().map(Option::unwrap_or_default).collect()
            }
            Some(_) => {
                return Err(file_error(
                    &config_path,
                    "field `id2label` is not an object",
                ));
            }
        };
        let problem_type = config
            .get("problem_type")
            .and_then(Value::as_str)
            .map(str::to_string);

        let weights = Self::weights(dir)?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(file_error(
                &tokenizer_path,
                "missing: the tokenizer must be in the `tokenizers` library's format \
                 (save it with a fast tokenizer's save_pretrained)",
            ));
        }
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| file_error(&tokenizer_path, e))?;

        let (pooling, normalize) = Self::modules(dir)?;
        let sbert = dir.join("sentence_bert_config.json");
        let tok_config = dir.join("tokenizer_config.json");
        let tok_json = if tok_config.exists() {
            Some(read_json(&tok_config)?)
        } else {
            None
        };
        let token_types = match &tok_json {
            Some(t) => match t.get("model_input_names").and_then(Value::as_array) {
                Some(names) => names.iter().any(|n| n == "token_type_ids"),
                None => t
                    .get("tokenizer_class")
                    .and_then(Value::as_str)
                    .is_some_and(|c| TOKEN_TYPE_TOKENIZERS.contains(&c.trim_end_matches("Fast"))),
            },
            None => matches!(model_type.as_str(), "bert" | "deberta-v2"),
        };
        let declared_max_length = if sbert.exists() {
            read_json(&sbert)?
                .get("max_seq_length")
                .and_then(Value::as_u64)
                .map(|n| n as usize)
        } else {
            tok_json
                .as_ref()
                .and_then(|t| t.get("model_max_length"))
                .and_then(Value::as_f64)
                .filter(|&n| (1.0..1e6).contains(&n))
                .map(|n| n as usize)
                // Else the truncation `tokenizer.json` itself declares (all-MiniLM-L6-v2's:
                // 128), as the `tokenizers` library applies it when it loads the file.
                .or_else(|| tokenizer.get_truncation().map(|t| t.max_length))
        };
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config_text,
            config,
            model_type,
            architecture,
            labels,
            problem_type,
            weights,
            tokenizer,
            pooling,
            normalize,
            declared_max_length,
            token_types,
        })
    }

    /// `model.safetensors`, or the shards `model.safetensors.index.json` names.
    fn weights(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Ok(vec![single]);
        }
        let index = dir.join("model.safetensors.index.json");
        if !index.exists() {
            return Err(file_error(
                &single,
                "missing (and no model.safetensors.index.json): the weights must be \
                 safetensors (save_pretrained writes them)",
            ));
        }
        let map = read_json(&index)?;
        let mut shards: Vec<PathBuf> = map
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| file_error(&index, "field `weight_map` is missing"))?
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        shards.sort();
        shards.dedup();
        Ok(shards)
    }

    /// The pooling and normalisation of a sentence-transformers directory: the `Pooling`
    /// module's `config.json` and whether a `Normalize` module follows. A `Dense` module
    /// is refused (its projection would be silently skipped otherwise).
    fn modules(dir: &Path) -> Result<(Option<Pooling>, bool), ModelError> {
        let path = dir.join("modules.json");
        if !path.exists() {
            let fallback = dir.join("1_Pooling").join("config.json");
            return Ok((
                fallback
                    .exists()
                    .then(|| Self::pooling(&fallback))
                    .transpose()?,
                false,
            ));
        }
        let modules = read_json(&path)?;
        let list = modules
            .as_array()
            .ok_or_else(|| file_error(&path, "not a list of modules"))?;
        let (mut pooling, mut normalize) = (None, false);
        for m in list {
            let kind = m.get("type").and_then(Value::as_str).unwrap_or_default();
            let sub = m.get("path").and_then(Value::as_str).unwrap_or_default();
            match kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" => {}
                "Pooling" => pooling = Some(Self::pooling(&dir.join(sub).join("config.json"))?),
                "Normalize" => normalize = true,
                other => {
                    return Err(file_error(
                        &path,
                        format!(
                            "module type `{other}` ({kind}) is not supported; supported: \
                             Transformer, Pooling, Normalize"
                        ),
                    ));
                }
            }
        }
        Ok((pooling, normalize))
    }

    fn pooling(path: &Path) -> Result<Pooling, ModelError> {
        let cfg = read_json(path)?;
        let on = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
        let modes = [
            ("pooling_mode_cls_token", Pooling::Cls),
            ("pooling_mode_mean_tokens", Pooling::Mean),
            ("pooling_mode_max_tokens", Pooling::Max),
            ("pooling_mode_lasttoken", Pooling::LastToken),
            ("pooling_mode_mean_sqrt_len_tokens", Pooling::MeanSqrtLen),
        ];
        if on("pooling_mode_weightedmean_tokens") {
            return Err(file_error(
                path,
                "pooling_mode_weightedmean_tokens is not supported",
            ));
        }
        let set: Vec<Pooling> = modes
            .iter()
            .filter(|(k, _)| on(k))
            .map(|(_, p)| *p)
            .collect();
        match set[..] {
            [one] => Ok(one),
            [] => Err(file_error(path, "no pooling_mode_* is set")),
            _ => Err(file_error(
                path,
                "several pooling modes are set (concatenated poolings are not supported)",
            )),
        }
    }

    /// A `usize` field of `config.json`, or `default`.
    pub fn usize_or(&self, key: &str, default: usize) -> usize {
        self.config
            .get(key)
            .and_then(Value::as_u64)
            .map_or(default, |v| v as usize)
    }

    /// A required `usize` field of `config.json`.
    pub fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.config
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                file_error(
                    &self.dir.join("config.json"),
                    format!("field `{key}` is missing or not a count"),
                )
            })
    }

    /// A string field of `config.json`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(Value::as_str)
    }

    /// A float field of `config.json`, or `default`.
    pub fn f64_or(&self, key: &str, default: f64) -> f64 {
        self.config
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or(default)
    }

    /// An error about a field of `config.json`.
    pub fn config_error(&self, message: impl std::fmt::Display) -> ModelError {
        file_error(&self.dir.join("config.json"), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_cache_layout_resolves_refs_and_commits() {
        let root = std::env::temp_dir().join(format!("celeriac-hub-{}", std::process::id()));
        let repo = root.join("models--org--tiny");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        std::fs::write(repo.join("refs/v1"), commit).unwrap();
        let snap = repo.join("snapshots").join(commit);
        assert_eq!(resolve_hub(&root, "org/tiny").unwrap(), snap);
        assert_eq!(resolve_hub(&root, "org/tiny@v1").unwrap(), snap);
        assert_eq!(
            resolve_hub(&root, &format!("org/tiny@{commit}")).unwrap(),
            snap
        );
        let e = resolve_hub(&root, "org/tiny@nope").unwrap_err().to_string();
        assert!(e.contains("revision `nope`"), "{e}");
        let e = resolve_hub(&root, "org/other").unwrap_err().to_string();
        assert!(e.contains("not in the Hugging Face cache"), "{e}");
        assert!(resolve_hub(&root, "org/../x").is_err());
        assert!(resolve_hub(&root, "justname").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
