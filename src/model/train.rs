//! Training a classification head on frozen, pooled embeddings: multinomial logistic
//! regression with candle-nn, on a held-out split fixed by a seed.
//!
//! The split reproduces Python's `random.Random(seed).shuffle` (Mersenne Twister), so
//! with seed 42 it is the split the FastAPI + Celery baseline uses, and the benchmark
//! inputs (sampled from its held-out part) are never trained on.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};

use super::TextClassifier;
use crate::config::DeviceSpec;

/// Python's `random.Random`: MT19937 seeded by `init_by_array`.
pub struct PyRandom {
    mt: [u32; 624],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative seed below 2^32.
    pub fn new(seed: u32) -> Self {
        let mut r = PyRandom {
            mt: [0; 624],
            index: 624,
        };
        r.init_genrand(19_650_218);
        let key = [seed];
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624usize.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                r.mt[0] = r.mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                r.mt[0] = r.mt[623];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..624 {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev).wrapping_add(i as u32);
        }
        self.index = 624;
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
                let mut v = self.mt[(k + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[k] = v;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `_randbelow(n)` for `0 < n < 2^32`.
    fn below(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.next_u32() >> (32 - k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(items)`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u32 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// One labelled message.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The text, trimmed.
    pub text: String,
    /// The label name.
    pub label: String,
}

/// Reads a `Category,Message` CSV (the SMS Spam Collection), trims messages, drops
/// empty ones and duplicates (first occurrence wins), in file order.
pub fn load_csv(path: &Path) -> Result<Vec<Example>, String> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("{}: no `{name}` column", path.display()))
    };
    let (label_col, text_col) = (col("Category")?, col("Message")?);
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("{}: {e}", path.display()))?;
        let text = record.get(text_col).unwrap_or("").trim().to_string();
        if text.is_empty() || !seen.insert(text.clone()) {
            continue;
        }
        rows.push(Example {
            text,
            label: record.get(label_col).unwrap_or("").trim().to_string(),
        });
    }
    Ok(rows)
}

/// Splits like the baseline's `split_dataset`: shuffle indices with `seed`, the first
/// `round(n * test_fraction)` are the test set. Returns (train, test).
pub fn split<T: Clone>(rows: &[T], test_fraction: f64, seed: u32) -> (Vec<T>, Vec<T>) {
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    PyRandom::new(seed).shuffle(&mut idx);
    let n_test = (rows.len() as f64 * test_fraction).round_ties_even() as usize;
    let pick = |ix: &[usize]| ix.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>();
    (pick(&idx[n_test..]), pick(&idx[..n_test]))
}

/// Settings of the logistic regression.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Full-batch optimisation steps.
    pub steps: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// L2 penalty on the weights (not the bias).
    pub l2: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            steps: 3000,
            learning_rate: 0.05,
            l2: 1e-4,
        }
    }
}

/// Fits `weight` [classes, dim] and `bias` [classes] to `x` [n, dim] and labels `y`.
pub fn fit(
    x: &Tensor,
    y: &[u32],
    classes: usize,
    opts: &TrainOptions,
) -> candle_core::Result<(Tensor, Tensor)> {
    let dev = x.device();
    let dim = x.dim(1)?;
    let w = Var::zeros((classes, dim), DType::F32, dev)?;
    let b = Var::zeros(classes, DType::F32, dev)?;
    let targets = Tensor::from_slice(y, y.len(), dev)?;
    let mut opt = candle_nn::AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for _ in 0..opts.steps {
        let logits = x
            .matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        let loss = (candle_nn::loss::cross_entropy(&logits, &targets)?
            + (w.as_tensor().sqr()?.sum_all()? * opts.l2)?)?;
        opt.backward_step(&loss)?;
    }
    Ok((w.as_tensor().clone(), b.as_tensor().clone()))
}

/// Accuracy and the positive class's precision, recall and F1.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metrics {
    /// Examples scored.
    pub n: usize,
    /// Fraction predicted right.
    pub accuracy: f64,
    /// Of those predicted positive, the fraction that are.
    pub precision: f64,
    /// Of the positives, the fraction found.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
}

/// Scores predictions against labels, with `positive` the class of interest.
pub fn metrics(predicted: &[u32], truth: &[u32], positive: u32) -> Metrics {
    let n = truth.len();
    let correct = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    let tp = predicted
        .iter()
        .zip(truth)
        .filter(|(p, t)| **p == positive && **t == positive)
        .count() as f64;
    let pred_pos = predicted.iter().filter(|p| **p == positive).count() as f64;
    let pos = truth.iter().filter(|t| **t == positive).count() as f64;
    let precision = if pred_pos > 0.0 { tp / pred_pos } else { 0.0 };
    let recall = if pos > 0.0 { tp / pos } else { 0.0 };
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Metrics {
        n,
        accuracy: correct as f64 / n.max(1) as f64,
        precision,
        recall,
        f1,
    }
}

/// Predicted class per row of `x` under a head.
pub fn predict(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Vec<u32>> {
    x.matmul(&w.t()?)?
        .broadcast_add(b)?
        .argmax(1)?
        .to_vec1::<u32>()
}

/// What `celeriac train-head` reports (and writes next to the head as `head.json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// The data file.
    pub data: String,
    /// Messages after de-duplication.
    pub examples: usize,
    /// The split seed.
    pub seed: u32,
    /// Fraction held out.
    pub test_fraction: f64,
    /// The optimiser settings.
    pub steps: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// L2 penalty.
    pub l2: f64,
    /// Scores on the training split.
    pub train: Metrics,
    /// Scores on the held-out split.
    pub test: Metrics,
    /// Seconds spent embedding every message.
    pub embed_seconds: f64,
    /// Seconds spent fitting the head.
    pub fit_seconds: f64,
}

/// Embeds texts in length-sorted batches (little padding) and returns `[n, hidden]`
/// in the input order.
pub fn embed_all(model: &TextClassifier, texts: &[&str], batch: usize) -> Result<Tensor, String> {
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut rows: Vec<Option<Tensor>> = vec![None; texts.len()];
    for chunk in order.chunks(batch.max(1)) {
        let batch_texts: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let emb = model.embed(&batch_texts).map_err(|e| e.to_string())?;
        for (row, &i) in chunk.iter().enumerate() {
            rows[i] = Some(emb.get(row).map_err(|e| e.to_string())?);
        }
    }
    let rows: Vec<Tensor> = rows
        .into_iter()
        .map(|r| r.expect("every row embedded"))
        .collect();
    Tensor::stack(&rows, 0).map_err(|e| e.to_string())
}

/// Embeds the CSV with the model directory's encoder, trains its head on the training
/// split, scores both splits, and writes `head.safetensors` and `head.json` into the
/// directory (at the manifest's `head` path).
pub fn train_head(
    model_dir: &Path,
    data: &Path,
    seed: u32,
    test_fraction: f64,
    opts: &TrainOptions,
) -> Result<TrainReport, String> {
    let model =
        TextClassifier::load_encoder(model_dir, DeviceSpec::Cpu).map_err(|e| e.to_string())?;
    let labels = model.manifest.labels.clone();
    let rows = load_csv(data)?;
    let label_index = |l: &str| {
        labels
            .iter()
            .position(|x| x == l)
            .map(|i| i as u32)
            .ok_or_else(|| {
                format!(
                    "label `{l}` in {} is not in the manifest's labels {labels:?}",
                    data.display()
                )
            })
    };
    let y_all: Vec<u32> = rows
        .iter()
        .map(|r| label_index(&r.label))
        .collect::<Result<_, _>>()?;
    let indexed: Vec<usize> = (0..rows.len()).collect();
    let (train_ix, test_ix) = split(&indexed, test_fraction, seed);
    let started = std::time::Instant::now();
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let x_all = embed_all(&model, &texts, 32)?;
    let embed_seconds = started.elapsed().as_secs_f64();
    let take = |ix: &[usize]| -> Result<(Tensor, Vec<u32>), String> {
        let t = Tensor::from_vec(
            ix.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            ix.len(),
            x_all.device(),
        )
        .and_then(|idx| x_all.index_select(&idx, 0))
        .map_err(|e| e.to_string())?;
        Ok((t, ix.iter().map(|&i| y_all[i]).collect()))
    };
    let (x_train, y_train) = take(&train_ix)?;
    let (x_test, y_test) = take(&test_ix)?;
    let started = std::time::Instant::now();
    let (w, b) = fit(&x_train, &y_train, labels.len(), opts).map_err(|e| e.to_string())?;
    let fit_seconds = started.elapsed().as_secs_f64();
    let positive = (labels.len() - 1) as u32;
    let score = |x: &Tensor, y: &[u32]| -> Result<Metrics, String> {
        Ok(metrics(
            &predict(x, &w, &b).map_err(|e| e.to_string())?,
            y,
            positive,
        ))
    };
    let report = TrainReport {
        data: data.display().to_string(),
        examples: rows.len(),
        seed,
        test_fraction,
        steps: opts.steps,
        learning_rate: opts.learning_rate,
        l2: opts.l2,
        train: score(&x_train, &y_train)?,
        test: score(&x_test, &y_test)?,
        embed_seconds,
        fit_seconds,
    };
    let head_path = model_dir.join(&model.manifest.head);
    let tensors =
        std::collections::HashMap::from([("weight".to_string(), w), ("bias".to_string(), b)]);
    candle_core::safetensors::save(&tensors, &head_path)
        .map_err(|e| format!("{}: {e}", head_path.display()))?;
    let json_path = head_path.with_extension("json");
    let mut json = serde_json::to_string_pretty(&report).expect("report serializes");
    json.push('\n');
    std::fs::write(&json_path, json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_random() {
        // python3 -c "import random; r=random.Random(42); print([r.getrandbits(32) for _ in range(3)])"
        let mut r = PyRandom::new(42);
        assert_eq!(
            [r.next_u32(), r.next_u32(), r.next_u32()],
            [2746317213, 478163327, 107420369]
        );
        // python3 -c "import random; x=list(range(10)); random.Random(42).shuffle(x); print(x)"
        let mut x: Vec<u32> = (0..10).collect();
        PyRandom::new(42).shuffle(&mut x);
        assert_eq!(x, [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]);
    }

    #[test]
    fn logistic_regression_separates_two_blobs() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::new(
            &[
                [1f32, 0.1],
                [0.9, -0.1],
                [1.1, 0.0],
                [-1.0, 0.1],
                [-0.9, 0.0],
                [-1.1, -0.1],
            ],
            &dev,
        )
        .unwrap();
        let y = [0u32, 0, 0, 1, 1, 1];
        let (w, b) = fit(
            &x,
            &y,
            2,
            &TrainOptions {
                steps: 200,
                ..Default::default()
            },
        )
        .unwrap();
        let p = predict(&x, &w, &b).unwrap();
        let m = metrics(&p, &y, 1);
        assert_eq!(m.accuracy, 1.0);
        assert_eq!(m.f1, 1.0);
    }
}
