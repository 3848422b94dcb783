//! Fidelity of the checkpoint task kinds against PyTorch `transformers`, per
//! architecture and kind, on the tiny random checkpoints of tests/data/tiny (made with
//! scripts/make-tiny-models.py, which also wrote PyTorch's answers to expected.json):
//! logits and embeddings within 1e-4 in f32, labels equal, rerank order equal, entity
//! groups and spans equal. Also: bf16 and int8 on the packed kernels, text pairs, a
//! batch equal to one by one, and the start-up errors.

use std::path::{Path, PathBuf};

use celeriac::config::DeviceSpec;
use celeriac::model::Precision;
use celeriac::model::family::Seq;
use celeriac::model::hf::Checkpoint;
use celeriac::model::served::{HeadKind, Overrides, ServedModel};
use serde_json::Value;

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tiny")
        .join(name)
}

fn expected() -> Value {
    let text =
        std::fs::read_to_string(tiny("expected.json")).expect("tests/data/tiny/expected.json");
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str, kind: HeadKind, precision: Precision) -> ServedModel {
    ServedModel::open(
        &tiny(name),
        name,
        kind,
        DeviceSpec::Cpu,
        None,
        precision,
        Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn seqs(model: &ServedModel, texts: &[(&str, Option<&str>)]) -> Vec<Seq> {
    texts
        .iter()
        .map(|(t, p)| model.seq(&model.encode(t, *p).unwrap()))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn texts(e: &Value, key: &str) -> Vec<String> {
    e[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The label PyTorch chose must be ours, unless PyTorch's top two are within `tie`.
fn assert_label(name: &str, i: usize, ours: &[f32], theirs: &[f32], tie: f32) {
    let arg = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    let mut sorted = theirs.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    if sorted.len() < 2 || sorted[0] - sorted[1] > tie {
        assert_eq!(arg(ours), arg(theirs), "{name} text {i}: label differs");
    }
}

const CLASSIFIERS: &[&str] = &[
    "bert-cls",
    "bert-multilabel",
    "distilbert-cls",
    "roberta-cls",
    "xlmr-cls",
    "deberta-cls",
    "modernbert-cls",
];

#[test]
fn sequence_classifiers_match_pytorch_in_f32() {
    let e = expected();
    let all = texts(&e, "texts");
    let pairs: Vec<(String, String)> = e["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in CLASSIFIERS {
        let want = &e["models"][name];
        let model = load(name, HeadKind::Sequence, Precision::F32);
        assert_eq!(model.info.precision, Precision::F32);
        // One by one.
        let mut worst = 0f32;
        for (i, t) in all.iter().enumerate() {
            let got = model.predict(&seqs(&model, &[(t, None)])).unwrap();
            let theirs = floats(&want["logits"][i]);
            worst = worst.max(max_diff(&got[0], &theirs));
            assert_label(name, i, &got[0], &theirs, 1e-3);
        }
        assert!(worst < 1e-4, "{name}: logits differ by {worst}");
        // As one batch: the same answers.
        let batch: Vec<(&str, Option<&str>)> = all.iter().map(|t| (t.as_str(), None)).collect();
        let got = model.predict(&seqs(&model, &batch)).unwrap();
        for (i, row) in got.iter().enumerate() {
            let d = max_diff(row, &floats(&want["batch_logits"][i]));
            assert!(d < 1e-4, "{name} batch text {i}: {d}");
        }
        // Text pairs (token types where the family has them).
        for (i, (a, b)) in pairs.iter().enumerate() {
            let got = model.predict(&seqs(&model, &[(a, Some(b))])).unwrap();
            let d = max_diff(&got[0], &floats(&want["pair_logits"][i]));
            assert!(d < 1e-4, "{name} pair {i}: {d}");
        }
        let labels: Vec<String> = want["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert!(labels.iter().all(|l| model.info.labels.contains(l)));
        // Token types as transformers' tokenizer class gives them: BERT's and DeBERTa's.
        assert_eq!(
            model.info.token_types,
            matches!(*name, "bert-cls" | "bert-multilabel" | "deberta-cls"),
            "{name}: token types"
        );
        assert_eq!(
            model.info.multi_label,
            *name == "bert-multilabel",
            "{name}: problem_type"
        );
        eprintln!("{name}: worst logit difference {worst:.2e}");
    }
}

#[test]
fn packed_families_run_bf16_and_int8_close_to_f32() {
    let e = expected();
    let all = texts(&e, "texts");
    let batch: Vec<(&str, Option<&str>)> = all.iter().map(|t| (t.as_str(), None)).collect();
    for name in ["bert-cls", "distilbert-cls", "roberta-cls", "xlmr-cls"] {
        let f32_model = load(name, HeadKind::Sequence, Precision::F32);
        let reference = f32_model.predict(&seqs(&f32_model, &batch)).unwrap();
        for precision in [Precision::Bf16, Precision::Int8] {
            let model = load(name, HeadKind::Sequence, precision);
            assert_eq!(model.info.precision, precision);
            let got = model.predict(&seqs(&model, &batch)).unwrap();
            let (mut worst, mut agree) = (0f32, 0);
            for (g, r) in got.iter().zip(&reference) {
                let (pg, pr) = (
                    celeriac::model::heads::softmax(g),
                    celeriac::model::heads::softmax(r),
                );
                worst = worst.max(max_diff(&pg, &pr));
                let arg = |v: &[f32]| {
                    v.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .unwrap()
                        .0
                };
                agree += usize::from(arg(&pg) == arg(&pr));
            }
            eprintln!(
                "{name} {precision}: worst probability difference {worst:.4}, labels {agree}/20"
            );
            assert!(
                worst < 0.05,
                "{name} {precision}: probabilities differ by {worst}"
            );
            assert!(
                agree >= 18,
                "{name} {precision}: {agree}/20 labels agree with f32"
            );
        }
    }
}

#[test]
fn embeddings_match_sentence_transformers_pooling() {
    let e = expected();
    let all = texts(&e, "texts");
    for name in ["bert-embed", "xlmr-embed", "distilbert-embed"] {
        let want = &e["models"][name];
        let model = load(name, HeadKind::Pooled, Precision::F32);
        assert_eq!(model.info.pooling, want["pooling"].as_str());
        assert_eq!(model.info.normalize, want["normalize"].as_bool());
        let batch: Vec<(&str, Option<&str>)> = all.iter().map(|t| (t.as_str(), None)).collect();
        let got = model.embed(&seqs(&model, &batch)).unwrap();
        for (i, g) in got.iter().enumerate() {
            let theirs = floats(&want["embeddings"][i]);
            let d = max_diff(g, &theirs);
            let dot: f32 = g.iter().zip(&theirs).map(|(a, b)| a * b).sum();
            let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
            let cos = dot / (n(g) * n(&theirs));
            assert!(
                d < 1e-4 && cos > 0.99999,
                "{name} text {i}: diff {d}, cosine {cos}"
            );
        }
    }
    // Overrides: Matryoshka truncation, then normalisation.
    let model = ServedModel::open(
        &tiny("xlmr-embed"),
        "xlmr-embed",
        HeadKind::Pooled,
        DeviceSpec::Cpu,
        None,
        Precision::F32,
        Overrides {
            normalize: Some(true),
            dimensions: Some(8),
            max_length: None,
        },
    )
    .unwrap();
    let got = model.embed(&seqs(&model, &[(&all[0], None)])).unwrap();
    let full = &e["models"]["xlmr-embed"]["embeddings"][0];
    let mut want: Vec<f32> = floats(full)[..8].to_vec();
    let n = want.iter().map(|a| a * a).sum::<f32>().sqrt();
    want.iter_mut().for_each(|a| *a /= n);
    assert!(max_diff(&got[0], &want) < 1e-4);
}

#[test]
fn reranker_matches_the_cross_encoder() {
    let e = expected();
    let want = &e["models"]["bert-rerank"];
    let model = load("bert-rerank", HeadKind::Sequence, Precision::F32);
    let query = e["query"].as_str().unwrap();
    let docs = texts(&e, "documents");
    let pairs: Vec<(&str, Option<&str>)> = docs.iter().map(|d| (query, Some(d.as_str()))).collect();
    let got = model.predict(&seqs(&model, &pairs)).unwrap();
    let logits: Vec<f32> = got.iter().map(|r| r[0]).collect();
    assert!(max_diff(&logits, &floats(&want["logits"])) < 1e-4);
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let theirs: Vec<usize> = want["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(order, theirs);
}

#[test]
fn token_classifiers_match_the_pipeline() {
    use celeriac::task::checkpoint::{Kind, Outputs, TokenClassifier};
    let e = expected();
    let all = texts(&e, "texts");
    // The packed kernels' families, and candle-transformers' (DeBERTa-v2, ModernBERT).
    for name in ["bert-ner", "xlmr-ner", "deberta-ner", "modernbert-ner"] {
        let want = &e["models"][name];
        let model = load(name, HeadKind::Tokens, Precision::F32);
        let (mut groups, mut worst) = (0, 0f32);
        for (i, t) in all.iter().enumerate() {
            let enc = model.encode(t, None).unwrap();
            let logits = model.predict_tokens(&[model.seq(&enc)]).unwrap();
            let input = serde_json::json!({ "text": t });
            let answer = TokenClassifier::answer(&model, &input, &[enc], Outputs::Tokens(logits));
            let ours = answer["entities"].as_array().unwrap();
            let theirs = want["entities"][i].as_array().unwrap();
            let key = |v: &Value| {
                (
                    v["entity_group"].as_str().unwrap().to_string(),
                    v["word"].as_str().unwrap().to_string(),
                    v["start"].as_u64().unwrap(),
                    v["end"].as_u64().unwrap(),
                )
            };
            assert_eq!(
                ours.iter().map(key).collect::<Vec<_>>(),
                theirs.iter().map(key).collect::<Vec<_>>(),
                "{name} text {i}: {t:?}"
            );
            for (a, b) in ours.iter().zip(theirs) {
                worst = worst.max(
                    (a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() as f32,
                );
            }
            groups += ours.len();
        }
        assert!(
            groups > 20,
            "{name}: only {groups} entities: the test would prove little"
        );
        assert!(worst < 1e-4, "{name}: scores differ by {worst}");
    }
}

#[test]
fn unsupported_model_types_are_refused_with_the_supported_list() {
    let dir = std::env::temp_dir().join(format!("celeriac-gpt2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let err = Checkpoint::open(&dir)
        .err()
        .expect("gpt2 is refused")
        .to_string();
    assert!(err.contains("model_type `gpt2` is not supported"), "{err}");
    for t in celeriac::model::hf::SUPPORTED {
        assert!(err.contains(t), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // A checkpoint without labels cannot be a classifier; a bare encoder cannot rerank.
    let err = ServedModel::open(
        &tiny("bert-embed"),
        "bert-embed",
        HeadKind::Sequence,
        DeviceSpec::Cpu,
        None,
        Precision::F32,
        Overrides::default(),
    )
    .err()
    .expect("no head");
    assert!(
        err.to_string().contains("ForSequenceClassification"),
        "{err}"
    );
    // Precisions the candle families do not have.
    let err = ServedModel::open(
        &tiny("deberta-cls"),
        "deberta-cls",
        HeadKind::Sequence,
        DeviceSpec::Cpu,
        None,
        Precision::Int8,
        Overrides::default(),
    )
    .err()
    .expect("int8 deberta");
    assert!(err.to_string().contains("f32"), "{err}");
}
