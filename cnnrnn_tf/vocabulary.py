"""The label vocabulary and label orders.

The vocabulary is built from the training labels and ordered by frequency,
most frequent first, ties broken by name: the paper's label order. Decoder
token ids put the two special tokens first so that the vocabulary can grow
(fine-tuning on new labels) without moving existing rows:

    id 0: END (the path stops; an output, never an input)
    id 1: START (the first input; never an output)
    id 2 + k: label k of the vocabulary
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from cnnrnn_tf.choices import LABEL_ORDERS  # noqa: F401  (vocabulary.LABEL_ORDERS stays)
from cnnrnn_tf.errors import InputError

END_ID = 0
START_ID = 1
NUM_SPECIAL = 2
# The logit that masks a token out of a softmax (START, labels already on the path, ...):
# one constant for the decoder, the beam search and every reference decoder.
MASK_LOGIT = -1e9
# The target after END in a padded label path: no loss, no metric (Keras ignore_class).
PAD_TARGET = -1
VOCAB_FILE = "vocabulary.json"


@dataclass(frozen=True)
class LabelVocabulary:
    """An ordered list of label names with their training counts."""

    labels: tuple
    counts: tuple = field(default=())

    def __post_init__(self):
        if len(set(self.labels)) != len(self.labels):
            raise InputError("label vocabulary: duplicate label names")
        if not self.labels:
            raise InputError("label vocabulary: no labels")
        if self.counts and len(self.counts) != len(self.labels):
            raise InputError("label vocabulary: counts and labels differ in length")

    # ----- building -----
    @classmethod
    def from_label_lists(cls, label_lists: Iterable[Sequence[str]]) -> "LabelVocabulary":
        counter: collections.Counter = collections.Counter()
        for labels in label_lists:
            counter.update(set(labels))
        return cls.from_counts(counter)

    @classmethod
    def from_counts(cls, counts: Dict[str, int]) -> "LabelVocabulary":
        """From {label: images with it}, most frequent first (ties as tft.vocabulary)."""
        counter = {k: int(v) for k, v in counts.items() if int(v) > 0}
        if not counter:
            raise InputError("label vocabulary: the training data has no labels")
        # Ties as tft.vocabulary breaks them (bytes descending), so the CLI and the TFX
        # pipeline (Transform) train the same label order.
        ordered = sorted(counter.items(), key=lambda kv: (kv[1], kv[0].encode("utf-8")),
                         reverse=True)
        return cls(tuple(k for k, _ in ordered), tuple(int(v) for _, v in ordered))

    def extend(self, new_labels: Iterable[str]) -> "LabelVocabulary":
        """Appends labels not yet known; existing labels keep their ids."""
        labels = list(self.labels)
        counts = list(self.counts) if self.counts else [0] * len(labels)
        for name in new_labels:
            if name not in labels:
                labels.append(name)
                counts.append(0)
        return LabelVocabulary(tuple(labels), tuple(counts))

    # ----- lookups -----
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_tokens(self) -> int:
        """Decoder vocabulary size: labels plus END and START."""
        return len(self.labels) + NUM_SPECIAL

    @property
    def index(self) -> Dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def encode(self, labels: Sequence[str], strict: bool = True, where: str = "labels") -> List[int]:
        """Label names to vocabulary indices (0-based, no special tokens)."""
        index = self.index
        out = []
        for name in labels:
            if name in index:
                if index[name] not in out:
                    out.append(index[name])
            elif strict:
                raise InputError(f"{where}: unknown label {name!r} (not in the model's vocabulary)")
        return out

    def multi_hot(self, label_lists: Sequence[Sequence[str]], strict: bool = False) -> np.ndarray:
        y = np.zeros((len(label_lists), len(self)), dtype=np.float32)
        for row, labels in enumerate(label_lists):
            y[row, self.encode(labels, strict=strict)] = 1.0
        return y

    # ----- persistence -----
    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelVocabulary":
        try:
            return cls(tuple(d["labels"]), tuple(d.get("counts", ())))
        except (KeyError, TypeError) as exc:
            raise InputError(f"label vocabulary: malformed ({exc})") from None

    @staticmethod
    def _file(path: str) -> str:
        import tensorflow as tf

        from cnnrnn_tf import uri

        uri.ensure_filesystem(path)
        return uri.join(path, VOCAB_FILE) if tf.io.gfile.isdir(path) else path

    def save(self, path: str) -> None:
        """Writes vocabulary.json (atomically) to ``path``, a folder or a file name."""
        from cnnrnn_tf.io_utils import write_text_atomic

        write_text_atomic(self._file(path),
                          json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str) -> "LabelVocabulary":
        import tensorflow as tf

        from cnnrnn_tf.io_utils import read_json

        path = cls._file(path)
        if not tf.io.gfile.exists(path):
            raise InputError(f"{path}: vocabulary file not found")
        return cls.from_dict(read_json(path, "vocabulary"))

    @classmethod
    def from_text_file(cls, path: str) -> "LabelVocabulary":
        """Reads a vocabulary written one label per line, e.g. by tft.vocabulary."""
        from cnnrnn_tf.io_utils import read_text

        return cls(tuple(line for line in read_text(path, "vocabulary").split("\n")
                         if line.strip()))


def label_rank(vocab: LabelVocabulary, order: str, seed: int = 0) -> np.ndarray:
    """A rank per vocabulary index for a fixed label order: lower rank comes first.

    ``frequent-first``: the vocabulary order (it is sorted by frequency).
    ``rare-first``: the reverse. ``random``: a fixed random permutation drawn
    from ``seed`` (the same for every image, as in the paper's ablation).
    ``pla`` / ``mla`` train orderless (``cnnrnn_tf.models.label_alignment``): the model
    re-orders each sequence at every step; the dataset gives it frequent-first.
    """
    n = len(vocab)
    if order in ("frequent-first", "pla", "mla"):
        return np.arange(n, dtype=np.int32)
    if order == "rare-first":
        return np.arange(n, dtype=np.int32)[::-1].copy()
    if order == "random":
        rng = np.random.RandomState(seed)
        rank = np.empty(n, dtype=np.int32)
        rank[rng.permutation(n)] = np.arange(n, dtype=np.int32)
        return rank
    raise InputError(f"--label-order: {order!r} is not one of {', '.join(LABEL_ORDERS)}")
