"""The curated schema that ExampleValidator checks every split against.

SchemaGen would infer a schema from whatever data arrives, so a broken data set
would validate against its own mistakes. The pipeline instead imports a curated
schema (ImportSchemaGen): the one SchemaGen inferred on the default data, then
tightened by hand (``schema/schema.pbtxt`` is the checked-in copy for the
default Fashion-outfits data):

* ``image/encoded``: bytes, in every example (presence min_fraction 1), exactly one value;
* ``image/labels``: bytes, in every example, at least one value, every value in the
  string domain ``labels``;
* ``image/id``: bytes, optional, exactly one value when present.

The label domain differs per data set, so the pipeline derives it from the labels
of the *training* split when it runs (:mod:`cnnrnn_pipeline.schema_gen`). A label
that occurs in the eval or test split but not in the training split is then an
``ENUM_TYPE_UNEXPECTED_STRING_VALUES`` anomaly; a missing ``image/labels`` is a
``FEATURE_TYPE_LOW_FRACTION_PRESENT`` anomaly.

:func:`copy_schema` imports a schema the user wrote (``--schema URI``, checked to
parse as a Schema proto) under the pipeline root, at a path named after its content
(so that ImportSchemaGen, whose cache key is the path, re-runs when it changes).
Both may be URIs (``s3://``, ``gs://``): the schema is read and written through TFX's
``fileio``.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable

from tfx.dsl.io import fileio

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from cnnrnn_tf import schema as tfexample_schema
from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError

LABEL_DOMAIN = "labels"
SCHEMA_FILE = "schema.pbtxt"
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", SCHEMA_FILE)


def curated_schema(label_names: Iterable[str]) -> schema_pb2.Schema:
    """The tightened schema with the label domain ``label_names`` (sorted)."""
    s = schema_pb2.Schema()
    image = s.feature.add(name=tfexample_schema.IMAGE_KEY, type=schema_pb2.BYTES)
    image.presence.min_fraction = 1.0
    image.presence.min_count = 1
    image.value_count.min = 1
    image.value_count.max = 1
    labels = s.feature.add(name=tfexample_schema.LABELS_KEY, type=schema_pb2.BYTES,
                           domain=LABEL_DOMAIN)
    labels.presence.min_fraction = 1.0
    labels.presence.min_count = 1
    labels.value_count.min = 1
    image_id = s.feature.add(name=tfexample_schema.ID_KEY, type=schema_pb2.BYTES)
    image_id.presence.min_count = 0
    image_id.value_count.min = 1
    image_id.value_count.max = 1
    domain = s.string_domain.add(name=LABEL_DOMAIN)
    domain.value.extend(sorted(set(label_names)))
    return s


def schema_text(label_names: Iterable[str]) -> str:
    return text_format.MessageToString(curated_schema(label_names))


def copy_schema(source: str, out_root: str) -> str:
    """Copies the user's schema (``--schema``) to ``out_root/schema/<content hash>/``; returns
    the copy's path."""
    try:
        with fileio.open(source, "r") as f:
            text = f.read()
    except Exception as exc:  # noqa: BLE001 - NotFoundError, permission, endpoint
        raise uri.storage_error(source, exc, "--schema cannot be read") from None
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        parsed = text_format.Parse(text, schema_pb2.Schema())
    except text_format.ParseError as exc:
        raise InputError(f"--schema {source}: not a Schema text proto ({exc})") from None
    if not any(f.name == tfexample_schema.LABELS_KEY for f in parsed.feature):
        raise InputError(f"--schema {source}: has no {tfexample_schema.LABELS_KEY} feature")
    return _write_text(text, out_root)


def _write_text(text: str, out_root: str) -> str:
    """Writes ``out_root/schema/<content hash>/schema.pbtxt`` once; returns its path.

    Local roots get an atomic rename; on an object store the single PUT of the file is
    itself atomic, so a reader sees either no schema or the whole one.
    """
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    folder = uri.join(out_root, "schema", digest)
    path = uri.join(folder, SCHEMA_FILE)
    if fileio.exists(path):
        return path
    fileio.makedirs(folder)
    if uri.is_remote(path):
        with fileio.open(path, "w") as f:
            f.write(text)
        return path
    tmp = path + ".tmp"
    with fileio.open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
