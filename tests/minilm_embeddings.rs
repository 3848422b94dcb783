//! all-MiniLM-L6-v2 served as an `embeddings` task from a sentence-transformers
//! directory made of `models/spam-minilm`'s files (its upstream `config.json` and
//! `tokenizer.json`, the fetched weights, plus `modules.json` and `1_Pooling`): the
//! `openai` client's vectors, `/embed`'s and base64's equal PyTorch's reference vectors
//! (`../shared/reference/minilm_embeddings.jsonl`), and `/info` states the length.

use crate::common;

use common::broker::{run_python, scratch};
use common::{shared_dir, start};
use serde_json::Value;

const CLIENT: &str = r#"
import base64, json, math, struct, sys, urllib.request
from openai import OpenAI
base, texts = sys.argv[1], json.loads(sys.argv[2])
client = OpenAI(base_url=base + "/v1", api_key="unused")
floats = [d.embedding for d in client.embeddings.create(model="minilm.embed", input=texts).data]
raw = urllib.request.Request(base + "/v1/embeddings", data=json.dumps(
    {"model": "minilm.embed", "input": texts, "encoding_format": "base64"}).encode(),
    headers={"content-type": "application/json"})
b64 = [list(struct.unpack("<%df" % 384, base64.b64decode(d["embedding"])))
       for d in json.load(urllib.request.urlopen(raw))["data"]]
tei = urllib.request.Request(base + "/embed", data=json.dumps({"inputs": texts}).encode(),
    headers={"content-type": "application/json"})
embed = json.load(urllib.request.urlopen(tei))
info = json.load(urllib.request.urlopen(base + "/info"))
print(json.dumps({"floats": floats, "b64": b64, "embed": embed, "info": info}))
"#;

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minilm_embeddings_match_pytorch_through_the_openai_and_tei_routes() {
    let Some(shared) = shared_dir() else { return };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/spam-minilm");
    let dir = scratch("minilm-st");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    // Links, as a Hugging Face cache's snapshot holds them (and no 90 MB copy).
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(root.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension":384,"pooling_mode_mean_tokens":true}"#,
    )
    .unwrap();
    let s = start(&format!(
        "[pools.emb]\nconcurrency = 1\nmax_batch_size = 32\n[tasks.\"minilm.embed\"]\nkind = \"embeddings\"\nmodel = \"{}\"\npool = \"emb\"\n",
        dir.display()
    ))
    .await;
    let refs: Vec<Value> =
        std::fs::read_to_string(shared.join("reference/minilm_embeddings.jsonl"))
            .unwrap()
            .lines()
            .take(20)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let texts: Vec<&str> = refs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let out: Value = serde_json::from_str(&run_python(
        CLIENT,
        &[&s.url, &serde_json::to_string(&texts).unwrap()],
    ))
    .unwrap();
    let want: Vec<Vec<f64>> = refs
        .iter()
        .map(|r| {
            r["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    // `floats`: the client's default request (it asks base64 and decodes it itself).
    for route in ["floats", "b64", "embed"] {
        let got = vectors(&out[route]);
        assert_eq!(got.len(), 20, "{route}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(
                c >= 0.9999,
                "{route}: text {i} ({:?}): cosine {c}",
                texts[i]
            );
        }
    }
    assert_eq!(out["info"]["max_input_length"], 128, "{}", out["info"]);
    s.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
