//! The model alone, in one process: load time, batch-1 latency, and throughput at
//! larger batches, on a given number of intra-op threads. Prints a table and one JSON
//! line; `bench/model.sh` runs it next to the PyTorch equivalent.
//!
//! cargo run --release --example bench_model -- --threads 1 --inputs ../shared/bench/inputs.jsonl

use std::path::PathBuf;
use std::time::Instant;

use celeriac::config::DeviceSpec;
use celeriac::model::{Kernels, Precision, TextClassifier};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads", 1);
    let n: usize = arg(&args, "--n", 300);
    let warmup: usize = arg(&args, "--warmup", 30);
    // Messages run one at a time (default --n; fewer to profile the batches alone).
    let singles: usize = arg(&args, "--singles", n);
    let model_dir: PathBuf = arg(&args, "--model", PathBuf::from("models/spam-minilm"));
    let inputs: PathBuf = arg(
        &args,
        "--inputs",
        PathBuf::from("../shared/bench/inputs.jsonl"),
    );
    let batches: String = arg(&args, "--batches", "8,32".to_string());
    let kernels = match arg(&args, "--kernels", "packed".to_string()).as_str() {
        "packed" => Kernels::Packed,
        "candle" => Kernels::Candle,
        other => panic!("--kernels {other}: expected packed or candle"),
    };
    let precision: Precision = arg(&args, "--precision", "f32".to_string())
        .parse()
        .unwrap_or_else(|e| panic!("--precision: {e}"));
    let texts: Vec<String> = std::fs::read_to_string(&inputs)
        .unwrap_or_else(|e| panic!("{}: {e}", inputs.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();

    let t0 = Instant::now();
    let model = TextClassifier::load_with(&model_dir, DeviceSpec::Cpu, kernels, precision)
        .expect("model loads");
    let load_s = t0.elapsed().as_secs_f64();

    pool.install(|| {
        for i in 0..warmup {
            model.predict(&[texts[i % texts.len()].as_str()]).unwrap();
        }
        let mut lat = Vec::with_capacity(singles);
        let t_all = Instant::now();
        for i in 0..singles {
            let t = Instant::now();
            model.predict(&[texts[i % texts.len()].as_str()]).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let b1_rate = singles as f64 / t_all.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        // The model alone, as ../shared/bench/peers measures ONNX Runtime and OpenVINO:
        // the texts tokenized beforehand (the encoder, pooling and the head are timed).
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| model.token_ids(t).unwrap()).collect();
        let mut model_lat = Vec::with_capacity(singles);
        for i in 0..singles {
            let one = vec![ids[i % ids.len()].clone()];
            let t = Instant::now();
            model.predict_tokens(one).unwrap();
            model_lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let model_mean = model_lat.iter().sum::<f64>() / model_lat.len().max(1) as f64;
        model_lat.sort_by(f64::total_cmp);
        let mut json = serde_json::json!({
            "impl": format!("celeriac-{kernels:?}-{precision}").to_lowercase(), "threads": threads, "load_s": load_s,
            "precision": precision.as_str(), "kernel": precision.kernel(),
            "b1_p50_ms": pct(&lat, 0.5), "b1_p90_ms": pct(&lat, 0.9), "b1_p99_ms": pct(&lat, 0.99),
            "b1_msgs_per_s": b1_rate,
            "b1_model_p50_ms": pct(&model_lat, 0.5), "b1_model_msgs_per_s": 1e3 / model_mean,
        });
        println!(
            "celeriac ({kernels:?} kernels, {precision} on {}), {threads} intra-op thread(s): load {load_s:.3} s",
            precision.kernel()
        );
        println!(
            "  batch  1: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms per message ({b1_rate:.1} msgs/s)",
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99)
        );
        println!(
            "  batch  1, model alone: p50 {:.2} ms ({:.1} msgs/s from the mean)",
            pct(&model_lat, 0.5),
            1e3 / model_mean
        );
        for b in batches.split(',').filter_map(|b| b.trim().parse::<usize>().ok()) {
            // Consecutive inputs, packed (no padding) or padded to the longest of each
            // batch; about n messages.
            let rounds = (n / b).max(4);
            let batch_at = |r: usize| -> Vec<&str> {
                (0..b)
                    .map(|j| texts[(r * b + j) % texts.len()].as_str())
                    .collect()
            };
            model.predict(&batch_at(0)).unwrap();
            let t = Instant::now();
            for r in 0..rounds {
                model.predict(&batch_at(r)).unwrap();
            }
            let rate = (rounds * b) as f64 / t.elapsed().as_secs_f64();
            let rate_name = if model.packs_batches() { "packed" } else { "padded to the longest" };
            if model.packs_batches() {
                // The model alone: the same batches tokenized beforehand; the median of
                // three passes.
                let mut times: Vec<f64> = (0..3)
                    .map(|_| {
                        let prepared: Vec<Vec<Vec<u32>>> = (0..rounds)
                            .map(|r| (0..b).map(|j| ids[(r * b + j) % ids.len()].clone()).collect())
                            .collect();
                        let t = Instant::now();
                        for batch in prepared {
                            model.predict_tokens(batch).unwrap();
                        }
                        t.elapsed().as_secs_f64()
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                let alone = (rounds * b) as f64 / times[1];
                println!("  batch {b:>2}: {rate:.1} msgs/s {rate_name}; model alone {alone:.1} msgs/s");
                json[format!("b{b}_msgs_per_s")] = serde_json::json!(rate);
                json[format!("b{b}_model_msgs_per_s")] = serde_json::json!(alone);
                continue;
            }
            // The served candle path: the same batches, grouped by length before padding.
            let t = Instant::now();
            let (mut padded, mut real) = (0usize, 0usize);
            for r in 0..rounds {
                let ids: Vec<Vec<u32>> = batch_at(r)
                    .iter()
                    .map(|t| model.token_ids(t).unwrap())
                    .collect();
                let (probs, computed) = model.predict_batch(&ids);
                assert!(probs.iter().all(Result::is_ok));
                padded += computed;
                real += ids.iter().map(Vec::len).sum::<usize>();
            }
            let grouped = (rounds * b) as f64 / t.elapsed().as_secs_f64();
            let ratio = padded as f64 / real as f64;
            println!(
                "  batch {b:>2}: {rate:.1} msgs/s {rate_name}; {grouped:.1} msgs/s grouped by length (padding ratio {ratio:.2})"
            );
            json[format!("b{b}_msgs_per_s")] = serde_json::json!(rate);
            json[format!("b{b}_grouped_msgs_per_s")] = serde_json::json!(grouped);
            json[format!("b{b}_grouped_padding_ratio")] = serde_json::json!(ratio);
        }
        println!("{json}");
    });
}
