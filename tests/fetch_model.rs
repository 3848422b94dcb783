//! `celeriac fetch-model`: the real binary downloads a tiny checkpoint over HTTP into a
//! Hugging Face cache, and the real `huggingface_hub` (the test virtualenv's) reads
//! that cache as its own.
//!
//! The hub itself cannot be reached from the test machines, so the test serves the
//! hub's download protocol here, on a free port (`HF_ENDPOINT`), as huggingface.co
//! answers it: `GET /api/models/ORG/NAME/revision/REV` lists the files and the commit;
//! `GET /ORG/NAME/resolve/REV/FILE` serves a file with `X-Repo-Commit`, an `ETag` and
//! byte ranges (`Range: bytes=0-0` first, for the size); unknown repositories are 404.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use warp::Filter;
use warp::http::{Response, StatusCode};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "bars/tiny-cls";

/// The files of the repository: the tiny BERT classifier, plus files a hub repository
/// often carries and celeriac does not read.
fn repository() -> BTreeMap<String, Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny/bert-cls");
    let mut files: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.insert("pytorch_model.bin".into(), b"not read by celeriac".to_vec());
    files.insert("onnx/model.onnx".into(), b"not read either".to_vec());
    files.insert("README.md".into(), b"# tiny-cls\n".to_vec());
    files
}

/// Serves `files` as repository `REPO` at `COMMIT` (revisions `main` and the commit).
async fn hub(files: BTreeMap<String, Vec<u8>>) -> (String, tokio::task::JoinHandle<()>) {
    let files = Arc::new(files);
    let known = |org: &str, name: &str, rev: &str| {
        format!("{org}/{name}") == REPO && (rev == "main" || rev == COMMIT)
    };
    let listing = {
        let files = files.clone();
        warp::path!("api" / "models" / String / String / "revision" / String).map(
            move |org: String, name: String, rev: String| {
                if !known(&org, &name, &rev) {
                    return Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .header("x-error-code", "RepositoryNotFound")
                        .body(r#"{"error":"Repository not found"}"#.to_string())
                        .unwrap();
                }
                let siblings: Vec<_> = files
                    .keys()
                    .map(|f| serde_json::json!({ "rfilename": f }))
                    .collect();
                Response::builder()
                    .header("content-type", "application/json")
                    .body(serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string())
                    .unwrap()
            },
        )
    };
    let resolve = {
        let files = files.clone();
        warp::path!(String / String / "resolve" / String / ..)
            .and(warp::path::tail())
            .and(warp::header::optional::<String>("range"))
            .map(
                move |org: String,
                      name: String,
                      rev: String,
                      tail: warp::path::Tail,
                      range: Option<String>| {
                    let Some(body) = files
                        .get(tail.as_str())
                        .filter(|_| known(&org, &name, &rev))
                    else {
                        return Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .header("x-error-code", "EntryNotFound")
                            .body(Vec::new())
                            .unwrap();
                    };
                    let etag = format!("\"{:x}\"", Sha256::digest(body));
                    let response = Response::builder()
                        .header("x-repo-commit", COMMIT)
                        .header("etag", etag)
                        .header("accept-ranges", "bytes");
                    let size = body.len();
                    // `bytes=START-` or `bytes=START-END` (inclusive).
                    let span = range.as_deref().and_then(|r| {
                        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
                        let a: usize = a.parse().ok()?;
                        let b: usize = if b.is_empty() {
                            size.saturating_sub(1)
                        } else {
                            b.parse().ok()?
                        };
                        Some((a, b.min(size.saturating_sub(1))))
                    });
                    match span {
                        Some((a, b)) if a <= b && b < size => response
                            .status(StatusCode::PARTIAL_CONTENT)
                            .header("content-range", format!("bytes {a}-{b}/{size}"))
                            .body(body[a..=b].to_vec())
                            .unwrap(),
                        _ => response.body(body.clone()).unwrap(),
                    }
                },
            )
    };
    let routes = warp::get().and(listing.or(resolve));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = tokio::spawn(warp::serve(routes).incoming(listener).run());
    (url, handle)
}

/// Runs `celeriac fetch-model ARGS` with the hub at `endpoint` and the cache under
/// `home`; returns (success, stdout, stderr).
fn fetch_model(endpoint: &str, home: &Path, args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .arg("fetch-model")
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::wait_child_output(child, Duration::from_secs(60));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_model_fills_the_cache_that_huggingface_hub_reads() {
    let files = repository();
    let (endpoint, server) = hub(files.clone()).await;
    let home = common::broker::scratch("hf-home");
    let cache = home.join("hub");

    let (ok, stdout, stderr) = {
        let (e, h) = (endpoint.clone(), home.clone());
        tokio::task::spawn_blocking(move || fetch_model(&e, &h, &["hf:bars/tiny-cls", "--quiet"]))
            .await
            .unwrap()
    };
    assert!(ok, "fetch-model failed: {stderr}");
    let snapshot = cache.join("models--bars--tiny-cls/snapshots").join(COMMIT);
    assert_eq!(PathBuf::from(&stdout), snapshot, "{stderr}");
    // What celeriac serves from, byte for byte; nothing else.
    for (name, body) in &files {
        let wanted =
            !(name.ends_with(".bin") || name.starts_with("onnx/") || name.ends_with(".md"));
        let path = snapshot.join(name);
        if wanted {
            assert_eq!(&std::fs::read(&path).unwrap(), body, "{name}");
        } else {
            assert!(!path.exists(), "{name} should not be fetched");
        }
    }
    assert!(
        stderr.contains("pytorch_model.bin"),
        "the files left out are named: {stderr}"
    );
    let main_ref = std::fs::read_to_string(cache.join("models--bars--tiny-cls/refs/main")).unwrap();
    assert_eq!(main_ref.trim(), COMMIT);
    // celeriac's own resolver and the real huggingface_hub agree on the snapshot.
    assert_eq!(
        celeriac::model::hf::resolve_hub(&cache, "bars/tiny-cls").unwrap(),
        snapshot
    );
    assert_eq!(
        celeriac::model::hf::resolve_hub(&cache, &format!("bars/tiny-cls@{COMMIT}")).unwrap(),
        snapshot
    );
    let py = format!(
        r#"
import os, sys
os.environ["HF_HOME"] = {home:?}
os.environ["HF_HUB_OFFLINE"] = "1"
from huggingface_hub import snapshot_download, try_to_load_from_cache
print(snapshot_download("bars/tiny-cls", local_files_only=True))
print(try_to_load_from_cache("bars/tiny-cls", "model.safetensors"))
"#,
        home = home.display().to_string()
    );
    let lines: Vec<String> =
        tokio::task::spawn_blocking(move || common::broker::run_python(&py, &[]))
            .await
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
    assert_eq!(PathBuf::from(&lines[0]), snapshot);
    assert_eq!(PathBuf::from(&lines[1]), snapshot.join("model.safetensors"));

    // An unknown repository is a clear failure, and a malformed name never reaches the
    // network.
    let (e, h) = (endpoint.clone(), home.clone());
    let (ok, _, stderr) = tokio::task::spawn_blocking(move || {
        fetch_model(&e, &h, &["hf:bars/no-such-model", "--quiet"])
    })
    .await
    .unwrap();
    assert!(!ok && stderr.contains("bars/no-such-model"), "{stderr}");
    let (e, h) = (endpoint.clone(), home.clone());
    let (ok, _, stderr) =
        tokio::task::spawn_blocking(move || fetch_model(&e, &h, &["hf:../etc", "--quiet"]))
            .await
            .unwrap();
    assert!(!ok && stderr.contains("expected hf:ORG/NAME"), "{stderr}");

    // With the hub gone, a checkpoint already in the cache is still found.
    server.abort();
    let _ = server.await;
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        fetch_model(&endpoint, &home, &["hf:bars/tiny-cls", "--quiet"])
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    assert_eq!(PathBuf::from(&stdout), snapshot);
    assert!(stderr.contains("already in the cache"), "{stderr}");
}
