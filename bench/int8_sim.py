"""Would int8 pass issue 5's bar? Fake-quantises every dense layer of the baseline's
SpamClassifier (../shared/baseline/spam_model.py, the same encoder weights and our head)
and compares embeddings and predictions with f32 on the first N bench inputs.

  ~/.cache/celeriac-baseline/venv/bin/python bench/int8_sim.py [N=300]

Schemes: activations quantised per token (asymmetric, A bits), weights per output
channel (symmetric, W bits). a7w8 is what AVX2 without VNNI can run with vpmaddubsw
without saturating; a16w8 is int8 weights with 16-bit activations (vpmaddwd).
"""
import json, os, sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(SHARED / "baseline"))
os.environ.setdefault("MODEL_DIR", str(Path.home() / ".cache/celeriac-baseline/model/minilm"))
from spam_model import SpamClassifier  # noqa: E402

torch.set_num_threads(1)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
m = SpamClassifier(head_path=str(ROOT / "models/spam-minilm/head.safetensors"))
texts = [json.loads(l)["text"] for l in open(SHARED / "bench/inputs.jsonl")][:n]
labels = [l.strip() for l in open(SHARED / "bench/inputs.labels")][:n]


def run():
    embs, probs = [], []
    for i in range(0, len(texts), 32):
        e = m.embed(texts[i:i + 32])
        embs.append(e)
        probs.append(torch.softmax(e @ m.weight.T + m.bias, -1))
    return torch.cat(embs), torch.cat(probs)


f32_forward = torch.nn.Linear.forward


def fake_quant(abits, wbits):
    amax, wmax = 2 ** abits - 1, 2 ** (wbits - 1) - 1

    def forward(self, x):
        ws = self.weight.abs().amax(1, keepdim=True) / wmax
        wq = torch.round(self.weight / ws).clamp(-wmax, wmax) * ws
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        s = (hi - lo).clamp(min=1e-8) / amax
        xq = torch.round((x - lo) / s).clamp(0, amax) * s + lo
        return F.linear(xq, wq, self.bias)
    return forward


def label(p):
    return ["spam" if r[1] > r[0] else "ham" for r in p]


e0, p0 = run()
acc = lambda p: sum(a == b for a, b in zip(label(p), labels)) / len(labels)
print(f"f32: accuracy {acc(p0):.4f} on {n} inputs")
for name, a, w in [("a7w8", 7, 8), ("a8w8", 8, 8), ("a16w8", 16, 8)]:
    torch.nn.Linear.forward = fake_quant(a, w)
    e, p = run()
    torch.nn.Linear.forward = f32_forward
    cos = (e * e0).sum(-1)
    agree = sum(x == y for x, y in zip(label(p), label(p0))) / len(labels)
    print(f"{name}: cosine to f32 min {cos.min():.5f} mean {cos.mean():.5f}; "
          f"accuracy {acc(p):.4f}; predictions agreeing with f32 {agree:.4f}")
