//! Heads: what a task kind does with an encoder's hidden states, apart from the
//! encoders ([`super::family`]) so one forward pass serves every kind.
//!
//! - [`SequenceHead`]: a `*ForSequenceClassification` head, as each family builds it
//!   (the first token, or the mean for ModernBERT with `classifier_pooling = "mean"`; a
//!   dense layer with its activation: BERT's pooler (tanh), RoBERTa's `classifier.dense`
//!   (tanh), DistilBERT's `pre_classifier` (ReLU), DeBERTa's `pooler.dense` (GELU),
//!   ModernBERT's `head` (GELU and a layer norm); then the output layer). Text
//!   classifiers and rerankers use it.
//! - [`TokenHead`]: a `*ForTokenClassification` head (one output layer per token, after
//!   ModernBERT's `head`).
//! - [`pool`]: sentence-transformers' pooling (and normalisation) for embeddings.
//!
//! All of it runs in f32 on the packed hidden states ([`super::family::Encoder::forward`]).

use candle_nn::VarBuilder;

use super::hf::{Checkpoint, Pooling};
use super::{ModelError, runtime};

/// A dense layer `y = W x + b`, `W` `[out, inp]` row-major.
struct Linear {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    inp: usize,
    out: usize,
}

impl Linear {
    fn load(vb: &VarBuilder, inp: usize, out: usize, bias: bool) -> candle_core::Result<Self> {
        Ok(Linear {
            weight: vb
                .get((out, inp), "weight")?
                .flatten_all()?
                .to_vec1::<f32>()?,
            bias: if bias {
                Some(vb.get(out, "bias")?.to_vec1::<f32>()?)
            } else {
                None
            },
            inp,
            out,
        })
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.inp);
        (0..self.out)
            .map(|o| {
                let row = &self.weight[o * self.inp..(o + 1) * self.inp];
                let dot: f32 = row.iter().zip(x).map(|(w, v)| w * v).sum();
                dot + self.bias.as_ref().map_or(0.0, |b| b[o])
            })
            .collect()
    }
}

/// A head's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Tanh,
    Relu,
    /// The erf form (transformers' `gelu`).
    Gelu,
}

impl Act {
    fn parse(name: &str, ck: &Checkpoint) -> Result<Self, ModelError> {
        match name {
            "tanh" => Ok(Act::Tanh),
            "relu" => Ok(Act::Relu),
            "gelu" => Ok(Act::Gelu),
            other => Err(ck.config_error(format!(
                "head activation `{other}` is not supported (tanh, relu, gelu)"
            ))),
        }
    }

    fn apply(self, x: &mut [f32]) {
        match self {
            Act::Tanh => x.iter_mut().for_each(|v| *v = v.tanh()),
            Act::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            Act::Gelu => super::packed::gelu(x),
        }
    }
}

/// Layer norm over one vector.
struct Norm {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

impl Norm {
    fn load(vb: &VarBuilder, h: usize, bias: bool, eps: f64) -> candle_core::Result<Self> {
        Ok(Norm {
            weight: vb.get(h, "weight")?.to_vec1::<f32>()?,
            bias: if bias {
                Some(vb.get(h, "bias")?.to_vec1::<f32>()?)
            } else {
                None
            },
            eps: eps as f32,
        })
    }

    fn apply(&self, x: &mut [f32]) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        for (i, v) in x.iter_mut().enumerate() {
            *v = (*v - mean) * inv * self.weight[i] + self.bias.as_ref().map_or(0.0, |b| b[i]);
        }
    }
}

/// The transform some families put before the output layer: dense, activation, and
/// (ModernBERT) a layer norm.
struct Transform {
    dense: Linear,
    act: Act,
    norm: Option<Norm>,
}

impl Transform {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = self.dense.apply(x);
        self.act.apply(&mut y);
        if let Some(n) = &self.norm {
            n.apply(&mut y);
        }
        y
    }
}

/// Which tokens a sequence head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    First,
    Mean,
}

/// A sequence-classification head.
pub struct SequenceHead {
    reads: Reads,
    transform: Option<Transform>,
    out: Linear,
}

/// A token-classification head.
pub struct TokenHead {
    transform: Option<Transform>,
    out: Linear,
}

fn weights_error(ck: &Checkpoint, e: candle_core::Error) -> ModelError {
    ModelError::File {
        path: ck.weights[0].clone(),
        message: format!("classification head: {e}"),
    }
}

/// ModernBERT's `head` (dense without bias unless `classifier_bias`, the
/// `classifier_activation`, a layer norm without bias unless `norm_bias`).
fn modernbert_transform(
    ck: &Checkpoint,
    vb: &VarBuilder,
    h: usize,
) -> Result<Transform, ModelError> {
    let flag = |k: &str| ck.config.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let eps = ck.f64_or("norm_eps", ck.f64_or("layer_norm_eps", 1e-5));
    Ok(Transform {
        dense: Linear::load(&vb.pp("head.dense"), h, h, flag("classifier_bias"))
            .map_err(|e| weights_error(ck, e))?,
        act: Act::parse(ck.str("classifier_activation").unwrap_or("gelu"), ck)?,
        norm: Some(
            Norm::load(&vb.pp("head.norm"), h, flag("norm_bias"), eps)
                .map_err(|e| weights_error(ck, e))?,
        ),
    })
}

impl SequenceHead {
    /// The checkpoint's `*ForSequenceClassification` head with `labels` outputs, read
    /// from `vb` at the checkpoint's root, for a `hidden`-wide encoder.
    pub fn load(
        ck: &Checkpoint,
        vb: &VarBuilder,
        hidden: usize,
        labels: usize,
    ) -> Result<Self, ModelError> {
        let h = hidden;
        let lin = |name: &str, inp: usize, out: usize| {
            Linear::load(&vb.pp(name), inp, out, true).map_err(|e| weights_error(ck, e))
        };
        let (reads, transform, out) = match ck.model_type.as_str() {
            "bert" => (
                Reads::First,
                Some(Transform {
                    dense: lin("bert.pooler.dense", h, h)?,
                    act: Act::Tanh,
                    norm: None,
                }),
                lin("classifier", h, labels)?,
            ),
            "roberta" | "xlm-roberta" | "camembert" => (
                Reads::First,
                Some(Transform {
                    dense: lin("classifier.dense", h, h)?,
                    act: Act::Tanh,
                    norm: None,
                }),
                lin("classifier.out_proj", h, labels)?,
            ),
            "distilbert" => (
                Reads::First,
                Some(Transform {
                    dense: lin("pre_classifier", h, h)?,
                    act: Act::Relu,
                    norm: None,
                }),
                lin("classifier", h, labels)?,
            ),
            "deberta-v2" => {
                let p = ck.usize_or("pooler_hidden_size", h);
                (
                    Reads::First,
                    Some(Transform {
                        dense: lin("pooler.dense", h, p)?,
                        act: Act::parse(ck.str("pooler_hidden_act").unwrap_or("gelu"), ck)?,
                        norm: None,
                    }),
                    lin("classifier", p, labels)?,
                )
            }
            "modernbert" => (
                match ck.str("classifier_pooling").unwrap_or("cls") {
                    "cls" => Reads::First,
                    "mean" => Reads::Mean,
                    other => {
                        return Err(ck.config_error(format!(
                            "classifier_pooling `{other}` is not supported (cls, mean)"
                        )));
                    }
                },
                Some(modernbert_transform(ck, vb, h)?),
                lin("classifier", h, labels)?,
            ),
            other => return Err(runtime(format!("no sequence head for `{other}`"))),
        };
        Ok(SequenceHead {
            reads,
            transform,
            out,
        })
    }

    /// Logits per sequence of packed hidden states (`lens`: each sequence's tokens).
    pub fn logits(&self, hidden: &[f32], lens: &[usize], h: usize) -> Vec<Vec<f32>> {
        let mut start = 0;
        lens.iter()
            .map(|&n| {
                let rows = &hidden[start * h..(start + n) * h];
                start += n;
                let x: Vec<f32> = match self.reads {
                    Reads::First => rows[..h].to_vec(),
                    Reads::Mean => mean_rows(rows, h),
                };
                let x = match &self.transform {
                    Some(t) => t.apply(&x),
                    None => x,
                };
                self.out.apply(&x)
            })
            .collect()
    }

    /// The number of outputs.
    pub fn outputs(&self) -> usize {
        self.out.out
    }
}

impl TokenHead {
    /// The checkpoint's `*ForTokenClassification` head with `labels` outputs.
    pub fn load(
        ck: &Checkpoint,
        vb: &VarBuilder,
        hidden: usize,
        labels: usize,
    ) -> Result<Self, ModelError> {
        let transform = if ck.model_type == "modernbert" {
            Some(modernbert_transform(ck, vb, hidden)?)
        } else {
            None
        };
        let bias = ck.model_type != "deberta-v2" || vb.contains_tensor("classifier.bias");
        let out = Linear::load(&vb.pp("classifier"), hidden, labels, bias)
            .map_err(|e| weights_error(ck, e))?;
        Ok(TokenHead { transform, out })
    }

    /// Logits per token per sequence.
    pub fn logits(&self, hidden: &[f32], lens: &[usize], h: usize) -> Vec<Vec<Vec<f32>>> {
        let mut start = 0;
        lens.iter()
            .map(|&n| {
                let rows = &hidden[start * h..(start + n) * h];
                start += n;
                rows.chunks_exact(h)
                    .map(|x| match &self.transform {
                        Some(t) => self.out.apply(&t.apply(x)),
                        None => self.out.apply(x),
                    })
                    .collect()
            })
            .collect()
    }

    /// The number of outputs.
    pub fn outputs(&self) -> usize {
        self.out.out
    }
}

fn mean_rows(rows: &[f32], h: usize) -> Vec<f32> {
    let n = (rows.len() / h).max(1) as f32;
    let mut acc = vec![0f32; h];
    for r in rows.chunks_exact(h) {
        acc.iter_mut().zip(r).for_each(|(a, v)| *a += v);
    }
    acc.iter_mut().for_each(|a| *a /= n);
    acc
}

/// sentence-transformers' pooling of packed hidden states, then (when `normalize`) L2
/// normalisation, keeping the first `dimensions` values when set (truncation before
/// normalisation, so a truncated Matryoshka vector is still a unit vector).
pub fn pool(
    hidden: &[f32],
    lens: &[usize],
    h: usize,
    pooling: Pooling,
    normalize: bool,
    dimensions: Option<usize>,
) -> Vec<Vec<f32>> {
    let mut start = 0;
    lens.iter()
        .map(|&n| {
            let rows = &hidden[start * h..(start + n) * h];
            start += n;
            let mut v = match pooling {
                Pooling::Cls => rows[..h].to_vec(),
                Pooling::LastToken => rows[(n - 1) * h..].to_vec(),
                Pooling::Mean => mean_rows(rows, h),
                Pooling::MeanSqrtLen => {
                    let mut m = mean_rows(rows, h);
                    let f = (n as f32) / (n as f32).sqrt();
                    m.iter_mut().for_each(|a| *a *= f);
                    m
                }
                Pooling::Max => {
                    let mut m = vec![f32::NEG_INFINITY; h];
                    for r in rows.chunks_exact(h) {
                        m.iter_mut().zip(r).for_each(|(a, v)| *a = a.max(*v));
                    }
                    m
                }
            };
            if let Some(d) = dimensions {
                v.truncate(d);
            }
            if normalize {
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
            }
            v
        })
        .collect()
}

/// Softmax of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// One entity of token classification, as transformers' pipeline answers it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entity {
    /// The label without its `B-`/`I-` prefix.
    pub entity_group: String,
    /// The mean of its tokens' scores.
    pub score: f32,
    /// Its tokens, joined by the tokenizer's decoder.
    pub word: String,
    /// The character offset of its first token's start.
    pub start: usize,
    /// The character offset of its last token's end.
    pub end: usize,
}

/// One token of a text, for [`aggregate_simple`].
pub struct TokenOut<'a> {
    /// The token's string in the vocabulary.
    pub token: &'a str,
    /// Its character offsets in the text.
    pub offsets: (usize, usize),
    /// Whether it is a special token (dropped).
    pub special: bool,
    /// Its label probabilities (softmax of its logits).
    pub probs: Vec<f32>,
}

/// transformers' `aggregation_strategy="simple"`: each token (special ones dropped) takes
/// its argmax label; consecutive tokens merge while their tag (the label without `B-` /
/// `I-`) matches and the next is not a `B-`; a group's label is its first token's tag,
/// its score the mean of its tokens' scores, its word the decoder's join of its tokens,
/// its span from the first token's start to the last token's end; groups labelled `O`
/// are dropped.
pub fn aggregate_simple(
    labels: &[String],
    tokens: &[TokenOut],
    decode: impl Fn(&[String]) -> String,
) -> Vec<Entity> {
    fn tag(label: &str) -> (bool, &str) {
        // (begins a group, tag)
        if let Some(t) = label.strip_prefix("B-") {
            (true, t)
        } else if let Some(t) = label.strip_prefix("I-") {
            (false, t)
        } else {
            (false, label)
        }
    }
    let mut groups: Vec<Vec<(usize, f32, &TokenOut)>> = Vec::new();
    for t in tokens.iter().filter(|t| !t.special) {
        let (best, score) =
            t.probs
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
                );
        let (begins, this) = tag(&labels[best]);
        let joins = groups
            .last()
            .and_then(|g| g.last())
            .is_some_and(|&(last, _, _)| tag(&labels[last]).1 == this && !begins);
        if joins {
            groups.last_mut().expect("a group").push((best, score, t));
        } else {
            groups.push(vec![(best, score, t)]);
        }
    }
    groups
        .into_iter()
        .filter_map(|g| {
            let first = &labels[g[0].0];
            let group = first.split_once('-').map_or(first.as_str(), |(_, t)| t);
            if group == "O" {
                return None;
            }
            let words: Vec<String> = g.iter().map(|(_, _, t)| t.token.to_string()).collect();
            Some(Entity {
                entity_group: group.to_string(),
                score: g.iter().map(|(_, s, _)| s).sum::<f32>() / g.len() as f32,
                word: decode(&words),
                start: g[0].2.offsets.0,
                end: g[g.len() - 1].2.offsets.1,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes() {
        // Two sequences of 2 and 1 tokens, width 2.
        let hidden = [1.0, 2.0, 3.0, -4.0, 5.0, 6.0];
        let lens = [2, 1];
        let p = |m, norm, d| pool(&hidden, &lens, 2, m, norm, d);
        assert_eq!(
            p(Pooling::Cls, false, None),
            vec![vec![1.0, 2.0], vec![5.0, 6.0]]
        );
        assert_eq!(p(Pooling::Mean, false, None)[0], vec![2.0, -1.0]);
        assert_eq!(p(Pooling::Max, false, None)[0], vec![3.0, 2.0]);
        assert_eq!(p(Pooling::LastToken, false, None)[0], vec![3.0, -4.0]);
        let n = p(Pooling::Cls, true, Some(1));
        assert_eq!(n[0], vec![1.0]);
        let s = softmax(&[1.0, 1.0]);
        assert!((s[0] - 0.5).abs() < 1e-7);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn simple_aggregation_merges_as_transformers_does() {
        let labels: Vec<String> = ["O", "B-PER", "I-PER", "LOC"].map(String::from).to_vec();
        let t = |token, offsets, special, best: usize| TokenOut {
            token,
            offsets,
            special,
            probs: (0..4).map(|i| if i == best { 0.7 } else { 0.1 }).collect(),
        };
        let tokens = [
            t("[CLS]", (0, 0), true, 1),
            t("jo", (0, 2), false, 1),
            t("##hn", (2, 4), false, 2),
            t("sm", (5, 7), false, 1),
            t("in", (8, 10), false, 0),
            t("par", (11, 14), false, 3),
            t("##is", (14, 16), false, 3),
            t("[SEP]", (16, 16), true, 3),
        ];
        let got = aggregate_simple(&labels, &tokens, |w| w.join("+"));
        let spans: Vec<_> = got
            .iter()
            .map(|e| (e.entity_group.as_str(), e.word.as_str(), e.start, e.end))
            .collect();
        assert_eq!(
            spans,
            [
                ("PER", "jo+##hn", 0, 4),
                ("PER", "sm", 5, 7),
                ("LOC", "par+##is", 11, 16)
            ]
        );
        assert!((got[0].score - 0.7).abs() < 1e-6);
    }
}
