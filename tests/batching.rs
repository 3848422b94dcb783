//! Dynamic batching against a real server: results and order are preserved, and the
//! pool actor respects `max_batch_size`, `max_batch_delay_ms` and revocation.

use crate::common;

use std::path::Path;

use celeriac::config::DeviceSpec;
use celeriac::model::TextClassifier;
use common::start;
use serde_json::{Value, json};

fn ids_of(r: &common::Resp) -> Vec<String> {
    r.body["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.body))
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect()
}

/// (batches, jobs, largest bucket bound holding every batch) of `celeriac_batch_size`.
fn batch_stats(m: &prometheus_parse::Scrape, pool: &str) -> (f64, f64, f64) {
    let mut count = 0.0;
    let mut sum = 0.0;
    let mut le_all = f64::INFINITY;
    for s in m
        .samples
        .iter()
        .filter(|s| s.labels.get("pool") == Some(pool))
    {
        match (s.metric.as_str(), &s.value) {
            ("celeriac_batch_size_count", prometheus_parse::Value::Untyped(v))
            | ("celeriac_batch_size_count", prometheus_parse::Value::Counter(v)) => count = *v,
            ("celeriac_batch_size_sum", prometheus_parse::Value::Untyped(v))
            | ("celeriac_batch_size_sum", prometheus_parse::Value::Counter(v)) => sum = *v,
            ("celeriac_batch_size", prometheus_parse::Value::Histogram(buckets)) => {
                le_all = buckets
                    .iter()
                    .filter(|b| b.count >= buckets.last().unwrap().count)
                    .map(|b| b.less_than)
                    .fold(f64::INFINITY, f64::min);
            }
            _ => {}
        }
    }
    (count, sum, le_all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_spam_predictions_equal_single_ones_in_order() {
    let s = start(
        r#"
        [pools.batched]
        concurrency = 1
        intra_op_threads = 1
        max_batch_size = 16
        max_batch_delay_ms = 5.0
        [tasks."spam.batched"]
        kind = "text_classifier"
        pool = "batched"
        model = "models/spam-minilm"
        "#,
    )
    .await;
    let mut texts = common::jsonl_texts(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spam_smoke.jsonl"),
    );
    // Lengths from 2 to ~120 tokens, so batches are grouped and padded.
    texts.push("hi".into());
    texts.push("call me ".repeat(40));
    let mut inputs: Vec<Value> = Vec::new();
    for round in 0..4 {
        for (i, t) in texts.iter().enumerate() {
            inputs.push(json!({ "text": format!("{t} {}", (round * 7 + i) % 5) }));
        }
    }
    // One bad input inside a batch fails alone.
    inputs.insert(5, json!({ "text": "" }));
    let r = s
        .post("/v1/tasks/spam.batched/batch", &json!({ "inputs": inputs }))
        .await;
    assert_eq!(r.status, 422, "invalid inputs are refused before queueing");
    inputs.remove(5);
    let r = s
        .post("/v1/tasks/spam.batched/batch", &json!({ "inputs": inputs }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let ids = ids_of(&r);
    let model = TextClassifier::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/spam-minilm"),
        DeviceSpec::Cpu,
    )
    .unwrap();
    for (id, input) in ids.iter().zip(&inputs) {
        let v = s.wait_final(id, 30.0).await;
        assert_eq!(v["state"], "SUCCESS", "{v}");
        let text = input["text"].as_str().unwrap();
        let want = &model.predict(&[text]).unwrap()[0];
        let got = v["result"]["probabilities"]["spam"].as_f64().unwrap() as f32;
        assert!(
            (got - want[1]).abs() < 1e-5,
            "{text:?}: batched {got} vs single {}",
            want[1]
        );
    }
    let (batches, jobs, _) = batch_stats(&s.scrape().await, "batched");
    assert_eq!(jobs, inputs.len() as f64);
    assert!(
        batches < jobs,
        "jobs went out in batches: {batches} batches for {jobs} jobs"
    );
    s.shutdown().await;
}

/// `max_batch_tokens`, on the CPU path with the real model: texts queued behind a busy
/// worker go out in batches of at most 64 tokens (counted at submit, truncation
/// applied), except a text longer than the budget, which goes alone; every answer is
/// the text's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_max_batch_tokens() {
    let s = start(
        r#"
        [pools.tokens]
        concurrency = 1
        intra_op_threads = 1
        max_batch_size = 32
        max_batch_tokens = 64
        max_batch_delay_ms = 0.0
        [tasks."spam.tokens"]
        kind = "text_classifier"
        pool = "tokens"
        model = "models/spam-minilm"
        [tasks."sleep.tokens"]
        kind = "debug.sleep"
        pool = "tokens"
        "#,
    )
    .await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/spam-minilm");
    let model = TextClassifier::load(&dir, DeviceSpec::Cpu).unwrap();
    let mut texts: Vec<String> = (0..24)
        .map(|i| format!("free entry {i}: call now to claim your prize"))
        .collect();
    texts.insert(10, "please call me back when you can ".repeat(20));
    let lengths: Vec<usize> = texts
        .iter()
        .map(|t| model.token_ids(t).unwrap().len())
        .collect();
    assert!(lengths[10] > 64 && lengths.iter().filter(|&&l| l > 64).count() == 1);
    // Hold the only worker so the texts queue up behind it (1.5 s: long enough that
    // `wait_started` sees it running on a loaded machine).
    let blocker = s.submit("sleep.tokens", json!({"ms": 1500})).await;
    assert!(s.wait_started(&blocker).await);
    let inputs: Vec<Value> = texts.iter().map(|t| json!({ "text": t })).collect();
    let r = s
        .post("/v1/tasks/spam.tokens/batch", &json!({ "inputs": inputs }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    for (id, text) in ids_of(&r).iter().zip(&texts) {
        let v = s.wait_final(id, 30.0).await;
        assert_eq!(v["state"], "SUCCESS", "{v}");
        let got = v["result"]["probabilities"]["spam"].as_f64().unwrap() as f32;
        let want = model.predict(&[text]).unwrap()[0][1];
        assert!((got - want).abs() < 1e-5, "{text:?}: {got} vs {want}");
    }
    // Per batch: real tokens (`celeriac_batch_tokens`), bucketed.
    let m = s.scrape().await;
    let buckets = m
        .samples
        .iter()
        .find(|x| x.metric == "celeriac_batch_tokens" && x.labels.get("pool") == Some("tokens"))
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(b) => b.clone(),
            v => panic!("{v:?}"),
        })
        .expect("celeriac_batch_tokens is exported");
    let at_most = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
    let batches = buckets.last().unwrap().count;
    assert_eq!(
        batches - at_most(64.0),
        1.0,
        "only the long text's batch passed 64 tokens: {buckets:?}"
    );
    let short: usize = lengths.iter().filter(|&&l| l <= 64).sum();
    let per_batch = 64 / lengths[0];
    assert!(
        batches >= (short as f64 / 64.0).ceil() + 1.0 && per_batch > 1,
        "{batches} batches for {short} short tokens"
    );
    assert!(
        batches < texts.len() as f64,
        "the texts went out in batches ({batches} for {})",
        texts.len()
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_max_batch_size() {
    let s = start(
        &common::debug_config(
            "concurrency = 1\nmax_batch_size = 4\nmax_batch_delay_ms = 0.0",
            "",
        )
        .replace("[pools.p]", "[pools.maxb]")
        .replace("pool = \"p\"", "pool = \"maxb\""),
    )
    .await;
    // Hold the only worker so 30 echos queue up behind it (1.5 s: long enough that
    // `wait_started` sees it running on a loaded machine).
    let blocker = s.submit("debug.sleep", json!({"ms": 1500})).await;
    assert!(s.wait_started(&blocker).await);
    let inputs: Vec<Value> = (0..30).map(|i| json!(i)).collect();
    let r = s
        .post("/v1/tasks/debug.echo/batch", &json!({ "inputs": inputs }))
        .await;
    let ids = ids_of(&r);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            s.wait_final(id, 10.0).await["result"],
            json!(i),
            "order kept"
        );
    }
    let (batches, jobs, le_all) = batch_stats(&s.scrape().await, "maxb");
    assert_eq!(jobs, 31.0, "30 echos and the sleep");
    assert!(
        le_all <= 4.0,
        "every batch holds at most 4 jobs (bucket {le_all})"
    );
    assert!(
        batches <= 1.0 + 30.0 / 4.0 + 1.0,
        "{batches} batches: queued echos were batched"
    );
    s.shutdown().await;
}

/// With a batch delay far longer than any wait below (30 s), each rule shows as an
/// order of events on the server's own clock, not as a duration a loaded machine could
/// stretch: an idle pool answers at once; a short queue behind a busy worker waits for it
/// (not for the delay), and a job revoked meanwhile never runs; a full batch goes while
/// the other worker is still busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_delay_waits_only_while_the_pool_is_busy_and_skips_revoked_jobs() {
    let s = start(
        &common::debug_config(
            "concurrency = 2\nmax_batch_size = 8\nmax_batch_delay_ms = 30000.0",
            "",
        )
        .replace("[pools.p]", "[pools.delay]")
        .replace("pool = \"p\"", "pool = \"delay\""),
    )
    .await;
    let at = |v: &Value, k: &str| {
        humantime::parse_rfc3339(v[k].as_str().unwrap_or_else(|| panic!("{k}: {v}"))).unwrap()
    };
    // An idle pool never waits to fill a batch: done well within the 30 s delay.
    let v = s
        .post("/v1/tasks/debug.echo?wait=10", &json!("alone"))
        .await
        .body;
    assert_eq!(v["state"], "SUCCESS", "idle pool: no batch delay ({v})");

    // One worker busy: a short queue waits for the batch to fill...
    let blocker = s.submit("debug.sleep", json!({"ms": 1500})).await;
    assert!(s.wait_started(&blocker).await);
    let r = s
        .post("/v1/tasks/debug.echo/batch", &json!({"inputs": [1, 2, 3]}))
        .await;
    let ids = ids_of(&r);
    // ...during which a queued job can still be revoked, and is skipped.
    let revoked = s.delete(&format!("/v1/tasks/{}", ids[1])).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let a = s.wait_final(&ids[0], 10.0).await;
    let c = s.wait_final(&ids[2], 10.0).await;
    assert_eq!(
        (a["result"].clone(), c["result"].clone()),
        (json!(1), json!(3))
    );
    // The second worker was idle all along: the batch waited, and went when the busy
    // worker finished (the pool no longer busy), long before the delay.
    let blocker = s.wait_final(&blocker, 10.0).await;
    assert!(
        at(&a, "started_at") >= at(&blocker, "finished_at"),
        "waited for the batch to fill: {a} vs {blocker}"
    );
    let b = s.get(&format!("/v1/tasks/{}", ids[1])).await.body;
    assert_eq!(b["state"], "REVOKED");
    assert!(
        b.get("started_at").is_none(),
        "a revoked job never runs: {b}"
    );

    // A full batch goes at once, without the delay, while the other worker is busy.
    let blocker = s.submit("debug.sleep", json!({"ms": 1500})).await;
    assert!(s.wait_started(&blocker).await);
    let inputs: Vec<Value> = (0..8).map(|i| json!(i)).collect();
    let r = s
        .post("/v1/tasks/debug.echo/batch", &json!({ "inputs": inputs }))
        .await;
    let blocker = s.wait_final(&blocker, 10.0).await;
    for id in ids_of(&r) {
        let v = s.wait_final(&id, 10.0).await;
        assert_eq!(v["state"], "SUCCESS", "{v}");
        assert!(
            at(&v, "started_at") < at(&blocker, "finished_at"),
            "a full batch waits for nothing: {v} vs {blocker}"
        );
    }
    s.shutdown().await;
}
