#!/usr/bin/env python3
"""Makes the tiny random checkpoints of tests/data/tiny/ and PyTorch's answers on them.

Each checkpoint is a Hugging Face directory as `save_pretrained` writes it (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json; the embedding models also in the
sentence-transformers layout: modules.json, 1_Pooling/config.json), with a tokenizer
trained here with the `tokenizers` library on the SMS Spam Collection: WordPiece for
BERT and DistilBERT, Unigram for XLM-RoBERTa and DeBERTa-v2, byte-level BPE for RoBERTa
and ModernBERT. Weights are random (seeded), drawn wider than transformers' default so
the answers are decisive (labels not decided by a hair).

PyTorch's answers go to tests/data/tiny/expected.json: logits and probabilities per text
(sequence classifiers), pooled embeddings (sentence-transformers pooling, done here as
sentence-transformers does it), cross-encoder scores (reranker), and the entities of
`pipeline("token-classification", aggregation_strategy="simple")`.

    python scripts/make-tiny-models.py [--data ../shared/data/sms_spam.csv] [--out tests/data/tiny]
    python scripts/make-tiny-models.py --only deberta-ner modernbert-ner   # add or remake some

With `--bench DIR` it makes, instead, random sequence classifiers of every architecture
at all-MiniLM-L6-v2's shape (hidden 384, 6 layers, 12 heads, intermediate 1536), all with
MiniLM's own tokenizer (models/spam-minilm/tokenizer.json), so each sees the same tokens:
what bench/model.sh times per architecture. Not committed (about 90 MiB each).

Needs torch, transformers, tokenizers, safetensors (PyPI). Deterministic on CPU.
"""

import argparse
import csv
import json
import os
import shutil

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))


def read_texts(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["Message"] for r in rows]


def wordpiece(corpus, vocab):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(corpus, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    specials = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                    mask_token="[MASK]")
    # BERT's tokenizers give the model token types (BertTokenizer's model_input_names);
    # DistilBERT's do not (its model takes none).
    bert = PreTrainedTokenizerFast(tokenizer_object=tok, **specials,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    plain = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    return bert, plain, tok.token_to_id("[PAD]")


def unigram(corpus, vocab, specials, cls, sep, pair_sep):
    """A sentencepiece-like Unigram tokenizer (Metaspace), specials first."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab, special_tokens=specials, unk_token=specials[3]
    )
    tok.train_from_iterator(corpus, trainer)
    ids = {s: tok.token_to_id(s) for s in specials}
    pair = f"{cls} $A {sep} " + (f"{sep} " if pair_sep else "") + f"$B:1 {sep}:1"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair,
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
    )
    tok.decoder = decoders.Metaspace()
    return tok, ids


def bpe(corpus, vocab, specials, roberta):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    ids = {s: tok.token_to_id(s) for s in specials}
    if roberta:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", ids["</s>"]), ("<s>", ids["<s>"]), trim_offsets=True, add_prefix_space=False
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
        )
    tok.decoder = decoders.ByteLevel()
    return tok, ids


def widen(model, std):
    """Redraws every weight matrix with a wider normal (seeded): decisive answers."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def save(model, tokenizer, path):
    if os.path.exists(path):
        shutil.rmtree(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # Only what a user's directory needs: the tokenizer's files and the model's.
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        p = os.path.join(path, extra)
        if os.path.exists(p):
            os.remove(p)


def sentence_transformers_layout(path, pooling, normalize, dim):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(modules, f, indent=2)
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    cfg = {"word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
           "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
           "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
           "pooling_mode_lasttoken": pooling == "lasttoken", "include_prompt": True}
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 128, "do_lower_case": False}, f, indent=2)


def pool(hidden, mask, mode):
    """sentence-transformers' Pooling, for one mode."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(m == 0, -1e9).max(1).values
    if mode == "lasttoken":
        last = mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    raise ValueError(mode)


def round_floats(v):
    if isinstance(v, float):
        return float(f"{v:.7g}")
    if isinstance(v, list):
        return [round_floats(x) for x in v]
    if isinstance(v, dict):
        return {k: round_floats(x) for k, x in v.items()}
    return v


def bench_checkpoints(out):
    """MiniLM-shaped random classifiers of every architecture, MiniLM's tokenizer."""
    T = transformers
    tok_file = os.path.join(HERE, "..", "models", "spam-minilm", "tokenizer.json")
    tok = PreTrainedTokenizerFast(tokenizer_file=tok_file, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    shape = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536)
    two = {0: "ham", 1: "spam"}
    specs = [
        ("bert", T.BertForSequenceClassification,
         T.BertConfig(max_position_embeddings=512, id2label=two, **shape)),
        ("roberta", T.RobertaForSequenceClassification,
         T.RobertaConfig(max_position_embeddings=514, pad_token_id=1, type_vocab_size=1,
                         id2label=two, **shape)),
        ("xlm-roberta", T.XLMRobertaForSequenceClassification,
         T.XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1, type_vocab_size=1,
                            id2label=two, **shape)),
        ("distilbert", T.DistilBertForSequenceClassification,
         T.DistilBertConfig(vocab_size=30522, dim=384, n_layers=6, n_heads=12, hidden_dim=1536,
                            max_position_embeddings=512, id2label=two)),
        ("deberta-v2", T.DebertaV2ForSequenceClassification,
         T.DebertaV2Config(max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
                           position_biased_input=False, pos_att_type=["p2c", "c2p"],
                           norm_rel_ebd="layer_norm", share_att_key=True, position_buckets=256,
                           max_relative_positions=-1, pooler_hidden_size=384, id2label=two,
                           **shape)),
        ("modernbert", T.ModernBertForSequenceClassification,
         T.ModernBertConfig(max_position_embeddings=512, pad_token_id=0, cls_token_id=101,
                            sep_token_id=102, bos_token_id=101, eos_token_id=102,
                            global_attn_every_n_layers=3, local_attention=128, id2label=two,
                            **shape)),
    ]
    for name, cls, config in specs:
        torch.manual_seed(0)
        save(cls(config).eval(), tok, os.path.join(out, name))
        print(name, "ok")


def dedupe_tokenizers(out):
    """Tokenizer files equal to an earlier directory's become links to it (the test data
    stays under 2 MiB; every reader follows the links)."""
    first = {}
    for d in sorted(os.listdir(out)):
        for f in ("tokenizer.json", "tokenizer_config.json"):
            p = os.path.join(out, d, f)
            if not os.path.isfile(p) or os.path.islink(p):
                continue
            body = open(p, "rb").read()
            if body in first:
                os.remove(p)
                os.symlink(os.path.join("..", first[body], f), p)
            else:
                first[body] = d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=None, help="make MiniLM-shaped checkpoints here instead")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "sms_spam.csv"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "data", "tiny"))
    ap.add_argument("--only", nargs="*", help="make only these checkpoints; keep the others")
    args = ap.parse_args()
    if args.bench:
        bench_checkpoints(args.bench)
        return
    torch.manual_seed(0)
    corpus = read_texts(args.data)
    # 20 test texts of every length the corpus has, up to 120 characters, plus a few
    # with punctuation, digits and capitals (the tokenizers' edge cases).
    short = [t for t in corpus if 3 <= len(t) <= 120]
    texts = [short[i * len(short) // 20] for i in range(20)]
    pairs = [(texts[i], texts[(i + 7) % 20]) for i in range(6)]
    query = "free prize call now"
    documents = texts[:8]
    os.makedirs(args.out, exist_ok=True)
    expected = {"texts": texts, "pairs": pairs, "query": query, "documents": documents,
                "transformers": transformers.__version__, "torch": torch.__version__, "models": {}}
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)

    wp, wp_plain, wp_pad = wordpiece(corpus, 300)
    wp_vocab = wp.backend_tokenizer.get_vocab_size()
    deberta_types = ["input_ids", "token_type_ids", "attention_mask"]
    ug_x, ug_x_ids = unigram(corpus, 300, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s>", "</s>", True)
    xlmr_tok = PreTrainedTokenizerFast(tokenizer_object=ug_x, bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                                       sep_token="</s>", mask_token="<mask>")
    ug_d, ug_d_ids = unigram(corpus, 300, ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[CLS]", "[SEP]", False)
    deberta_tok = PreTrainedTokenizerFast(tokenizer_object=ug_d, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                          model_input_names=deberta_types)
    bp_r, bp_r_ids = bpe(corpus, 350, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], True)
    roberta_tok = PreTrainedTokenizerFast(tokenizer_object=bp_r, bos_token="<s>", eos_token="</s>",
                                          unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                                          sep_token="</s>", mask_token="<mask>")
    bp_m, bp_m_ids = bpe(corpus, 350, ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"], False)
    modern_tok = PreTrainedTokenizerFast(tokenizer_object=bp_m, unk_token="[UNK]", pad_token="[PAD]",
                                         cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")

    def deberta(**kw):
        """DeBERTa-v2 with relative attention, on the DeBERTa Unigram tokenizer."""
        return transformers.DebertaV2Config(
            vocab_size=ug_d.get_vocab_size(), pad_token_id=ug_d_ids["[PAD]"],
            max_position_embeddings=128, type_vocab_size=0, relative_attention=True,
            position_biased_input=False, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
            share_att_key=True, position_buckets=32, max_relative_positions=-1, **kw)

    def modernbert(**kw):
        """ModernBERT with local attention, on the ModernBERT BPE tokenizer."""
        return transformers.ModernBertConfig(
            vocab_size=bp_m.get_vocab_size(), pad_token_id=bp_m_ids["[PAD]"],
            cls_token_id=bp_m_ids["[CLS]"], sep_token_id=bp_m_ids["[SEP]"],
            bos_token_id=bp_m_ids["[CLS]"], eos_token_id=bp_m_ids["[SEP]"],
            max_position_embeddings=128, local_attention=16, **kw)

    # The candle-transformers token classifiers are smaller still (see below).
    smaller = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)
    three = {0: "negative", 1: "neutral", 2: "positive"}
    ner_labels = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "MISC"}
    T = transformers
    specs = [
        # name, model class, config, tokenizer, task kind, std
        ("bert-cls", T.BertForSequenceClassification,
         T.BertConfig(vocab_size=wp_vocab, pad_token_id=wp_pad, max_position_embeddings=128,
                      id2label=three, **small), wp, "text_classifier", 0.3),
        ("bert-multilabel", T.BertForSequenceClassification,
         T.BertConfig(vocab_size=wp_vocab, pad_token_id=wp_pad, max_position_embeddings=128,
                      id2label={0: "spam", 1: "urgent", 2: "money", 3: "friendly"},
                      problem_type="multi_label_classification", **small), wp, "text_classifier", 0.3),
        ("distilbert-cls", T.DistilBertForSequenceClassification,
         T.DistilBertConfig(vocab_size=wp_vocab, pad_token_id=wp_pad, max_position_embeddings=128,
                            dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                            id2label={0: "ham", 1: "spam"}), wp_plain, "text_classifier", 0.3),
        ("roberta-cls", T.RobertaForSequenceClassification,
         T.RobertaConfig(vocab_size=bp_r.get_vocab_size(), pad_token_id=bp_r_ids["<pad>"],
                         bos_token_id=bp_r_ids["<s>"], eos_token_id=bp_r_ids["</s>"],
                         max_position_embeddings=130, type_vocab_size=1, id2label=three, **small),
         roberta_tok, "text_classifier", 0.3),
        ("xlmr-cls", T.XLMRobertaForSequenceClassification,
         T.XLMRobertaConfig(vocab_size=ug_x.get_vocab_size(), pad_token_id=ug_x_ids["<pad>"],
                            bos_token_id=ug_x_ids["<s>"], eos_token_id=ug_x_ids["</s>"],
                            max_position_embeddings=130, type_vocab_size=1, id2label=three, **small),
         xlmr_tok, "text_classifier", 0.3),
        ("deberta-cls", T.DebertaV2ForSequenceClassification,
         deberta(pooler_hidden_size=32, pooler_dropout=0.0, pooler_hidden_act="gelu",
                 id2label=three, **small),
         deberta_tok, "text_classifier", 0.3),
        ("modernbert-cls", T.ModernBertForSequenceClassification,
         modernbert(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                    intermediate_size=48, global_attn_every_n_layers=3,
                    classifier_pooling="mean", id2label=three),
         modern_tok, "text_classifier", 0.3),
        ("bert-embed", T.BertModel,
         T.BertConfig(vocab_size=wp_vocab, pad_token_id=wp_pad, max_position_embeddings=128,
                      **small), wp, "embeddings:mean:normalize", 0.3),
        ("xlmr-embed", T.XLMRobertaModel,
         T.XLMRobertaConfig(vocab_size=ug_x.get_vocab_size(), pad_token_id=ug_x_ids["<pad>"],
                            bos_token_id=ug_x_ids["<s>"], eos_token_id=ug_x_ids["</s>"],
                            max_position_embeddings=130, type_vocab_size=1, **small),
         xlmr_tok, "embeddings:cls:", 0.3),
        ("distilbert-embed", T.DistilBertModel,
         T.DistilBertConfig(vocab_size=wp_vocab, pad_token_id=wp_pad, max_position_embeddings=128,
                            dim=32, n_layers=2, n_heads=4, hidden_dim=48),
         wp_plain, "embeddings:max:normalize", 0.3),
        ("bert-rerank", T.BertForSequenceClassification,
         T.BertConfig(vocab_size=wp_vocab, pad_token_id=wp_pad, max_position_embeddings=128,
                      num_labels=1, **small), wp, "reranker", 0.3),
        ("bert-ner", T.BertForTokenClassification,
         T.BertConfig(vocab_size=wp_vocab, pad_token_id=wp_pad, max_position_embeddings=128,
                      id2label=ner_labels, **small), wp, "token_classifier", 0.3),
        ("xlmr-ner", T.XLMRobertaForTokenClassification,
         T.XLMRobertaConfig(vocab_size=ug_x.get_vocab_size(), pad_token_id=ug_x_ids["<pad>"],
                            bos_token_id=ug_x_ids["<s>"], eos_token_id=ug_x_ids["</s>"],
                            max_position_embeddings=130, type_vocab_size=1, id2label=ner_labels,
                            **small), xlmr_tok, "token_classifier", 0.3),
        # The candle-transformers families as token classifiers, smaller still (hidden 16)
        # and sharing their classifiers' tokenizer files (symlinks), to keep the test data
        # under 2 MiB.
        ("deberta-ner", T.DebertaV2ForTokenClassification,
         deberta(id2label=ner_labels, **smaller),
         deberta_tok, "token_classifier", 0.3),
        ("modernbert-ner", T.ModernBertForTokenClassification,
         modernbert(global_attn_every_n_layers=2, id2label=ner_labels, **smaller),
         modern_tok, "token_classifier", 0.3),
    ]
    shares = {"deberta-ner": "deberta-cls", "modernbert-ner": "modernbert-cls"}
    if args.only:
        # Add or remake some checkpoints, keeping the others and their answers as they
        # are (tokenizer training is not bit-for-bit repeatable across runs).
        with open(os.path.join(args.out, "expected.json")) as f:
            kept = json.load(f)
        assert kept["texts"] == texts, "the corpus changed: remake everything"
        kept["models"] = {k: v for k, v in kept["models"].items() if k not in args.only}
        expected["models"] = kept["models"]
        specs = [s for s in specs if s[0] in args.only]
    for name, cls, config, tok, kind, std in specs:
        torch.manual_seed(0)
        model = cls(config).eval()
        widen(model, std)
        if kind == "token_classifier":
            # Wider per-token logits: entities of every kind, not one label throughout.
            with torch.no_grad():
                model.classifier.weight.mul_(4.0)
        path = os.path.join(args.out, name)
        save(model, tok, path)
        if name in shares:
            # The tokenizer files are the shared directory's (its tokenizer, as saved
            # then; the answers below are computed through the links).
            for f in ("tokenizer.json", "tokenizer_config.json"):
                os.remove(os.path.join(path, f))
                os.symlink(os.path.join("..", shares[name], f), os.path.join(path, f))
        out = {"class": cls.__name__, "kind": kind.split(":")[0]}
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        # Truncation at the position table's reach (128 tokens), as the server does.
        cut = dict(truncation=True, max_length=128)
        model = cls.from_pretrained(path).eval()
        with torch.no_grad():
            if kind == "text_classifier":
                logits = [model(**tokenizer(t, return_tensors="pt", **cut)).logits[0] for t in texts]
                out["logits"] = [l.tolist() for l in logits]
                if config.problem_type == "multi_label_classification":
                    out["probabilities"] = [torch.sigmoid(l).tolist() for l in logits]
                else:
                    out["probabilities"] = [torch.softmax(l, -1).tolist() for l in logits]
                out["labels"] = [config.id2label[int(l.argmax())] for l in logits]
                out["pair_logits"] = [
                    model(**tokenizer(a, b, return_tensors="pt", **cut)).logits[0].tolist() for a, b in pairs
                ]
                # A padded batch: the same answers as one by one.
                enc = tokenizer(texts, padding=True, return_tensors="pt", **cut)
                out["batch_logits"] = model(**enc).logits.tolist()
            elif kind.startswith("embeddings"):
                _, mode, norm = kind.split(":")
                sentence_transformers_layout(path, mode, norm == "normalize", config.hidden_size
                                             if hasattr(config, "hidden_size") else config.dim)
                embs = []
                for t in texts:
                    enc = tokenizer(t, return_tensors="pt", truncation=True, max_length=128)
                    h = model(**enc).last_hidden_state
                    e = pool(h, enc["attention_mask"], mode)[0]
                    if norm == "normalize":
                        e = torch.nn.functional.normalize(e, dim=-1)
                    embs.append(e.tolist())
                out["embeddings"] = embs
                out["pooling"] = mode
                out["normalize"] = norm == "normalize"
            elif kind == "reranker":
                logits = [model(**tokenizer(query, d, return_tensors="pt", **cut)).logits[0, 0] for d in documents]
                out["logits"] = [float(l) for l in logits]
                out["scores"] = [float(torch.sigmoid(l)) for l in logits]
                out["order"] = sorted(range(len(documents)), key=lambda i: -out["scores"][i])
            elif kind == "token_classifier":
                pipe = transformers.pipeline("token-classification", model=model, tokenizer=tokenizer,
                                             aggregation_strategy="simple", device="cpu")
                out["entities"] = [
                    [{"entity_group": e["entity_group"], "score": float(e["score"]), "word": e["word"],
                      "start": int(e["start"]), "end": int(e["end"])} for e in pipe(t)]
                    for t in texts
                ]
        expected["models"][name] = out
        print(name, out["class"], "ok")
    dedupe_tokenizers(args.out)
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        # Seven significant digits: float32's own, and a third of the file.
        json.dump(round_floats(expected), f)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
