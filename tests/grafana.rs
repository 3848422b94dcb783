//! The Grafana dashboard (`grafana/dashboards/celeriac.json`) queries only metrics that
//! `src/metrics.rs` declares, covers the core ones, and uses the provisioned datasource.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;

use celeriac::metrics;
use serde_json::Value;

const DASHBOARD: &str = "grafana/dashboards/celeriac.json";
const DATASOURCES: &str = "grafana/provisioning/datasources/prometheus.yml";

/// Histograms: exported as `<name>_bucket`, `<name>_sum` and `<name>_count`.
const HISTOGRAMS: &[&str] = &[
    metrics::QUEUE_WAIT,
    metrics::RUN_TIME,
    metrics::LATENCY,
    metrics::BATCH_SIZE,
    metrics::PADDING_RATIO,
    metrics::HTTP_DURATION,
    metrics::BATCH_TOKENS,
    metrics::DEVICE_BATCH_SECONDS,
    metrics::WARMUP,
];

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is valid JSON")
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every `celeriac_…` identifier in a PromQL expression, as written. The whole
/// identifier is taken (PromQL allows upper case and `:`), so a name is never cut short
/// into a declared one.
fn identifiers(expr: &str) -> Vec<&str> {
    expr.match_indices("celeriac_")
        .filter(|(i, _)| !expr[..*i].chars().next_back().is_some_and(is_ident_char))
        .map(|(i, _)| {
            let end = expr[i..]
                .find(|c: char| !is_ident_char(c))
                .map_or(expr.len(), |n| i + n);
            &expr[i..end]
        })
        .collect()
}

/// The declared metric an identifier refers to: a histogram's `_bucket`, `_sum` or
/// `_count` series maps to its name when that name is in `ALL`; anything else is itself.
fn metric_name(ident: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .into_iter()
        .filter_map(|suffix| ident.strip_suffix(suffix))
        .find(|base| metrics::ALL.contains(base))
        .unwrap_or(ident)
}

/// What is wrong with the metric names of one expression (empty: nothing).
fn problems(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ident in identifiers(expr) {
        let name = metric_name(ident);
        if !metrics::ALL.contains(&name) {
            out.push(format!(
                "`{ident}` is not declared in src/metrics.rs (in `{expr}`)"
            ));
        } else if name != ident && !HISTOGRAMS.contains(&name) {
            out.push(format!(
                "`{ident}`: `{name}` is not a histogram (in `{expr}`)"
            ));
        }
    }
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a [Value], out: &mut Vec<&'a Value>) {
        for p in list {
            out.push(p);
            if let Some(nested) = p.get("panels").and_then(Value::as_array) {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(list) = dashboard.get("panels").and_then(Value::as_array) {
        walk(list, &mut out);
    }
    out
}

fn targets(panel: &Value) -> Vec<&Value> {
    panel
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect()
}

fn exprs(panel: &Value) -> Vec<&str> {
    targets(panel)
        .into_iter()
        .filter_map(|t| t.get("expr").and_then(Value::as_str))
        .collect()
}

/// The template variables' queries (a string, or an object holding `query`).
fn variable_queries(dashboard: &Value) -> Vec<&str> {
    dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|v| {
            let query = v.get("query");
            [
                query.and_then(Value::as_str),
                query.and_then(|q| q.get("query")).and_then(Value::as_str),
                v.get("definition").and_then(Value::as_str),
            ]
        })
        .flatten()
        .collect()
}

/// Every expression of the dashboard: panel targets and template variables.
fn all_exprs(dashboard: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = panels(dashboard).into_iter().flat_map(exprs).collect();
    out.extend(variable_queries(dashboard));
    out
}

#[test]
fn every_query_uses_only_declared_metrics() {
    let d = dashboard();
    let queries = all_exprs(&d);
    assert!(!queries.is_empty(), "the dashboard has queries");
    for q in &queries {
        assert!(!identifiers(q).is_empty(), "`{q}` names no celeriac metric");
    }
    let bad: Vec<String> = queries.iter().copied().flat_map(problems).collect();
    assert!(bad.is_empty(), "unknown metric names:\n{}", bad.join("\n"));
}

#[test]
fn dashboard_covers_the_core_metrics() {
    let d = dashboard();
    let with_queries = panels(&d)
        .into_iter()
        .filter(|p| !exprs(p).is_empty())
        .count();
    assert!(
        with_queries >= 8,
        "{with_queries} panels with queries, want at least 8"
    );

    let queries = all_exprs(&d);
    let idents: BTreeSet<&str> = queries.iter().copied().flat_map(identifiers).collect();
    let names: BTreeSet<&str> = idents.iter().copied().map(metric_name).collect();
    for required in [
        metrics::POOL_UTILIZATION,
        metrics::WORKERS,
        metrics::QUEUE_DEPTH,
        metrics::TASKS_FINISHED,
        metrics::LATENCY,
        metrics::REJECTIONS,
        metrics::RESTARTS,
        metrics::BATCH_SIZE,
    ] {
        assert!(names.contains(required), "the dashboard shows {required}");
    }
    let latency_bucket = format!("{}_bucket", metrics::LATENCY);
    assert!(
        idents.contains(latency_bucket.as_str()),
        "latency quantiles come from {latency_bucket}"
    );
}

#[test]
fn dashboard_identity_variable_and_datasource() {
    let d = dashboard();
    assert_eq!(d["uid"], "celeriac");
    assert_eq!(d["title"], "celeriac");
    assert_eq!(d["schemaVersion"], 39);

    let pool_var = d
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find(|v| v["name"] == "pool"))
        .expect("a `pool` template variable");
    assert!(
        variable_queries(&d).contains(&"label_values(celeriac_pool_size, pool)"),
        "`pool` comes from label_values(celeriac_pool_size, pool): {pool_var}"
    );

    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        for ds in std::iter::once(p)
            .chain(targets(p))
            .filter_map(|v| v.get("datasource"))
        {
            assert_eq!(ds["uid"], "prometheus", "panel {title}: datasource {ds}");
            assert_eq!(ds["type"], "prometheus", "panel {title}: datasource {ds}");
        }
    }

    let provisioning = read(DATASOURCES);
    let lines: Vec<&str> = provisioning.lines().map(str::trim).collect();
    for want in [
        "uid: prometheus",
        "type: prometheus",
        "url: http://localhost:9090",
        "isDefault: true",
    ] {
        assert!(lines.contains(&want), "{DATASOURCES} has `{want}`");
    }
}

#[test]
fn scanner_catches_undeclared_names() {
    let made_up = "rate(celeriac_not_a_metric_total[1m])";
    let idents = identifiers(made_up);
    assert_eq!(idents, ["celeriac_not_a_metric_total"]);
    assert!(!metrics::ALL.contains(&metric_name(idents[0])));
    assert!(
        !problems(made_up).is_empty(),
        "an undeclared name is reported"
    );

    // Histogram series map to their declared name; other metrics have no such series.
    let quantile = format!(
        "histogram_quantile(0.9, sum by (le) (rate({}_bucket[1m])))",
        metrics::LATENCY
    );
    let names: Vec<&str> = identifiers(&quantile)
        .into_iter()
        .map(metric_name)
        .collect();
    assert_eq!(names, [metrics::LATENCY]);
    assert!(problems(&quantile).is_empty());
    assert!(
        !problems("celeriac_pool_size_count").is_empty(),
        "a gauge has no _count"
    );

    // Whole identifiers only: no cutting a longer name down to a declared one, and no
    // match inside another identifier.
    assert!(!problems("celeriac_workersX + celeriac_workers:rate1m").is_empty());
    assert_eq!(
        identifiers("sum(xceleriac_workers) + celeriac_workers{pool=\"a\"}"),
        [metrics::WORKERS]
    );
}

/// A fresh server on the shipped default config, scraped before any task ran, exports
/// every series the dashboard queries: counters and histograms exist at zero, so the
/// panels and `increase()` work from the first event. The one exception is CUDA device
/// memory, which a CPU-only node has none of. The real binary, in a process of its own:
/// the metrics of the servers other tests start in this one are not a fresh server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_exports_every_metric_the_dashboard_uses() {
    // Paths in a config file are relative to it: the spawned node's is in a scratch
    // folder, so the model's path is made whole.
    let toml = read("config/default.toml").replace(
        "model = \"models/spam-minilm\"",
        &format!(
            "model = \"{}/models/spam-minilm\"",
            env!("CARGO_MANIFEST_DIR")
        ),
    );
    assert!(
        toml.contains(env!("CARGO_MANIFEST_DIR")),
        "config/default.toml's model path"
    );
    let node = common::Node::spawn("serve", &toml, "grafana-fresh");
    node.wait_ready(120).await;
    let scrape = node.api().scrape().await;
    let exported: BTreeSet<&str> = scrape.samples.iter().map(|x| x.metric.as_str()).collect();
    let dash = dashboard();
    let mut missing = BTreeSet::new();
    for expr in all_exprs(&dash) {
        for ident in identifiers(expr) {
            // The parser files a histogram's `_bucket` lines under its base name.
            let bucket_of = ident.strip_suffix("_bucket");
            if ident == metrics::DEVICE_MEMORY {
                continue;
            }
            if !exported.contains(ident) && !bucket_of.is_some_and(|b| exported.contains(b)) {
                missing.insert(ident.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "series the dashboard queries that a fresh server does not export: {missing:?}"
    );
    // Task series carry the pool, so the dashboard's pool filter applies to them.
    for name in [
        metrics::TASKS_SUBMITTED,
        metrics::TASKS_FINISHED,
        "celeriac_task_latency_seconds_count",
        "celeriac_task_queue_wait_seconds_count",
        "celeriac_task_run_seconds_count",
        "celeriac_batch_padding_ratio_count",
    ] {
        let series: Vec<_> = scrape.samples.iter().filter(|x| x.metric == name).collect();
        assert!(!series.is_empty(), "{name}");
        for x in series {
            assert_eq!(x.labels.get("pool"), Some("default"), "{name}");
        }
    }
}
