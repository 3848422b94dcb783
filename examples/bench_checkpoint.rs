//! Speed of a Hugging Face sequence-classification checkpoint served as `text_classifier`
//! (its encoder family and head), measured as examples/bench_model.rs measures the spam
//! model: batch-1 latency over the bench inputs (tokenizing included), then throughput
//! at larger batches of consecutive inputs. Prints one JSON line last.
//!
//! cargo run --release --example bench_checkpoint -- --model DIR --precision f32 --threads 1

use std::path::PathBuf;
use std::time::Instant;

use celeriac::config::DeviceSpec;
use celeriac::model::Precision;
use celeriac::model::served::{HeadKind, Overrides, ServedModel};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads", 1);
    let n: usize = arg(&args, "--n", 300);
    let warmup: usize = arg(&args, "--warmup", 30);
    let model_dir: PathBuf = arg(&args, "--model", PathBuf::new());
    let name: String = arg(&args, "--name", model_dir.display().to_string());
    let inputs: PathBuf = arg(
        &args,
        "--inputs",
        PathBuf::from("../shared/bench/inputs.jsonl"),
    );
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
    let model = ServedModel::open(
        &model_dir,
        &name,
        HeadKind::Sequence,
        DeviceSpec::Cpu,
        None,
        precision,
        Overrides {
            max_length: Some(256),
            ..Overrides::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
    let load_s = t0.elapsed().as_secs_f64();
    let predict = |batch: &[&str]| {
        let seqs: Vec<_> = batch
            .iter()
            .map(|t| model.seq(&model.encode(t, None).unwrap()))
            .collect();
        model.predict(&seqs).unwrap()
    };
    pool.install(|| {
        for i in 0..warmup {
            predict(&[texts[i % texts.len()].as_str()]);
        }
        let mut lat = Vec::with_capacity(n);
        let t_all = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            predict(&[texts[i % texts.len()].as_str()]);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let b1_rate = n as f64 / t_all.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let mut json = serde_json::json!({
            "impl": format!("celeriac {name} {}", model.info.precision),
            "kernel": format!("{} {}", model.info.kernels, model.info.kernel),
            "threads": threads, "load_s": load_s,
            "b1_p50_ms": pct(&lat, 0.5), "b1_p99_ms": pct(&lat, 0.99), "b1_msgs_per_s": b1_rate,
        });
        for b in [8usize, 32] {
            let rounds = (n / b).max(4);
            let batch_at = |r: usize| -> Vec<&str> {
                (0..b)
                    .map(|j| texts[(r * b + j) % texts.len()].as_str())
                    .collect()
            };
            predict(&batch_at(0));
            let t = Instant::now();
            for r in 0..rounds {
                predict(&batch_at(r));
            }
            json[format!("b{b}_msgs_per_s")] =
                serde_json::json!((rounds * b) as f64 / t.elapsed().as_secs_f64());
        }
        println!("{json}");
    });
}
