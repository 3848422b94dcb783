//! `celeriac fetch-model hf:ORG/NAME[@REVISION]`: downloads a checkpoint from the
//! Hugging Face hub into the local cache, in the layout `huggingface_hub` writes and
//! [`super::hf::resolve_hub`] reads (`models--ORG--NAME/{blobs,snapshots,refs}`), with
//! the `hf-hub` crate. Files already there are not fetched again.
//!
//! What it fetches: the files a checkpoint is served from (`*.json`, `*.txt`, `*.model`
//! and `*.safetensors` at the top and in sentence-transformers' numbered module folders
//! such as `1_Pooling/`), not the other formats a repository often carries as well
//! (`pytorch_model.bin`, ONNX, OpenVINO, TensorFlow, Flax), which celeriac does not read.
//!
//! The environment, as `huggingface_hub` reads it: `HF_ENDPOINT` (the hub, default
//! `https://huggingface.co`), `HF_TOKEN` or the token file `$HF_HOME/token` (gated and
//! private repositories), `HF_HUB_CACHE` / `HF_HOME` (the cache, see
//! [`super::hf::hub_cache`]).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

use super::hf::{hub_cache, parse_hub_spec};

/// What [`fetch`] did.
#[derive(Debug)]
pub struct Fetched {
    /// The snapshot directory (`model = "hf:..."` resolves to it).
    pub snapshot: PathBuf,
    /// The files it holds, as the repository names them.
    pub files: Vec<String>,
    /// The files the repository has and celeriac left out.
    pub skipped: Vec<String>,
    /// Set when the hub could not be asked (why) and the snapshot was already in the
    /// cache: nothing was downloaded.
    pub offline: Option<String>,
}

/// Whether celeriac serves from a repository file named `name`.
pub fn wanted(name: &str) -> bool {
    let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
    // Top level, or one sentence-transformers module folder (`1_Pooling`, `2_Dense`).
    let in_module = dir.split_once('_').is_some_and(|(n, rest)| {
        !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) && !rest.contains('/')
    });
    if !(dir.is_empty() || in_module) {
        return false;
    }
    [".json", ".txt", ".model", ".safetensors"]
        .iter()
        .any(|ext| file.ends_with(ext))
}

/// Downloads `spec` (`ORG/NAME[@REVISION]`, with or without the `hf:`) into the hub cache; see
/// the module doc. `progress` shows a progress bar per file on stderr.
pub fn fetch(spec: &str, progress: bool) -> anyhow::Result<Fetched> {
    let spec = spec.strip_prefix("hf:").unwrap_or(spec);
    let (repo_id, revision) = parse_hub_spec(spec).map_err(anyhow::Error::msg)?;
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(hub_cache())
        .with_progress(progress);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build()?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = match repo.info() {
        Ok(info) => info,
        Err(e) => {
            let why = format!("hf:{spec}: could not list the repository: {e}");
            // Offline, or the hub is down: a snapshot already here is what `model =
            // "hf:..."` would serve.
            return match super::hf::resolve_hub(&hub_cache(), spec) {
                Ok(snapshot) => Ok(Fetched {
                    files: list(&snapshot),
                    snapshot,
                    skipped: Vec::new(),
                    offline: Some(why),
                }),
                Err(_) => Err(anyhow::anyhow!(why)),
            };
        }
    };
    let (files, skipped): (Vec<String>, Vec<String>) = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .partition(|f| wanted(f));
    if !files.iter().any(|f| f == "config.json") {
        anyhow::bail!("hf:{spec} has no config.json: not a transformers checkpoint");
    }
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        anyhow::bail!(
            "hf:{spec} has no safetensors weights (it has: {}); celeriac reads \
             model.safetensors only: convert the checkpoint (transformers' \
             save_pretrained writes safetensors) and point `model` at the directory",
            skipped.join(", ")
        );
    }
    let mut snapshot = None;
    for f in &files {
        let path = repo
            .get(f)
            .map_err(|e| anyhow::anyhow!("hf:{spec}: downloading {f}: {e}"))?;
        if f == "config.json" {
            snapshot = path.parent().map(Path::to_path_buf);
        }
    }
    let snapshot =
        snapshot.ok_or_else(|| anyhow::anyhow!("hf:{spec}: config.json has no snapshot folder"))?;
    Ok(Fetched {
        snapshot,
        files,
        skipped,
        offline: None,
    })
}

/// The files under `dir`, as paths relative to it.
fn list(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::wanted;

    #[test]
    fn fetches_what_celeriac_serves_from_only() {
        for f in [
            "config.json",
            "tokenizer.json",
            "model.safetensors",
            "vocab.txt",
            "sentencepiece.bpe.model",
            "1_Pooling/config.json",
            "2_Dense/model.safetensors",
        ] {
            assert!(wanted(f), "{f}");
        }
        for f in [
            "pytorch_model.bin",
            "onnx/model.onnx",
            "onnx/config.json",
            "openvino/openvino_model.xml",
            "tf_model.h5",
            "flax_model.msgpack",
            "README.md",
            ".gitattributes",
            "a/1_Pooling/config.json",
            "_x/config.json",
        ] {
            assert!(!wanted(f), "{f}");
        }
    }
}
