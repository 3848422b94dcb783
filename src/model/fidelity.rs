//! How far a precision moves a model's answers from f32's, on one device: the cosine of
//! each text's embedding to its f32 embedding, and the labels that change. The tests
//! hold the precisions to their bars with it, and `celeriac fidelity` prints the table
//! on any machine (a GPU machine included) for BENCHMARKS.md.

use std::path::Path;
use std::time::Instant;

use super::{Kernels, ModelError, Precision, TextClassifier};
use crate::config::DeviceSpec;

/// One precision against f32.
#[derive(Debug, Clone)]
pub struct Fidelity {
    /// The setting compared.
    pub precision: Precision,
    /// Smallest cosine between a text's embedding and its f32 embedding.
    pub min_cosine: f64,
    /// Mean of those cosines.
    pub mean_cosine: f64,
    /// Texts whose label differs from f32's.
    pub flips: usize,
    /// Seconds the texts took (tokenizing included), after one warm-up batch.
    pub seconds: f64,
}

/// Embeddings and labels of every text, in the order given, and the seconds they took.
type Run = (Vec<Vec<f32>>, Vec<usize>, f64);

fn run(
    dir: &Path,
    device: DeviceSpec,
    kernels: Kernels,
    precision: Precision,
    texts: &[&str],
    batch: usize,
) -> Result<Run, ModelError> {
    let model = TextClassifier::load_with(dir, device, kernels, precision)?;
    // By length, so each padded batch wastes little; answers go back to input order.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    if let Some(&first) = order.first() {
        model.predict(&[texts[first]])?;
    }
    let mut emb = vec![Vec::new(); texts.len()];
    let mut labels = vec![0; texts.len()];
    let t0 = Instant::now();
    for chunk in order.chunks(batch.max(1)) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
        let (e, p) = model.embed_and_predict(&batch)?;
        let e = e.to_vec2::<f32>().map_err(super::runtime)?;
        for ((&i, e), p) in chunk.iter().zip(e).zip(p) {
            emb[i] = e;
            labels[i] = argmax(&p);
        }
    }
    Ok((emb, labels, t0.elapsed().as_secs_f64()))
}

/// The index of the largest value (the first of equals).
pub fn argmax(p: &[f32]) -> usize {
    (0..p.len()).fold(0, |best, i| if p[i] > p[best] { i } else { best })
}

/// The cosine of two vectors, summed in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// Runs `texts` through the model in f32 and in each of `precisions` on `device` with
/// `kernels`, in batches of `batch`, and compares. Returns f32's seconds and one row
/// per precision.
pub fn compare(
    dir: &Path,
    device: DeviceSpec,
    kernels: Kernels,
    precisions: &[Precision],
    texts: &[&str],
    batch: usize,
) -> Result<(f64, Vec<Fidelity>), ModelError> {
    let (e32, l32, s32) = run(dir, device, kernels, Precision::F32, texts, batch)?;
    let mut rows = Vec::new();
    for &precision in precisions {
        let (e, l, seconds) = run(dir, device, kernels, precision, texts, batch)?;
        let cos: Vec<f64> = e.iter().zip(&e32).map(|(a, b)| cosine(a, b)).collect();
        rows.push(Fidelity {
            precision,
            min_cosine: cos.iter().copied().reduce(f64::min).unwrap_or(f64::NAN),
            mean_cosine: cos.iter().sum::<f64>() / cos.len().max(1) as f64,
            flips: l.iter().zip(&l32).filter(|(a, b)| a != b).count(),
            seconds,
        });
    }
    Ok((s32, rows))
}
