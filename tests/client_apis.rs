//! The client APIs (OpenAI's `/v1/embeddings`, TEI's `/embed`, `/rerank`, `/predict`,
//! `/info`) through the real server on a port, with the tiny checkpoints of
//! tests/data/tiny: the real `openai` and `huggingface_hub` clients (the test venv,
//! scripts/test-deps.sh) get the answers `/v1/tasks` gives for the same inputs; errors
//! come in each API's shape and status; a request that goes away leaves no queued
//! work; API keys guard the task and client routes and nothing else.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::broker::run_python;
use common::{Resp, Server, start, wait_until};
use serde_json::{Value, json};

fn tiny(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tiny")
        .join(name)
        .display()
        .to_string()
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(tiny("expected.json")).unwrap()).unwrap()
}

/// `[server]` with `server`, one pool `m` with `pool`, the tasks `(name, kind, model)`,
/// and `extra` TOML at the end.
fn config(server: &str, pool: &str, tasks: &[(&str, &str, &str)], extra: &str) -> String {
    let mut c = format!("[server]\n{server}\n[pools.m]\n{pool}\n");
    for (name, kind, model) in tasks {
        c.push_str(&format!(
            "[tasks.\"{name}\"]\nkind = \"{kind}\"\npool = \"m\"\n"
        ));
        if !model.is_empty() {
            c.push_str(&format!(
                "model = \"{}\"\nprecision = \"f32\"\n",
                tiny(model)
            ));
        }
    }
    c + extra
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

async fn post_key(s: &Server, path: &str, body: &Value, key: Option<&str>) -> Resp {
    let mut req = s.client.post(format!("{}{path}", s.url)).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    Resp::from_response(req.send().await.unwrap()).await
}

/// The `/v1/tasks` answer of `task` for `input`.
async fn task_answer(s: &Server, task: &str, input: Value) -> Value {
    let id = s.submit(task, input).await;
    let view = s.wait_final(&id, 30.0).await;
    assert_eq!(view["state"], "SUCCESS", "{view}");
    view["result"].clone()
}

/// A sample of `name` with the labels given, 0 when absent. The metrics are the
/// process's: each test names its tasks apart.
fn sample(m: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
}

const CLIENTS: &str = r#"
import base64, json, struct, sys
import openai
from huggingface_hub import InferenceClient

url, texts = sys.argv[1], json.loads(sys.argv[2])
out = {}
client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
r = client.embeddings.create(model="t.embed", input=texts, encoding_format="float")
out["float"] = [d.embedding for d in r.data]
out["index"] = [d.index for d in r.data]
out["model"] = r.model
out["usage"] = [r.usage.prompt_tokens, r.usage.total_tokens]
# No encoding_format: the client asks for base64 and decodes it itself.
r = client.embeddings.create(model="t.embed", input=texts)
out["client_decoded"] = [list(d.embedding) for d in r.data]
# base64 by hand: the raw string as sent.
raw = client.embeddings.with_raw_response.create(model="t.embed", input=texts[:2], encoding_format="base64")
body = json.loads(raw.http_response.text)
out["base64"] = [list(struct.unpack("<%df" % (len(base64.b64decode(d["embedding"])) // 4),
                                    base64.b64decode(d["embedding"]))) for d in body["data"]]
out["one"] = client.embeddings.create(model="t.embed", input=texts[0], encoding_format="float").data[0].embedding
out["dims"] = client.embeddings.create(model="t.embed", input=texts[0], encoding_format="float", dimensions=8).data[0].embedding
try:
    client.embeddings.create(model="t.embed", input="")
    out["empty"] = "no error"
except openai.BadRequestError as e:
    out["empty"] = [e.status_code, e.body]

tei = InferenceClient(base_url=url + "/embed")
out["feature_extraction"] = tei.feature_extraction(texts[0]).tolist()
out["feature_extraction_many"] = tei.feature_extraction(texts[:3]).tolist()
cls = InferenceClient(base_url=url + "/predict")
top = cls.text_classification(texts[0])
top = top if isinstance(top, list) else [top]
out["text_classification"] = [[p.label, p.score] for p in top]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_clients_get_the_task_answers() {
    let exp = expected();
    let texts: Vec<String> = exp["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let s = start(&config(
        "max_wait_seconds = 30.0",
        "concurrency = 1\nmax_batch_size = 8",
        &[
            ("t.embed", "embeddings", "bert-embed"),
            ("t.rerank", "reranker", "bert-rerank"),
            ("t.cls", "text_classifier", "bert-cls"),
        ],
        "",
    ))
    .await;

    // /v1/tasks answers, the reference.
    let mut theirs = Vec::new();
    for t in &texts {
        theirs.push(task_answer(&s, "t.embed", json!({ "text": t })).await);
    }

    let out: Value =
        serde_json::from_str(&run_python(CLIENTS, &[&s.url, &json!(texts).to_string()])).unwrap();

    // Inputs that ran in one batch sum in another order than one input alone: equal
    // to /v1/tasks' within float error; an input that ran alone gives the same numbers.
    let close = |a: &Value, b: &Value, what: &str| {
        let (a, b) = (floats(a), floats(b));
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "{what}: {x} vs {y}"
            );
        }
    };
    // openai, float: /v1/tasks' vectors, in order, with the real token count.
    let float = out["float"].as_array().unwrap();
    assert_eq!(float.len(), texts.len());
    for (i, v) in float.iter().enumerate() {
        close(v, &theirs[i]["embedding"], &format!("text {i}"));
    }
    assert_eq!(out["index"], json!((0..texts.len()).collect::<Vec<_>>()));
    assert_eq!(out["model"], "t.embed");
    let tokens: u64 = theirs.iter().map(|a| a["tokens"].as_u64().unwrap()).sum();
    assert!(tokens > texts.len() as u64 * 2, "{tokens}");
    assert_eq!(out["usage"], json!([tokens, tokens]));
    // PyTorch's vectors, as the task's are checked.
    let want = &exp["models"]["bert-embed"]["embeddings"];
    for (i, v) in float.iter().enumerate() {
        let (a, b) = (floats(v), floats(&want[i]));
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(dot / (n(&a) * n(&b)) >= 0.9999, "text {i}");
    }
    // base64: the little-endian f32 of the same vectors.
    for (i, v) in out["base64"].as_array().unwrap().iter().enumerate() {
        close(v, &theirs[i]["embedding"], &format!("base64 {i}"));
    }
    for (i, v) in out["client_decoded"].as_array().unwrap().iter().enumerate() {
        close(v, &theirs[i]["embedding"], &format!("client-decoded {i}"));
    }
    // One input, alone as the reference ran: the same numbers.
    assert_eq!(floats(&out["one"]), floats(&theirs[0]["embedding"]));
    // dimensions: the first 8 values, made unit length again as the task's vectors are
    // (bert-embed has a Normalize module).
    let full = floats(&theirs[0]["embedding"]);
    assert!((full.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    let n8 = full[..8].iter().map(|x| x * x).sum::<f64>().sqrt();
    let first8: Vec<f64> = full[..8].iter().map(|x| x / n8).collect();
    close(&out["dims"], &json!(first8), "dimensions");
    assert_eq!(out["empty"][0], 400, "{}", out["empty"]);
    assert_eq!(out["empty"][1]["param"], "input", "{}", out["empty"]);

    // huggingface_hub against /embed: TEI normalises by default.
    let unit = |v: &Value| {
        let v = floats(v);
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        json!(v.iter().map(|x| x / n).collect::<Vec<_>>())
    };
    let fe = &out["feature_extraction"];
    let fe = if fe[0].is_array() { &fe[0] } else { fe };
    close(fe, &unit(&theirs[0]["embedding"]), "feature_extraction");
    let many = out["feature_extraction_many"].as_array().unwrap();
    assert_eq!(many.len(), 3);
    for (i, v) in many.iter().enumerate() {
        close(
            v,
            &unit(&theirs[i]["embedding"]),
            &format!("feature_extraction {i}"),
        );
    }
    // /embed without normalising: the task's vectors.
    let r = s
        .post("/embed", &json!({"inputs": texts[..2], "normalize": false}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (i, t) in theirs.iter().take(2).enumerate() {
        close(&r.body[i], &t["embedding"], &format!("/embed {i}"));
    }
    let r = s
        .post("/embed", &json!({"inputs": texts[3], "normalize": false}))
        .await;
    assert_eq!(floats(&r.body[0]), floats(&theirs[3]["embedding"]));

    // huggingface_hub's text_classification against /predict: the task's best label.
    let cls = task_answer(&s, "t.cls", json!({ "text": texts[0] })).await;
    let top = &out["text_classification"][0];
    assert_eq!(top[0], cls["label"], "{}", out["text_classification"]);
    let p = cls["probabilities"][cls["label"].as_str().unwrap()]
        .as_f64()
        .unwrap();
    assert!((top[1].as_f64().unwrap() - p).abs() < 1e-6);

    // /predict: one text, a pair, a batch; raw scores are the logits.
    let r = s.post("/predict", &json!({"inputs": texts[1]})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cls1 = task_answer(&s, "t.cls", json!({ "text": texts[1] })).await;
    let preds = r.body.as_array().unwrap();
    assert_eq!(preds.len(), 3);
    assert_eq!(preds[0]["label"], cls1["label"]);
    for p in preds {
        let want = cls1["probabilities"][p["label"].as_str().unwrap()]
            .as_f64()
            .unwrap();
        assert!((p["score"].as_f64().unwrap() - want).abs() < 1e-6);
    }
    let pair = &exp["pairs"][0];
    let r = s
        .post(
            "/predict",
            &json!({"inputs": [pair[0], pair[1]], "raw_scores": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let logits = floats(&exp["models"]["bert-cls"]["pair_logits"][0]);
    let labels = ["negative", "neutral", "positive"];
    for p in r.body.as_array().unwrap() {
        let j = labels.iter().position(|l| *l == p["label"]).unwrap();
        assert!(
            (p["score"].as_f64().unwrap() - logits[j]).abs() < 1e-3,
            "{p}"
        );
    }
    let r = s
        .post(
            "/predict",
            &json!({"inputs": [[texts[0]], [pair[0], pair[1]], [texts[2]]]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_array().unwrap().len(), 3);
    assert_eq!(r.body[0][0]["label"], cls["label"]);

    // /rerank: the reranker task's order and scores, with the texts when asked.
    let docs = exp["documents"].clone();
    let ranked = task_answer(
        &s,
        "t.rerank",
        json!({"query": exp["query"], "documents": docs}),
    )
    .await;
    let r = s
        .post(
            "/rerank",
            &json!({"query": exp["query"], "texts": docs, "return_text": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ours = r.body.as_array().unwrap();
    let want = ranked["results"].as_array().unwrap();
    assert_eq!(ours.len(), want.len());
    for (a, b) in ours.iter().zip(want) {
        assert_eq!(a["index"], b["index"]);
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-6);
        assert_eq!(a["text"], docs[a["index"].as_u64().unwrap() as usize]);
    }

    // /info: the /embed task's model and limits; /v1/models in both shapes.
    let r = s.get("/info").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let models = s.get("/v1/models").await;
    let embed = models.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["task"] == "t.embed")
        .unwrap()
        .clone();
    assert_eq!(r.body["max_input_length"], embed["model"]["max_length"]);
    assert_eq!(r.body["task"], "t.embed");
    assert!(
        r.body["model_type"]["embedding"]["pooling"].is_string(),
        "{}",
        r.body
    );
    assert_eq!(r.body["max_batch_requests"], 8);
    assert_eq!(models.body["object"], "list");
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t.cls", "t.embed", "t.rerank"]);
    assert_eq!(models.body["data"][0]["object"], "model");

    // Every input ran as one task, counted as tasks are: 20 references, 20 + 20 + 2
    // through openai, 1 + 1 more, 1 + 3 through huggingface_hub, 2 + 1 through /embed.
    let m = s.scrape().await;
    let embed = [("task", "t.embed")];
    let done = sample(
        &m,
        "celeriac_tasks_finished_total",
        &[("task", "t.embed"), ("state", "SUCCESS")],
    );
    assert_eq!(done, 71.0);
    assert_eq!(sample(&m, "celeriac_tasks_submitted_total", &embed), 71.0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_in_each_apis_shape() {
    let s = start(&config(
        "max_wait_seconds = 30.0",
        "concurrency = 1\nqueue_capacity = 2",
        &[
            ("e.embed", "embeddings", "bert-embed"),
            ("debug.sleep", "debug.sleep", ""),
        ],
        "",
    ))
    .await;
    let tei = |r: &Resp, status: u16, kind: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.body["error_type"], kind, "{}", r.body);
        assert!(
            r.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}",
            r.body
        );
    };
    let openai = |r: &Resp, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let e = &r.body["error"];
        assert_eq!(e["code"], code, "{}", r.body);
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            r.body
        );
        assert!(
            e["type"].is_string() && e.get("param").is_some(),
            "{}",
            r.body
        );
    };

    // 429: three inputs never fit a queue of two: all or none, nothing queued.
    let three = json!(["a", "b", "c"]);
    let r = s.post("/embed", &json!({ "inputs": three })).await;
    tei(&r, 429, "overloaded");
    assert_eq!(r.headers["retry-after"], "1");
    let r = s
        .post(
            "/v1/embeddings",
            &json!({"input": three, "model": "e.embed"}),
        )
        .await;
    openai(&r, 429, "rate_limit_exceeded");
    assert_eq!(r.body["error"]["type"], "rate_limit_error");
    let m = s.scrape().await;
    assert_eq!(
        sample(&m, "celeriac_tasks_submitted_total", &[("task", "e.embed")]),
        0.0
    );
    // Two fit.
    let r = s.post("/embed", &json!({"inputs": ["a", "b"]})).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // 413: more inputs than one request may hold.
    let many: Vec<String> = (0..1025).map(|i| format!("t{i}")).collect();
    tei(
        &s.post("/embed", &json!({ "inputs": many })).await,
        413,
        "validation",
    );
    openai(
        &s.post(
            "/v1/embeddings",
            &json!({"input": many, "model": "e.embed"}),
        )
        .await,
        400,
        "too_many_inputs",
    );

    // 422 (TEI) and 400 (OpenAI): what the task or the route refuses.
    tei(
        &s.post("/embed", &json!({"inputs": ""})).await,
        422,
        "validation",
    );
    tei(
        &s.post("/embed", &json!({"inputs": 3})).await,
        422,
        "validation",
    );
    tei(
        &s.post("/embed", &json!({"inputs": "a", "dimensions": 999}))
            .await,
        422,
        "validation",
    );
    let r = s
        .post(
            "/v1/embeddings",
            &json!({"input": ["ok", " "], "model": "e.embed"}),
        )
        .await;
    openai(&r, 400, "invalid_input");
    assert_eq!(r.body["error"]["param"], "input");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("inputs[1]")
    );
    openai(
        &s.post("/v1/embeddings", &json!({"input": "a"})).await,
        400,
        "invalid_body",
    );
    openai(
        &s.post(
            "/v1/embeddings",
            &json!({"input": "a", "model": "e.embed", "dimensions": 0}),
        )
        .await,
        400,
        "invalid_value",
    );
    let r = s
        .client
        .post(format!("{}/v1/embeddings", s.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    openai(&Resp::from_response(r).await, 400, "invalid_json");
    // A model that is no task: the only embeddings task answers, and says so.
    let r = s
        .post(
            "/v1/embeddings",
            &json!({"input": "a", "model": "text-embedding-3-small"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["model"], "e.embed");
    // Token ids of the model's vocabulary; one out of it is refused.
    let r = s
        .post(
            "/v1/embeddings",
            &json!({"input": [[5, 6, 7], [8]], "model": "e.embed"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    openai(
        &s.post(
            "/v1/embeddings",
            &json!({"input": [99999999], "model": "e.embed"}),
        )
        .await,
        400,
        "invalid_input",
    );

    // 404: no task of the kind.
    tei(
        &s.post("/rerank", &json!({"query": "q", "texts": ["a"]}))
            .await,
        404,
        "not_served",
    );
    tei(
        &s.post("/predict", &json!({"inputs": "a"})).await,
        404,
        "not_served",
    );

    s.shutdown().await;
}

/// A server whose one worker (pool `m`, one worker) is busy sleeping, with `task` an
/// embeddings task behind it; `max_wait` is `server.max_wait_seconds`.
async fn busy_server(task: &str, max_wait: f64, sleep_ms: u64) -> Server {
    let s = start(&config(
        &format!("max_wait_seconds = {max_wait}"),
        "concurrency = 1",
        &[
            (task, "embeddings", "bert-embed"),
            ("debug.sleep", "debug.sleep", ""),
        ],
        "",
    ))
    .await;
    let sleeper = s.submit("debug.sleep", json!({ "ms": sleep_ms })).await;
    assert!(s.wait_started(&sleeper).await);
    s
}

/// Waits (at most 5 s) until `task` has `n` revoked tasks.
async fn revoked(s: &Server, task: &str, n: f64) -> bool {
    wait_until(Duration::from_secs(5), || async {
        let m = s.scrape().await;
        sample(
            &m,
            "celeriac_tasks_finished_total",
            &[("task", task), ("state", "REVOKED")],
        ) == n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_too_long_leaves_no_work() {
    // The worker sleeps 4 s; the route waits at most 1 s.
    let s = busy_server("late.embed", 1.0, 4000).await;
    let r = s
        .post("/embed", &json!({"inputs": ["late", "later"]}))
        .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.body["error_type"], "timeout", "{}", r.body);
    assert!(
        revoked(&s, "late.embed", 2.0).await,
        "the timed-out request's tasks were not revoked"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_leaves_no_work() {
    // The worker sleeps 8 s, longer than the 5 s the revoke is waited for; the route
    // would wait 30 s: only the client going away revokes the task in time.
    let s = busy_server("gone.embed", 30.0, 8000).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/v1/embeddings", s.url))
        .json(&json!({"input": ["nobody", "waits"], "model": "gone.embed"}))
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the request should have timed out on the client"
    );
    assert!(
        revoked(&s, "gone.embed", 2.0).await,
        "the abandoned request's tasks were not revoked"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_task_and_client_routes_only() {
    let s = start(&common::with_admin_token(
        &config(
            "max_wait_seconds = 30.0\napi_keys = [\"key-one\", \"key-two\"]",
            "concurrency = 1",
            &[
                ("k.embed", "embeddings", "bert-embed"),
                ("debug.echo", "debug.echo", ""),
            ],
            "",
        ),
        "admin-secret",
    ))
    .await;
    // Our shape on the task routes, with the API's realm.
    for key in [None, Some("key-thr"), Some("admin-secret")] {
        let r = post_key(&s, "/v1/tasks/debug.echo", &json!({"n": 1}), key).await;
        r.assert_error(401, "invalid_api_key");
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"celeriac\"");
    }
    let r = post_key(
        &s,
        "/v1/tasks/debug.echo",
        &json!({"n": 1}),
        Some("key-two"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.id();
    let r = s
        .client
        .get(format!("{}/v1/tasks/{id}", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // OpenAI's and TEI's shapes on theirs.
    let r = post_key(
        &s,
        "/v1/embeddings",
        &json!({"input": "a", "model": "k.embed"}),
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_api_key");
    let r = post_key(&s, "/embed", &json!({"inputs": "a"}), Some("nope")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.body["error_type"], "invalid_api_key");
    assert_eq!(s.get("/info").await.status, 401);
    assert_eq!(s.get("/v1/models").await.status, 401);
    let r = post_key(&s, "/embed", &json!({"inputs": "a"}), Some("key-one")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The openai client sends its key as a bearer token.
    let out = run_python(
        r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="key-one")
print(len(c.embeddings.create(model="k.embed", input=["a", "b"]).data))
try:
    openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="wrong").embeddings.create(model="k.embed", input="a")
except openai.AuthenticationError as e:
    print(e.status_code)
"#,
        &[&s.url],
    );
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["2", "401"]);
    // Open: health, metrics, the document; the admin API keeps its own token.
    for path in ["/health/live", "/health/ready", "/metrics", "/openapi.json"] {
        assert_eq!(s.get(path).await.status, 200, "{path}");
    }
    let r = s
        .client
        .get(format!("{}/v1/admin/pools", s.url))
        .bearer_auth("key-one")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an API key does not open the admin API");
    let r = s
        .client
        .get(format!("{}/v1/admin/pools", s.url))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.shutdown().await;
}

/// The `max_length` `/v1/models` reports for `task`.
async fn max_length(s: &Server, task: &str) -> u64 {
    let models = s.get("/v1/models").await;
    models.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["task"] == task)
        .unwrap_or_else(|| panic!("{task} not in {}", models.body))["model"]["max_length"]
        .as_u64()
        .unwrap()
}

/// `n` words of one token each in the tiny models' WordPiece vocabulary: `n` tokens,
/// plus the special tokens.
fn words(n: usize) -> String {
    vec!["a"; n].join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_truncates_or_refuses_long_inputs_as_asked() {
    let s = start(&config(
        "max_wait_seconds = 30.0",
        "concurrency = 1\nmax_batch_size = 8",
        &[
            ("l.embed", "embeddings", "bert-embed"),
            ("l.rerank", "reranker", "bert-rerank"),
            ("l.cls", "text_classifier", "bert-cls"),
        ],
        "",
    ))
    .await;
    let submitted = |m: &prometheus_parse::Scrape, task: &str| {
        sample(m, "celeriac_tasks_submitted_total", &[("task", task)])
    };
    let refused = |r: &Resp, given: u64, max: u64| {
        assert_eq!(r.status, 413, "{}", r.body);
        assert_eq!(r.body["error_type"], "validation", "{}", r.body);
        assert_eq!(
            r.body["error"],
            format!(
                "Input validation error: `inputs` must have less than {max} tokens. Given: {given}"
            ),
        );
    };
    let (embed_max, rerank_max, cls_max) = (
        max_length(&s, "l.embed").await,
        max_length(&s, "l.rerank").await,
        max_length(&s, "l.cls").await,
    );
    let long = words(200);
    assert!(embed_max < 200 && rerank_max < 200 && cls_max < 200);

    // /embed: truncated by default and with `truncate: true`, to the task's own answer
    // for the input (which truncates); refused with `truncate: false`, before anything
    // is queued, with the real count (200 words and [CLS], [SEP]).
    let theirs = task_answer(&s, "l.embed", json!({ "text": long })).await;
    assert_eq!(theirs["tokens"], embed_max);
    for truncate in [json!(null), json!(true)] {
        let r = s
            .post(
                "/embed",
                &json!({"inputs": [long], "normalize": false, "truncate": truncate}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(floats(&r.body[0]), floats(&theirs["embedding"]));
    }
    let before = submitted(&s.scrape().await, "l.embed");
    let r = s
        .post(
            "/embed",
            &json!({"inputs": ["short", long], "truncate": false}),
        )
        .await;
    refused(&r, 202, embed_max);
    assert_eq!(submitted(&s.scrape().await, "l.embed"), before);
    // An input of exactly the maximum passes; one token more does not.
    let fits = words(embed_max as usize - 2);
    let r = s
        .post("/embed", &json!({"inputs": fits, "truncate": false}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let over = words(embed_max as usize - 1);
    let r = s
        .post("/embed", &json!({"inputs": over, "truncate": false}))
        .await;
    refused(&r, embed_max + 1, embed_max);

    // /rerank: each (query, text) pair counts, [CLS] q [SEP] text [SEP].
    let r = s
        .post(
            "/rerank",
            &json!({"query": "a", "texts": ["b", long], "truncate": false}),
        )
        .await;
    refused(&r, 1 + 200 + 3, rerank_max);
    let r = s
        .post("/rerank", &json!({"query": "a", "texts": ["b", long]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_array().unwrap().len(), 2);

    // /predict: a text, a pair; truncation by default.
    let r = s
        .post("/predict", &json!({"inputs": long, "truncate": false}))
        .await;
    refused(&r, 202, cls_max);
    let r = s
        .post(
            "/predict",
            &json!({"inputs": [["b"], ["a", long]], "truncate": false}),
        )
        .await;
    refused(&r, 1 + 200 + 3, cls_max);
    let r = s.post("/predict", &json!({"inputs": long})).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // `truncate` must be a boolean, in TEI's shape.
    let r = s
        .post("/embed", &json!({"inputs": "a", "truncate": "no"}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error_type"], "validation", "{}", r.body);

    // Several kinds here and no `api.root`: `POST /` says which setting to set.
    let r = s.post("/", &json!({"inputs": "a"})).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.body["error_type"], "not_served", "{}", r.body);
    assert!(
        r.body["error"].as_str().unwrap().contains("api.root"),
        "{}",
        r.body
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_truncate_off_refuses_what_the_request_does_not_allow() {
    // One kind: `POST /` answers as /embed; `api.auto_truncate = false` refuses long
    // inputs unless the request says `truncate: true`.
    let s = start(&config(
        "max_wait_seconds = 30.0",
        "concurrency = 1",
        &[("o.embed", "embeddings", "bert-embed")],
        "[api]\nauto_truncate = false\n",
    ))
    .await;
    let long = words(200);
    let max = max_length(&s, "o.embed").await;
    for path in ["/embed", "/"] {
        let r = s.post(path, &json!({ "inputs": long })).await;
        assert_eq!(r.status, 413, "{path}: {}", r.body);
        assert_eq!(r.body["error_type"], "validation");
        let r = s
            .post(path, &json!({"inputs": long, "truncate": true}))
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let info = s.get("/info").await;
    assert_eq!(info.body["auto_truncate"], false, "{}", info.body);
    assert_eq!(info.body["max_input_length"], max);
    // `POST /` is /embed here: the same answer, and /embed's errors.
    let texts = json!(["a first text", "a second"]);
    let root = s.post("/", &json!({ "inputs": texts })).await;
    let embed = s.post("/embed", &json!({ "inputs": texts })).await;
    assert_eq!(root.status, 200, "{}", root.body);
    assert_eq!(root.body, embed.body);
    let r = s.post("/", &json!({"query": "q", "texts": ["a"]})).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error_type"], "validation", "{}", r.body);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_root_names_the_route_of_post_root() {
    let s = start(&config(
        "max_wait_seconds = 30.0",
        "concurrency = 1",
        &[
            ("r.embed", "embeddings", "bert-embed"),
            ("r.cls", "text_classifier", "bert-cls"),
        ],
        "[api]\nroot = \"predict\"\n",
    ))
    .await;
    // Three texts: a list of three (two strings would be one pair, as TEI reads them).
    let body = json!({"inputs": ["a first text", "a second", "a third"], "raw_scores": true});
    let root = s.post("/", &body).await;
    let predict = s.post("/predict", &body).await;
    assert_eq!(root.status, 200, "{}", root.body);
    assert_eq!(root.body, predict.body);
    assert_eq!(root.body.as_array().unwrap().len(), 3);
    // /info describes the model `POST /` answers with.
    let info = s.get("/info").await;
    assert_eq!(info.body["task"], "r.cls", "{}", info.body);
    assert!(info.body["model_type"]["classifier"].is_object());
    // GET / is not a route; POST / is.
    let r = s.get("/").await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(r.headers["allow"], "POST");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_numbers_may_come_as_floats_and_nested_objects_must_be_objects() {
    let s = start(&config(
        "max_wait_seconds = 30.0",
        "concurrency = 1",
        &[
            ("w.embed", "embeddings", "bert-embed"),
            ("w.cls", "text_classifier", "bert-cls"),
        ],
        "",
    ))
    .await;
    // `dimensions` 8.0 is 8, in both APIs; token ids 5.0 are 5.
    let r = s
        .post("/embed", &json!({"inputs": "a", "dimensions": 8.0}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body[0].as_array().unwrap().len(), 8);
    let r = s
        .post(
            "/v1/embeddings",
            &json!({"input": "a", "model": "w.embed", "dimensions": 8.0}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"][0]["embedding"].as_array().unwrap().len(), 8);
    let ints = s
        .post(
            "/v1/embeddings",
            &json!({"input": [[5, 6, 7]], "model": "w.embed"}),
        )
        .await;
    let floats_ = s
        .post(
            "/v1/embeddings",
            &json!({"input": [[5.0, 6.0, 7.0]], "model": "w.embed"}),
        )
        .await;
    assert_eq!(ints.status, 200, "{}", ints.body);
    assert_eq!(ints.body["data"], floats_.body["data"]);
    let r = s
        .post(
            "/predict",
            &json!({"inputs": "a", "parameters": {"top_k": 1.0}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_array().unwrap().len(), 1);

    // 7.5 is no whole number: TEI's 422, OpenAI's 400, each naming the value.
    let r = s
        .post("/embed", &json!({"inputs": "a", "dimensions": 7.5}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error_type"], "validation");
    assert!(
        r.body["error"].as_str().unwrap().contains("7.5"),
        "{}",
        r.body
    );
    let r = s
        .post(
            "/v1/embeddings",
            &json!({"input": "a", "model": "w.embed", "dimensions": 7.5}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_body");
    assert!(
        r.body["error"]["message"].as_str().unwrap().contains("7.5"),
        "{}",
        r.body
    );

    // `parameters` must be an object: a string, a list or a number is refused.
    for bad in [json!("softmax"), json!(["softmax", 1]), json!(3)] {
        let r = s
            .post("/predict", &json!({"inputs": "a", "parameters": bad}))
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert_eq!(r.body["error_type"], "validation", "{}", r.body);
    }
    // A body must be an object, not the fields in a list.
    let r = s.post("/embed", &json!(["a", true])).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = s.post("/v1/embeddings", &json!(["a", "w.embed"])).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_body");
    s.shutdown().await;
}
