"""Zero-shot cross-lingual transfer (METHOD.md §5): train a classifier in the source language, test it in another.

Data: JSONL ``{"text": "...", "label": "poetry"}`` (a label may be a string or an integer). The label set is
the training file's; a test record with another label is an error naming ``path:line``.

Two classifiers, both deterministic:

- **linear probe** on frozen mean-pooled states, for every probe layer (embedding .. final norm,
  unembedding): multinomial logistic regression in torch (features standardised with the training set's mean
  and std, zero initial weights, full-batch L-BFGS, L2 penalty ``weight_decay``);
- **fine-tuned head**: a copy of the model plus a linear head on the mean-pooled final normed state, trained
  end to end (AdamW, seeded order and head init) on the source set; the model itself is not changed.

Each reports ``source`` (accuracy on the source-language test set) and ``target`` ({lang: accuracy}).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prealign_scale.alignment.word_vectors import layer_names, pool_words, pooled_vectors
from prealign_scale.eval.io import EvalInputError, read_jsonl
from prealign_scale.eval.text import TextEncoder
from prealign_scale.model.view import HFModelView, ModelView, pad_right


@dataclass
class LabelledSet:
    texts: list[str]
    labels: list[str]
    where: str = ""


def read_labelled(path: str | Path, labels: list[str] | None = None) -> LabelledSet:
    """Texts and labels of a JSONL file; with `labels`, a label outside them raises ``path:line``."""
    texts, ys = [], []
    for lineno, rec in read_jsonl(path, {"text": str, "label": (str, int)}):
        y = str(rec["label"])
        if labels is not None and y not in labels:
            raise EvalInputError(f"{path}:{lineno}: unknown label {y!r} (the training set has {labels})")
        texts.append(rec["text"])
        ys.append(y)
    return LabelledSet(texts, ys, str(path))


def encode_texts(encoder: TextEncoder, texts: list[str], lang: str, max_len: int) -> list[list[int]]:
    """Token ids per text (truncated to `max_len`); an empty tokenisation is an error."""
    out = []
    for i, t in enumerate(texts):
        ids = encoder.encode(t, lang)[:max_len]
        if not ids:
            raise ValueError(f"text {i} tokenises to nothing: {t!r}")
        out.append(ids)
    return out


# ------------------------------------------------------------------------------------------- linear probe

@dataclass
class LinearProbe:
    mean: Tensor
    std: Tensor
    weight: Tensor  # [classes, h]
    bias: Tensor  # [classes]

    def predict(self, x: Tensor) -> Tensor:
        z = (x.double() - self.mean) / self.std
        return (z @ self.weight.T + self.bias).argmax(1)


def train_linear_probe(x: Tensor, y: Tensor, n_classes: int, *, weight_decay: float = 1e-3,
                       max_iter: int = 200) -> LinearProbe:
    """Multinomial logistic regression on features x [n, h] and labels y [n] (fp64, deterministic)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(mean, std, w.detach(), b.detach())


def accuracy(pred: Tensor, y: Tensor) -> float:
    return float((pred == y).double().mean())


def linear_probe_transfer(view: ModelView, encoder: TextEncoder, train: LabelledSet, train_lang: str,
                          tests: dict[str, LabelledSet], *, max_len: int = 256, batch_size: int = 64,
                          weight_decay: float = 1e-3, layer: str = "final_norm") -> dict:
    """Linear probe per layer: ``{"layers", "acc": {lang: [per layer]}, "layer", "source", "target"}``;
    ``source`` / ``target`` are read at `layer` (a name from `layer_names`)."""
    names = layer_names(view.num_layers)
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not one of {names}")
    labels = sorted(set(train.labels))
    y = torch.tensor([labels.index(v) for v in train.labels])
    x = pooled_vectors(view, encode_texts(encoder, train.texts, train_lang, max_len), batch_size, encoder.pad_id)
    probes = [train_linear_probe(x[k], y, len(labels), weight_decay=weight_decay) for k in range(len(names))]
    acc: dict[str, list[float]] = {"train": [accuracy(p.predict(x[k]), y) for k, p in enumerate(probes)]}
    for lang, test in tests.items():
        yt = torch.tensor([labels.index(v) for v in test.labels])
        xt = pooled_vectors(view, encode_texts(encoder, test.texts, lang, max_len), batch_size, encoder.pad_id)
        acc[lang] = [accuracy(p.predict(xt[k]), yt) for k, p in enumerate(probes)]
    k = names.index(layer)
    return {
        "layers": names,
        "acc": acc,
        "layer": layer,
        "source": acc[train_lang][k] if train_lang in acc and train_lang in tests else None,
        "target": {lang: acc[lang][k] for lang in tests if lang != train_lang},
    }


# ------------------------------------------------------------------------------------------- fine-tuning

class _Classifier(nn.Module):
    def __init__(self, view: HFModelView, n_classes: int, generator: torch.Generator):
        super().__init__()
        self.view = view
        self.body = view.model
        h = int(view.model.config.hidden_size)
        self.head = nn.Linear(h, n_classes, dtype=torch.float32)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(n_classes, h, generator=generator) * h**-0.5)
            self.head.bias.zero_()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        final = self.view.layer_states(ids)[-1]
        return self.head(pool_words(final, mask).to(self.head.weight.device))


def finetune_transfer(view: ModelView, encoder: TextEncoder, train: LabelledSet, train_lang: str,
                      tests: dict[str, LabelledSet], *, epochs: int = 2, lr: float = 1e-4, batch_size: int = 16,
                      weight_decay: float = 0.0, max_len: int = 256, seed: int = 0,
                      freeze_embeddings: bool = False) -> dict:
    """Fine-tune a copy of an HF model with a classification head; ``{"source", "target", "train_loss"}``."""
    if not isinstance(view, HFModelView):
        raise TypeError("finetune_transfer needs an HFModelView (an HF model it can copy and train)")
    gen = torch.Generator().manual_seed(seed)
    labels = sorted(set(train.labels))
    model = copy.deepcopy(view.model).train()
    clf = _Classifier(HFModelView(model), len(labels), gen).to(view.device)
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    seqs = encode_texts(encoder, train.texts, train_lang, max_len)
    y = torch.tensor([labels.index(v) for v in train.labels])
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(seqs), generator=gen).tolist()
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            ids, mask = pad_right([seqs[i] for i in idx], encoder.pad_id, view.device)
            loss = F.cross_entropy(clf(ids, mask), y[idx].to(view.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    clf.eval()
    acc = {}
    with torch.no_grad():
        for lang, test in tests.items():
            tseqs = encode_texts(encoder, test.texts, lang, max_len)
            yt = torch.tensor([labels.index(v) for v in test.labels])
            preds = torch.empty(len(tseqs), dtype=torch.long)
            for k in range(0, len(tseqs), batch_size):
                ids, mask = pad_right(tseqs[k : k + batch_size], encoder.pad_id, view.device)
                preds[k : k + batch_size] = clf(ids, mask).argmax(1).cpu()
            acc[lang] = accuracy(preds, yt)
    return {
        "source": acc.get(train_lang),
        "target": {lang: a for lang, a in acc.items() if lang != train_lang},
        "train_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "epochs": epochs,
        "lr": lr,
    }


def transfer_eval(view: ModelView, encoder: TextEncoder, train_path: str | Path, train_lang: str,
                  test_paths: dict[str, str | Path], *, finetune: bool = True, probe_layer: str = "final_norm",
                  max_len: int = 256, batch_size: int = 64, finetune_epochs: int = 2, finetune_lr: float = 1e-4,
                  seed: int = 0) -> dict:
    """Both classifiers on files: the training set (source language) and test sets per language."""
    encoder.check_lang(train_lang)
    for lang in test_paths:
        encoder.check_lang(lang)
    train = read_labelled(train_path)
    labels = sorted(set(train.labels))
    if len(labels) < 2:
        raise EvalInputError(f"{train_path}: needs at least two labels, found {labels}")
    tests = {lang: read_labelled(p, labels) for lang, p in test_paths.items()}
    out = {
        "labels": labels,
        "train_lang": train_lang,
        "train": len(train.texts),
        "tests": {lang: len(t.texts) for lang, t in tests.items()},
        "majority": {lang: max(t.labels.count(v) for v in labels) / len(t.labels) for lang, t in tests.items()},
        "linear_probe": linear_probe_transfer(view, encoder, train, train_lang, tests, max_len=max_len,
                                              batch_size=batch_size, layer=probe_layer),
    }
    if finetune:
        out["finetune"] = finetune_transfer(view, encoder, train, train_lang, tests, epochs=finetune_epochs,
                                            lr=finetune_lr, batch_size=min(batch_size, 16), max_len=max_len,
                                            seed=seed)
    return out
