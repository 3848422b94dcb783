//! The checkpoint task kinds through the real server on a port: one config with a task
//! of every kind and architecture (the tiny checkpoints of tests/data/tiny), one of them
//! as `hf:ORG/NAME` from a Hugging Face cache laid out here, answers checked against
//! PyTorch's (expected.json), `GET /v1/models`, and bad input refused with 422.
//!
//! The server is the celeriac binary, started with `HF_HUB_CACHE` in its environment,
//! as a user would point it at their cache (this process's environment stays as it is).

use std::path::Path;
use std::time::Duration;

use crate::common;

use serde_json::{Value, json};

fn tiny(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tiny")
        .join(name)
        .display()
        .to_string()
}

/// A Hugging Face cache holding `bert-cls` as `bars/tiny-cls` at `refs/main`, its files
/// symlinks into `blobs/` as huggingface_hub lays them out.
fn hub_cache(root: &Path) {
    let repo = root.join("models--bars--tiny-cls");
    let commit = "4f0c7e5b8d2a61c3e9f07a1b2c3d4e5f60718293";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, f) in ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .enumerate()
    {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(Path::new(&tiny("bert-cls")).join(f), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snapshot.join(f)).unwrap();
    }
}

fn config() -> String {
    let task = |name: &str, kind: &str, model: &str| {
        format!(
            "[tasks.\"{name}\"]\nkind = \"{kind}\"\npool = \"m\"\nmodel = \"{model}\"\nprecision = \"f32\"\n"
        )
    };
    let mut c = String::from(
        "[server]\nmax_wait_seconds = 30.0\n[pools.m]\nconcurrency = 1\nmax_batch_size = 8\n",
    );
    for (name, kind, model) in [
        ("t.cls", "text_classifier", tiny("bert-cls")),
        ("t.multi", "text_classifier", tiny("bert-multilabel")),
        ("t.distil", "text_classifier", tiny("distilbert-cls")),
        ("t.roberta", "text_classifier", tiny("roberta-cls")),
        ("t.xlmr", "text_classifier", tiny("xlmr-cls")),
        ("t.deberta", "text_classifier", tiny("deberta-cls")),
        ("t.modern", "text_classifier", tiny("modernbert-cls")),
        ("t.embed", "embeddings", tiny("bert-embed")),
        ("t.rerank", "reranker", tiny("bert-rerank")),
        ("t.ner", "token_classifier", tiny("bert-ner")),
        ("t.hub", "text_classifier", "hf:bars/tiny-cls".to_string()),
    ] {
        c.push_str(&task(name, kind, &model));
    }
    c
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_and_architecture_through_the_server() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&tiny("expected.json"))).unwrap())
            .unwrap();
    let texts: Vec<String> = expected["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let root = common::broker::scratch("checkpoint-server").join("hub");
    let _ = std::fs::remove_dir_all(&root);
    hub_cache(&root);
    let node = common::Node::spawn_with_env(
        "serve",
        &config(),
        "checkpoint-server",
        &[("HF_HUB_CACHE", root.to_str().unwrap())],
    );
    node.wait_ready(120).await;
    let s = node.api();

    // Discovery.
    let models = s.get("/v1/models").await;
    assert_eq!(models.status, 200, "{}", models.body);
    let list = models.body["models"].as_array().unwrap();
    let entry = |task: &str| {
        list.iter()
            .find(|m| m["task"] == task)
            .unwrap_or_else(|| panic!("{task} listed"))
            .clone()
    };
    let cls = entry("t.cls");
    assert_eq!(cls["kind"], "text_classifier");
    assert_eq!(
        cls["model"]["architecture"],
        "BertForSequenceClassification"
    );
    assert_eq!(
        cls["model"]["labels"],
        json!(["negative", "neutral", "positive"])
    );
    assert_eq!(cls["model"]["precision"], "f32");
    assert_eq!(cls["model"]["kernels"], "packed");
    assert_eq!(
        cls["model"]["inputs"],
        json!(["text", "text_pair", "raw_scores"])
    );
    assert_eq!(entry("t.deberta")["model"]["kernels"], "candle");
    assert_eq!(entry("t.modern")["model"]["model_type"], "modernbert");
    assert_eq!(entry("t.embed")["model"]["dimensions"], 32);
    assert_eq!(entry("t.hub")["model"]["source"], "hf:bars/tiny-cls");

    // Classifiers: every text, labels equal and probabilities within 1e-3 of PyTorch's.
    for (task, model) in [
        ("t.cls", "bert-cls"),
        ("t.multi", "bert-multilabel"),
        ("t.distil", "distilbert-cls"),
        ("t.roberta", "roberta-cls"),
        ("t.xlmr", "xlmr-cls"),
        ("t.deberta", "deberta-cls"),
        ("t.modern", "modernbert-cls"),
        ("t.hub", "bert-cls"),
    ] {
        let want = &expected["models"][model];
        let mut ids = Vec::new();
        for t in &texts {
            ids.push(s.submit(task, json!({ "text": t })).await);
        }
        for (i, id) in ids.iter().enumerate() {
            let view = s.wait_final(id, 30.0).await;
            assert_eq!(view["state"], "SUCCESS", "{task}: {view}");
            let r = &view["result"];
            assert_eq!(r["label"], want["labels"][i], "{task} text {i}");
            let probs = floats(&want["probabilities"][i]);
            let labels = entry(task)["model"]["labels"].clone();
            for (j, l) in labels.as_array().unwrap().iter().enumerate() {
                let got = r["probabilities"][l.as_str().unwrap()].as_f64().unwrap();
                assert!(
                    (got - probs[j]).abs() < 1e-3,
                    "{task} text {i} {l}: {got} vs {}",
                    probs[j]
                );
            }
            if task == "t.multi" {
                let on: Vec<Value> = labels
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(&probs)
                    .filter(|(_, p)| **p > 0.5)
                    .map(|(l, _)| l.clone())
                    .collect();
                assert_eq!(r["labels"], json!(on), "{task} text {i}");
            }
        }
    }
    // A text pair.
    let pair = &expected["pairs"][0];
    let id = s
        .submit("t.cls", json!({"text": pair[0], "text_pair": pair[1]}))
        .await;
    let view = s.wait_final(&id, 30.0).await;
    let logits = floats(&expected["models"]["bert-cls"]["pair_logits"][0]);
    let best = (0..3)
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap();
    assert_eq!(
        view["result"]["label"],
        json!(["negative", "neutral", "positive"][best])
    );

    // Embeddings: cosine >= 0.9999.
    let want = &expected["models"]["bert-embed"]["embeddings"];
    for (i, t) in texts.iter().enumerate() {
        let id = s.submit("t.embed", json!({ "text": t })).await;
        let view = s.wait_final(&id, 30.0).await;
        let got = floats(&view["result"]["embedding"]);
        let theirs = floats(&want[i]);
        let dot: f64 = got.iter().zip(&theirs).map(|(a, b)| a * b).sum();
        let n = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!(dot / (n(&got) * n(&theirs)) >= 0.9999, "t.embed text {i}");
    }

    // Reranker: order and scores.
    let want = &expected["models"]["bert-rerank"];
    let id = s
        .submit(
            "t.rerank",
            json!({"query": expected["query"], "documents": expected["documents"]}),
        )
        .await;
    let view = s.wait_final(&id, 30.0).await;
    let results = view["result"]["results"].as_array().unwrap();
    let order: Vec<Value> = results.iter().map(|r| r["index"].clone()).collect();
    assert_eq!(json!(order), want["order"]);
    let scores = floats(&want["scores"]);
    for r in results {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((r["score"].as_f64().unwrap() - scores[i]).abs() < 1e-3);
    }
    let id = s
        .submit(
            "t.rerank",
            json!({"query": expected["query"], "documents": expected["documents"], "raw_scores": true}),
        )
        .await;
    let view = s.wait_final(&id, 30.0).await;
    let first = &view["result"]["results"][0];
    let logits = floats(&want["logits"]);
    let i = first["index"].as_u64().unwrap() as usize;
    assert!((first["score"].as_f64().unwrap() - logits[i]).abs() < 1e-3);

    // Token classification: groups and spans equal.
    let want = &expected["models"]["bert-ner"]["entities"];
    for (i, t) in texts.iter().enumerate() {
        let id = s.submit("t.ner", json!({ "text": t })).await;
        let view = s.wait_final(&id, 30.0).await;
        let ours = view["result"]["entities"].as_array().unwrap();
        let theirs = want[i].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "t.ner text {i}");
        for (a, b) in ours.iter().zip(theirs) {
            for k in ["entity_group", "word", "start", "end"] {
                assert_eq!(a[k], b[k], "t.ner text {i} {k}");
            }
        }
    }

    // Bad input: 422 with the reason, nothing queued.
    for (task, input) in [
        ("t.cls", json!({"txt": "x"})),
        ("t.cls", json!({"text": ""})),
        ("t.rerank", json!({"query": "q"})),
        ("t.rerank", json!({"query": "q", "documents": "not a list"})),
        ("t.embed", json!({"text": 42})),
        ("t.ner", json!(["text"])),
    ] {
        let r = s.post(&format!("/v1/tasks/{task}"), &input).await;
        assert_eq!(r.status, 422, "{task} {input}: {}", r.body);
        assert!(
            r.body["error"].is_string() && r.body["code"].is_string(),
            "{}",
            r.body
        );
    }
    // SIGTERM drains and exits cleanly.
    let status = node.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "the node exited with {status}");
    std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
}
