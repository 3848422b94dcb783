//! The spam model on candle: numerics against PyTorch, batching invariance, and the
//! served task over HTTP. Needs the real weights (`scripts/fetch-model.sh`, which the
//! test command runs first).

use crate::common;

use std::path::{Path, PathBuf};

use celeriac::config::DeviceSpec;
use celeriac::model::fidelity::argmax;
use celeriac::model::{Kernels, Precision, TextClassifier};
use serde::Deserialize;
use serde_json::{Value, json};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/spam-minilm")
}

#[derive(Deserialize)]
struct Reference {
    text: String,
    input_ids: Vec<u32>,
    cls_hidden_first8: Vec<f32>,
    embedding: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/minilm_embeddings.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Both CPU implementations of the encoder: every numerics test runs on each.
const KERNELS: [Kernels; 2] = [Kernels::Packed, Kernels::Candle];

/// The encoder, truncating at 128 tokens as the reference does.
fn encoder(kernels: Kernels) -> TextClassifier {
    let mut m =
        TextClassifier::load_encoder_with(&model_dir(), DeviceSpec::Cpu, kernels, Precision::F32)
            .expect("weights present: run scripts/fetch-model.sh");
    m.set_max_length(128).unwrap();
    m
}

/// The embedding of one text, run alone.
fn embed_one(m: &TextClassifier, text: &str) -> Vec<f32> {
    m.embed(&[text]).unwrap().get(0).unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TOL: f32 = 1e-4;

#[test]
fn token_ids_and_embeddings_match_pytorch_one_by_one() {
    for kernels in KERNELS {
        one_by_one(kernels);
    }
}

fn one_by_one(kernels: Kernels) {
    let m = encoder(kernels);
    let refs = references();
    assert!(refs.len() >= 20);
    assert!(
        refs.iter().any(|r| r.input_ids.len() == 128),
        "the reference includes a text truncated at 128 tokens"
    );
    let mut worst = 0f32;
    for r in &refs {
        let (hidden, batch) = m.hidden(&[r.text.as_str()]).unwrap();
        assert_eq!(batch.token_ids[0], r.input_ids, "ids of {:?}", r.text);
        let cls: Vec<f32> = hidden
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .narrow(0, 0, 8)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            max_abs_diff(&cls, &r.cls_hidden_first8) < TOL,
            "{kernels:?}: cls hidden state of {:?}",
            r.text
        );
        let emb = embed_one(&m, &r.text);
        let d = max_abs_diff(&emb, &r.embedding);
        worst = worst.max(d);
        assert!(
            d < TOL,
            "{kernels:?}: embedding of {:?} differs by {d}",
            r.text
        );
    }
    println!(
        "{kernels:?}, one by one: worst |diff| {worst:.2e} over {} texts",
        refs.len()
    );
}

#[test]
fn batched_matches_pytorch_and_single_runs() {
    for kernels in KERNELS {
        batched(kernels);
    }
}

fn batched(kernels: Kernels) {
    let m = encoder(kernels);
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let (_, batch) = m.hidden(&texts).unwrap();
    let longest = refs.iter().map(|r| r.input_ids.len()).max().unwrap();
    assert_eq!(
        batch.ids.dims(),
        &[refs.len(), longest],
        "padded to the longest text in the batch, not to a fixed length"
    );
    let batched = m.embed(&texts).unwrap();
    let mut worst_vs_single = 0f32;
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(batch.token_ids[i], r.input_ids);
        let row: Vec<f32> = batched.get(i).unwrap().to_vec1().unwrap();
        let d = max_abs_diff(&row, &r.embedding);
        assert!(
            d < TOL,
            "{kernels:?}: batched embedding of {:?} differs by {d}",
            r.text
        );
        let single = embed_one(&m, &r.text);
        worst_vs_single = worst_vs_single.max(max_abs_diff(&row, &single));
    }
    assert!(
        worst_vs_single < 1e-5,
        "batched vs single: {worst_vs_single}"
    );
    println!("{kernels:?}, batched vs single: worst |diff| {worst_vs_single:.2e}");
}

#[test]
fn packed_and_candle_kernels_agree() {
    let texts: Vec<String> = references().into_iter().map(|r| r.text).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let load =
        |k| TextClassifier::load_with(&model_dir(), DeviceSpec::Cpu, k, Precision::F32).unwrap();
    let (packed, candle) = (load(Kernels::Packed), load(Kernels::Candle));
    assert!(packed.packs_batches() && !candle.packs_batches());
    let (a, b) = (
        packed.predict(&texts).unwrap(),
        candle.predict(&texts).unwrap(),
    );
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(&b) {
        worst = worst.max(max_abs_diff(x, y));
    }
    assert!(worst < 1e-5, "probabilities differ by {worst}");
    let (ea, eb) = (packed.embed(&texts).unwrap(), candle.embed(&texts).unwrap());
    let d = max_abs_diff(
        &ea.flatten_all().unwrap().to_vec1().unwrap(),
        &eb.flatten_all().unwrap().to_vec1().unwrap(),
    );
    assert!(d < 1e-5, "embeddings differ by {d}");
    println!("packed vs candle: probabilities {worst:.2e}, embeddings {d:.2e}");
}

/// Issue 15's fidelity bar for half precision on the candle kernels (the CUDA path),
/// checked here on the CPU with the same encoder code: cosine to the candle f32
/// embedding ≥ 0.999 on every one of the 1,000 bench texts, and no label flips. cuBLAS
/// sums half products in f32 and candle's CUDA softmax and layer norm sum in f32; on the
/// CPU the encoder widens softmax to f32 and candle's layer norm sums in f32, so this is
/// the GPU's arithmetic up to summation order.
///
/// Prints the fidelity table (BENCHMARKS.md quotes it).
#[test]
fn candle_half_precisions_meet_their_fidelity_bar() {
    let Some(shared) = shared_dir_or_skip("candle f16/bf16 fidelity bars") else {
        return;
    };
    let bench = bench_texts(&shared);
    let pool = two_threads();
    let rows = fidelity_rows(
        &pool,
        Kernels::Candle,
        &[Precision::F16, Precision::Bf16],
        &bench,
    );
    println!(
        "| precision (candle kernels, CPU) | cosine to f32 min / mean | label flips (of 1,000) |"
    );
    println!("|---|---|---|");
    let mut failures = Vec::new();
    for r in rows {
        println!(
            "| {} | {:.6} / {:.6} | {} |",
            r.precision, r.min_cosine, r.mean_cosine, r.flips
        );
        if r.min_cosine < 0.999 || r.flips > 0 {
            failures.push(format!("{r:?}"));
        }
    }
    assert!(failures.is_empty(), "fidelity bars missed: {failures:?}");
}

/// Which precision runs where: `auto` on the candle kernels is f32 on the CPU; f16 is
/// refused on the packed kernels and int8 on the candle kernels, each naming the
/// setting's alternatives.
#[test]
fn precisions_are_checked_against_their_kernels() {
    let load = |k, p| TextClassifier::load_with(&model_dir(), DeviceSpec::Cpu, k, p);
    assert_eq!(
        load(Kernels::Candle, Precision::Auto).unwrap().precision(),
        Precision::F32
    );
    let err = load(Kernels::Packed, Precision::F16)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("f16") && err.contains("candle"), "{err}");
    let err = load(Kernels::Candle, Precision::Int8)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("int8") && err.contains("packed"), "{err}");
    assert_eq!(
        Precision::Auto.for_kernels(Kernels::Candle, DeviceSpec::Cuda(0)),
        Ok(Precision::F16)
    );
}

#[test]
fn packed_kernels_refuse_cuda_and_bad_token_ids() {
    let err = TextClassifier::load_with(
        &model_dir(),
        DeviceSpec::Cuda(0),
        Kernels::Packed,
        Precision::F32,
    )
    .err()
    .expect("packed kernels are CPU only");
    assert!(err.to_string().contains("CPU"), "{err}");
    for k in KERNELS {
        let m =
            TextClassifier::load_with(&model_dir(), DeviceSpec::Cpu, k, Precision::F32).unwrap();
        let err = m.predict_tokens(vec![vec![101, 999_999, 102]]).unwrap_err();
        assert!(err.to_string().contains("vocabulary"), "{k:?}: {err}");
        let err = m.predict_tokens(vec![vec![101; 513]]).unwrap_err();
        assert!(err.to_string().contains("at most 512"), "{k:?}: {err}");
    }
}

#[test]
fn predictions_are_probabilities_and_batch_invariant() {
    let m = TextClassifier::load(&model_dir(), DeviceSpec::Cpu).unwrap();
    let texts = [
        "WINNER!! Claim your free prize now, txt WIN to 80082",
        "see you at 6?",
    ];
    let both = m.predict(&texts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let one = &m.predict(&[t]).unwrap()[0];
        assert!((both[i].iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(max_abs_diff(one, &both[i]) < 1e-5);
    }
    assert!(both[0][1] > 0.5, "spam: {:?}", both[0]);
    assert!(both[1][0] > 0.5, "ham: {:?}", both[1]);
}

fn spam_config() -> String {
    r#"
    [server]
    body_limit_bytes = 65536
    [pools.default]
    concurrency = 2
    intra_op_threads = 1
    [tasks."spam.predict"]
    kind = "text_classifier"
    pool = "default"
    model = "models/spam-minilm"
    "#
    .to_string()
}

/// The `count` of a histogram's series with these labels (0 when absent).
fn histogram_count(m: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.metric == format!("{name}_count"))
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Issue 15, on the CPU: a worker takes work only once it warmed its model up, on its
/// own thread (the pool actor goes on meanwhile): at every moment, the workers that are
/// live (readiness counts them) are at most the warm-ups recorded, readiness is 503
/// until one is, and both workers end up warm. The candle kernels serve a half
/// precision chosen in the config with that precision's own answers. `warm_up = false` skips it; `f16` on
/// the packed kernels and `kernels` on a kind without a model are start-up errors that
/// name the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_warm_up_before_ready_and_candle_serves_half_precision() {
    let config = |warm: bool| {
        format!(
            r#"
            [pools.warm{warm}]
            concurrency = 2
            intra_op_threads = 1
            warm_up = {warm}
            [tasks."spam.half{warm}"]
            kind = "text_classifier"
            pool = "warm{warm}"
            model = "models/spam-minilm"
            kernels = "candle"
            precision = "f16"
            "#
        )
    };
    let s = common::start_cold(&config(true)).await;
    let warmed = || async {
        histogram_count(
            &s.scrape().await,
            "celeriac_worker_warmup_seconds",
            &[("pool", "warmtrue"), ("task", "spam.halftrue")],
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut saw_warming = false;
    loop {
        // Status first, then the warm-ups: a worker records its warm-up before it is
        // live, so live <= warmed holds whatever happens in between.
        let ready = s.get("/health/ready").await;
        let live = ready.body["pools"][0]["live"].as_u64().unwrap() as f64;
        let done = warmed().await;
        assert!(
            live <= done,
            "{live} live workers, {done} warm-ups: {}",
            ready.body
        );
        assert_eq!(ready.status == 200, live >= 1.0, "{}", ready.body);
        if ready.status != 200 {
            saw_warming = true;
            let why = ready.body["reasons"].to_string();
            assert!(why.contains("warming up"), "{why}");
        }
        if done == 2.0 && live == 2.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", ready.body);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    println!("readiness was seen 503 while warming: {saw_warming}");
    let direct = TextClassifier::load_with(
        &model_dir(),
        DeviceSpec::Cpu,
        Kernels::Candle,
        Precision::F16,
    )
    .unwrap();
    let f32m = TextClassifier::load_with(
        &model_dir(),
        DeviceSpec::Cpu,
        Kernels::Candle,
        Precision::F32,
    )
    .unwrap();
    serves_its_own_precision(&s, "spam.halftrue", &direct, &f32m).await;
    s.shutdown().await;

    let s = common::start(&config(false)).await;
    let warmed = histogram_count(
        &s.scrape().await,
        "celeriac_worker_warmup_seconds",
        &[("pool", "warmfalse")],
    );
    assert_eq!(warmed, 0.0, "warm_up = false skips the warm-up");
    s.shutdown().await;

    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let packed_f16 = config(true).replace("kernels = \"candle\"", "kernels = \"packed\"");
    let config = celeriac::config::Config::from_toml(&packed_f16, dir).unwrap();
    let err = celeriac::app::App::start(config).await.err().unwrap();
    let err = format!("{err:#}");
    assert!(err.contains("f16") && err.contains("candle"), "{err}");
    let echo = "[pools.default]\n[tasks.\"e\"]\nkind = \"debug.echo\"\npool = \"default\"\nkernels = \"candle\"\n";
    let config = celeriac::config::Config::from_toml(echo, dir).unwrap();
    let err = celeriac::app::App::start(config).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("tasks.\"e\".kernels"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spam_predict_over_http() {
    let s = common::start(&spam_config()).await;
    let smoke = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spam_smoke.jsonl"),
    )
    .unwrap();
    let direct = TextClassifier::load(&model_dir(), DeviceSpec::Cpu).unwrap();
    for line in smoke.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        let r = s
            .post(
                "/v1/tasks/spam.predict?wait=10",
                &json!({"text": case["text"]}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let result = &r.body["result"];
        assert_eq!(result["label"], case["label"], "{}: {result}", case["text"]);
        let p = &result["probabilities"];
        let (ham, spam) = (p["ham"].as_f64().unwrap(), p["spam"].as_f64().unwrap());
        assert!((ham + spam - 1.0).abs() < 1e-5);
        // The served answer is the model's own answer.
        let want = &direct.predict(&[case["text"].as_str().unwrap()]).unwrap()[0];
        assert!((spam as f32 - want[1]).abs() < 1e-6);
    }

    // Bad input: a clear 422, never a panic; the server keeps serving.
    for bad in [
        json!({}),
        json!({"text": ""}),
        json!({"text": "   "}),
        json!({"text": 42}),
        json!({"text": ["a"]}),
        json!({"txt": "hello"}),
        json!("just a string"),
        json!({"text": "x".repeat(5001)}),
    ] {
        s.post("/v1/tasks/spam.predict", &bad)
            .await
            .assert_error(422, "invalid_input");
    }
    // Text over max_length tokens (but under max_chars) is truncated, as documented.
    let long = "free prize call now ".repeat(200);
    let r = s
        .post("/v1/tasks/spam.predict?wait=10", &json!({ "text": long }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "SUCCESS");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_model_is_a_startup_error_naming_it() {
    let cfg = spam_config().replace("models/spam-minilm", "models/no-such-model");
    let config =
        celeriac::config::Config::from_toml(&cfg, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    let err = celeriac::app::App::start(config).await.err().unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("spam.predict") && msg.contains("no-such-model"),
        "{msg}"
    );
}

/// The packed numerics tests again with the AVX2 kernel forced (`CELERIAC_ISA=avx2`),
/// in a child process of this test binary (the kernel is chosen once per process), on
/// machines whose default is AVX-512; where AVX2 is the default the tests above ran it.
#[test]
fn packed_numerics_hold_on_every_kernel_the_cpu_runs() {
    use celeriac::model::sgemm::{Isa, isa};
    if std::env::var_os("CELERIAC_ISA").is_some() || isa() != Some(Isa::Avx512) {
        eprintln!("default kernel {:?}: nothing more to run here", isa());
        return;
    }
    for test in [
        "token_ids_and_embeddings_match_pytorch_one_by_one",
        "batched_matches_pytorch_and_single_runs",
        "packed_and_candle_kernels_agree",
        "every_precision_meets_its_fidelity_bar",
    ] {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--test-threads", "1"])
            .env("CELERIAC_ISA", "avx2")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a kernel that hangs fails here instead of hanging CI.
        let out = common::wait_child_output(child, std::time::Duration::from_secs(900));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{test} with CELERIAC_ISA=avx2:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `../shared` (or `CELERIAC_SHARED`): the bench inputs and the SMS Spam Collection,
/// which are not committed to the project.
fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("CELERIAC_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    (dir.join("bench/inputs.jsonl").is_file() && dir.join("data/sms_spam.csv").is_file())
        .then_some(dir)
}

/// [`shared_dir`], or None after saying that `what` is not checked. Under CI (`CI` set
/// to anything but `false` or `0`, as CI services set it) a missing directory fails the
/// test instead: a bar that silently skips is a bar that no longer holds.
fn shared_dir_or_skip(what: &str) -> Option<PathBuf> {
    let dir = shared_dir();
    if dir.is_none() {
        let why = "no ../shared/bench/inputs.jsonl and ../shared/data/sms_spam.csv \
                   (set CELERIAC_SHARED to a directory holding them)";
        let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "false" | "0"));
        assert!(
            !ci,
            "{what}: {why}; CI is set, so this fails instead of skipping"
        );
        eprintln!("{what} NOT CHECKED: {why}");
    }
    dir
}

/// A rayon pool of two intra-op threads (this machine's cores) for the fidelity runs.
fn two_threads() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
}

/// `precisions` against f32 on `kernels` (CPU) over `texts`, in batches of 32, on `pool`.
fn fidelity_rows(
    pool: &rayon::ThreadPool,
    kernels: Kernels,
    precisions: &[Precision],
    texts: &[String],
) -> Vec<celeriac::model::fidelity::Fidelity> {
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (_, rows) = pool
        .install(|| {
            celeriac::model::fidelity::compare(
                &model_dir(),
                DeviceSpec::Cpu,
                kernels,
                precisions,
                &texts,
                32,
            )
        })
        .unwrap();
    rows
}

/// The 1,000 bench texts of `../shared/bench/inputs.jsonl`.
fn bench_texts(shared: &Path) -> Vec<String> {
    let bench = common::jsonl_texts(&shared.join("bench/inputs.jsonl"));
    assert_eq!(bench.len(), 1000);
    bench
}

/// Issue 13's fidelity bars, against f32 on the same kernels' machine:
/// - bf16: cosine ≥ 0.999 on every one of the 1,000 bench texts, no label flips;
/// - int8: mean cosine ≥ 0.995, minimum ≥ 0.98, at most 3 flips, held-out accuracy
///   within 0.2 points of f32's.
///
/// Prints the fidelity table (BENCHMARKS.md quotes it).
#[test]
fn every_precision_meets_its_fidelity_bar() {
    use celeriac::model::train::{load_csv, split};
    let Some(shared) = shared_dir_or_skip("fidelity bars") else {
        return;
    };
    let bench = bench_texts(&shared);
    let rows = load_csv(&shared.join("data/sms_spam.csv")).unwrap();
    // The head's held-out split (models/spam-minilm/head.json: seed 42, 30 %).
    let (_, held_out) = split(&rows, 0.3, 42);
    assert_eq!(held_out.len(), 1547);
    let pool = two_threads();
    let accuracy = |p: Precision| {
        let m =
            TextClassifier::load_with(&model_dir(), DeviceSpec::Cpu, Kernels::Packed, p).unwrap();
        pool.install(|| {
            let mut right = 0;
            for chunk in held_out.chunks(32) {
                let texts: Vec<&str> = chunk.iter().map(|r| r.text.as_str()).collect();
                let probs = m.predict(&texts).unwrap();
                for (r, p) in chunk.iter().zip(probs) {
                    right += (m.manifest.labels[argmax(&p)] == r.label) as usize;
                }
            }
            right as f64 / held_out.len() as f64
        })
    };
    let rows = fidelity_rows(
        &pool,
        Kernels::Packed,
        &[Precision::Bf16, Precision::Int8],
        &bench,
    );
    let acc32 = accuracy(Precision::F32);
    println!(
        "| precision | kernel | cosine to f32 min / mean | label flips (of 1,000) | held-out accuracy (1,547) |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| f32 | {} | 1 / 1 | 0 | {:.4} |",
        Precision::F32.kernel(),
        acc32
    );
    let mut failures = Vec::new();
    for r in rows {
        let (p, min, mean, flips) = (r.precision, r.min_cosine, r.mean_cosine, r.flips);
        let acc = accuracy(p);
        println!(
            "| {p} | {} | {min:.5} / {mean:.5} | {flips} | {acc:.4} ({:+.2} pt) |",
            p.kernel(),
            (acc - acc32) * 100.0
        );
        let ok = match p {
            Precision::Bf16 => min >= 0.999 && flips == 0,
            _ => mean >= 0.995 && min >= 0.98 && flips <= 3 && (acc - acc32).abs() <= 0.002,
        };
        if !ok {
            failures.push(format!(
                "{p}: min {min:.5} mean {mean:.5} flips {flips} accuracy {acc:.4} vs {acc32:.4}"
            ));
        }
    }
    assert!(failures.is_empty(), "fidelity bars missed: {failures:?}");
}

/// Every smoke text submitted to `task` gets the smoke label and `direct`'s own
/// probabilities (the served precision's), and at least one differs from `f32m`'s.
async fn serves_its_own_precision(
    s: &common::Server,
    task: &str,
    direct: &TextClassifier,
    f32m: &TextClassifier,
) {
    let smoke = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spam_smoke.jsonl"),
    )
    .unwrap();
    let precision = direct.precision();
    let mut differs = false;
    for line in smoke.lines() {
        let case: Value = serde_json::from_str(line).unwrap();
        let text = case["text"].as_str().unwrap();
        let r = s
            .post(
                &format!("/v1/tasks/{task}?wait=10"),
                &json!({ "text": text }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.body["result"]["label"], case["label"],
            "{precision}: {text}"
        );
        let spam = r.body["result"]["probabilities"]["spam"].as_f64().unwrap() as f32;
        let want = direct.predict(&[text]).unwrap()[0][1];
        assert!((spam - want).abs() < 1e-6, "{precision}: {spam} vs {want}");
        differs |= (spam - f32m.predict(&[text]).unwrap()[0][1]).abs() > 1e-7;
    }
    assert!(
        differs,
        "{precision} answered exactly as f32 on every smoke text"
    );
}

fn precision_config(precision: &str) -> String {
    spam_config().replace(
        "model = \"models/spam-minilm\"",
        &format!("model = \"models/spam-minilm\"\n    precision = \"{precision}\""),
    )
}

/// `precision` reaches the served model: bf16 and int8 answers are that precision's
/// own answers (not f32's), with the smoke labels; a bad value and a precision on a
/// kind without a model are start-up errors naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precision_is_served_and_checked() {
    let f32m = TextClassifier::load_with(
        &model_dir(),
        DeviceSpec::Cpu,
        Kernels::Packed,
        Precision::F32,
    )
    .unwrap();
    for precision in [Precision::Bf16, Precision::Int8] {
        let s = common::start(&precision_config(precision.as_str())).await;
        let direct =
            TextClassifier::load_with(&model_dir(), DeviceSpec::Cpu, Kernels::Packed, precision)
                .unwrap();
        serves_its_own_precision(&s, "spam.predict", &direct, &f32m).await;
        s.shutdown().await;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let err = celeriac::config::Config::from_toml(&precision_config("fp8"), dir)
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("precision"), "{err:#}");
    let echo = "[pools.default]\n[tasks.\"e\"]\nkind = \"debug.echo\"\npool = \"default\"\nprecision = \"int8\"\n";
    let config = celeriac::config::Config::from_toml(echo, dir).unwrap();
    let err = celeriac::app::App::start(config).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("tasks.\"e\".precision"),
        "{err:#}"
    );
}

/// Packed weights go through one cache file, mapped read-only: the process that packs
/// writes it and maps it, a second load maps it without packing, a changed key (another
/// precision) gets its own file, and every load computes exactly what an in-memory
/// packing computes.
#[test]
fn packed_weights_map_from_one_cache_file_with_identical_outputs() {
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use celeriac::model::bert::BertConfig;
    use celeriac::model::packed::{PackedEncoder, load_shared};
    let dir = model_dir();
    let weights = dir.join("model.safetensors");
    let config_text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: BertConfig = serde_json::from_str(&config_text).unwrap();
    let cache = std::env::temp_dir().join(format!("celeriac-packed-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let texts: Vec<Vec<u32>> = references()
        .iter()
        .take(6)
        .map(|r| r.input_ids.clone())
        .collect();
    let packs = std::sync::atomic::AtomicUsize::new(0);
    let pack = |p: Precision| {
        packs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: the weights file is not modified while mapped.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu) }
                .unwrap();
        PackedEncoder::load(vb, &config, p)
    };
    for p in [Precision::F32, Precision::Int8] {
        let in_memory = pack(p).unwrap();
        let first = load_shared(&weights, &config_text, p, Some(&cache), || pack(p)).unwrap();
        let second = load_shared(&weights, &config_text, p, Some(&cache), || pack(p)).unwrap();
        assert!(!in_memory.weights_mapped());
        assert!(first.weights_mapped() && second.weights_mapped(), "{p}");
        let want = in_memory.forward(&texts).unwrap();
        assert_eq!(first.forward(&texts).unwrap(), want, "{p}");
        assert_eq!(second.forward(&texts).unwrap(), want, "{p}");
    }
    // Two in-memory packings and one for each first load; the second loads only mapped.
    assert_eq!(packs.load(std::sync::atomic::Ordering::SeqCst), 4);
    let files: Vec<_> = std::fs::read_dir(cache.join(""))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".packed"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    // A damaged file is repacked, not trusted.
    let f32_file = cache.join(files.iter().find(|n| n.contains("-f32-")).unwrap());
    let len = std::fs::metadata(&f32_file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f32_file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let repacked = load_shared(&weights, &config_text, Precision::F32, Some(&cache), || {
        pack(Precision::F32)
    })
    .unwrap();
    assert_eq!(packs.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(
        repacked.forward(&texts).unwrap(),
        pack(Precision::F32).unwrap().forward(&texts).unwrap()
    );
    std::fs::remove_dir_all(&cache).unwrap();
}
