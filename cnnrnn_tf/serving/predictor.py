"""Label sets for image files or bytes, from a MODEL_DIR (what ``cnnrnn predict`` uses)."""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import read_bytes
from cnnrnn_tf.evaluation.evaluate import decode_function
from cnnrnn_tf.model_dir import load_model_dir
from cnnrnn_tf.inputs.images import TOO_LARGE_MESSAGE, check_image_bytes
from cnnrnn_tf.serving.contract import format_result
from cnnrnn_tf.inputs.preprocessor import Preprocessor


def read_image_file(path: str) -> bytes:
    return read_bytes(path, "image file")


def decode_image_bytes(data: bytes, image_size: int, name: str = "image") -> np.ndarray:
    """Decodes one image eagerly, turning bad bytes into an InputError naming it.

    The bytes are checked with Pillow first (check_image_bytes: header size limit,
    complete decode), so libjpeg never prints its own complaint to stderr.
    """
    check_image_bytes(data, name)
    try:
        pixels = Preprocessor(image_size).decode_image(tf.constant(data))
        return pixels.numpy().astype(np.float32)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        if TOO_LARGE_MESSAGE in exc.message:
            raise InputError(f"{name}: {TOO_LARGE_MESSAGE}") from None
        raise InputError(f"{name}: not a decodable PNG/JPEG/GIF/BMP image") from None


class Predictor:
    """Label sets from a model; with ``attention=True`` (a ``--decoder attention`` model)
    also the attention map of every predicted label."""

    def __init__(self, model, vocab, image_size: int, beam_size: Optional[int] = None,
                 attention: bool = False, name: str = "the model"):
        self.model = model
        self.vocab = vocab
        self.image_size = int(image_size)
        self._fn = decode_function(model, beam_size)
        if attention and not model.attends:
            raise InputError(f"--attention: {name} has no attention maps (it was not trained "
                             "with --decoder attention)")
        self.attention = bool(attention)
        self._maps = tf.function(model.attention_maps) if self.attention else None

    @classmethod
    def from_model_dir(cls, path: str, beam_size: Optional[int] = None,
                       attention: bool = False) -> "Predictor":
        loaded = load_model_dir(path)
        return cls(loaded.model, loaded.vocab, loaded.image_size, beam_size,
                   attention=attention, name=path)

    def predict_arrays(self, images: np.ndarray) -> List[List[tuple]]:
        """float32 [B, S, S, 3] pixels -> per image, a list of (label, score), or of
        (label, score, attention map [h, w]) with ``attention``."""
        images = tf.convert_to_tensor(images, tf.float32)
        out = self._fn(images)
        ids, scores = out["label_ids"].numpy(), out["scores"].numpy()
        maps = self._maps(images, out["label_ids"]).numpy() if self.attention else None
        results = []
        for row, (row_ids, row_scores) in enumerate(zip(ids, scores)):
            pairs = []
            for j, (i, s) in enumerate(zip(row_ids, row_scores)):
                if i >= 0:
                    pairs.append((self.vocab.labels[i], float(s))
                                 + (() if maps is None else (maps[row, j],)))
            results.append(pairs)
        return results

    def predict_bytes(self, items: Iterable[tuple], batch_size: int = 32) -> Iterator[Dict]:
        """items: (name, image bytes) pairs -> JSON-able dicts, in order."""
        batch: List[np.ndarray] = []
        names: List[str] = []
        for name, data in items:
            batch.append(decode_image_bytes(data, self.image_size, name))
            names.append(name)
            if len(batch) == batch_size:
                yield from self._flush(names, batch)
                batch, names = [], []
        if batch:
            yield from self._flush(names, batch)

    def _flush(self, names, batch):
        for name, pairs in zip(names, self.predict_arrays(np.stack(batch))):
            yield format_result(name, [p[0] for p in pairs], [p[1] for p in pairs],
                                [p[2] for p in pairs] if self.attention else None)

    def predict_files(self, paths: Sequence[str], batch_size: int = 32) -> Iterator[Dict]:
        # Read and check every file first, so a bad file fails before any output.
        items = [(p, read_image_file(p)) for p in paths]
        for name, data in items:
            decode_image_bytes(data, self.image_size, name)
        return self.predict_bytes(items, batch_size)
