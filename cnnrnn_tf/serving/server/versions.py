"""The model's versions on disk: loaded, warmed up, served and unloaded as TF Serving does."""
from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Dict, List, Optional, Tuple

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    prediction_log_pb2,
)

from cnnrnn_tf import uri
from cnnrnn_tf.serving.contract import SAVED_MODEL_PB
from cnnrnn_tf.serving.server.status import MAX_WARMUP_RECORDS, RequestError, WARMUP_FILE, _tf_error_message
from cnnrnn_tf.serving.server.status import State

log = logging.getLogger("cnnrnn_tf.serving")


def _fingerprint(path: str) -> Tuple:
    """What changes when any file under a version folder is added, grown or rewritten.

    Through tf.io.gfile, so it works on object stores (there: size and modification time
    of every object under the prefix)."""
    entries = []
    try:
        walk = list(tf.io.gfile.walk(path))
    except tf.errors.OpError:
        return ()
    for root, _, files in walk:
        for name in files:
            full = uri.join(root, name)
            try:
                st = tf.io.gfile.stat(full)
            except tf.errors.OpError:
                continue
            entries.append((full[len(path):].lstrip("/"), st.length, st.mtime_nsec))
    return tuple(sorted(entries))


# --------------------------------------------------------------------------- a loaded version
class ServableVersion:
    """One loaded SavedModel version: its signature defs (as TF Serving reads them), functions."""

    def __init__(self, version: int, path: str):
        self.version = int(version)
        self.path = path
        proto = saved_model_pb2.SavedModel()
        with tf.io.gfile.GFile(uri.join(path, SAVED_MODEL_PB), "rb") as f, \
                warnings.catch_warnings():
            warnings.simplefilter("error")  # protobuf warns (not raises) on some corrupt files
            proto.ParseFromString(f.read())
        if not proto.meta_graphs:
            raise ValueError("saved_model.pb holds no MetaGraphDef")
        self.signature_defs = dict(proto.meta_graphs[0].signature_def)
        self._loaded = tf.saved_model.load(path)  # keeps the variables alive
        self.functions = dict(self._loaded.signatures)

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        out = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in self.signature_defs.items():
            out.signature_def[name].CopyFrom(sig)
        return out


# --------------------------------------------------------------------------- versions on disk
class ModelManager:
    """Loads, swaps and unloads the versions of one model under its base path.

    Readers (request threads) take ``self._versions`` without a lock: it is a
    dict that is replaced, never changed in place. Only the poll thread writes.
    """

    def __init__(self, name: str, base_path: str, num_versions: int = 2,
                 poll_seconds: float = 2.0, warmup: bool = True, run_request=None):
        self.name = name
        self.base_path = uri.absolute(base_path).rstrip("/") or "/"
        self.num_versions = max(1, int(num_versions))
        self.poll_seconds = float(poll_seconds)
        self.warmup = warmup
        self._versions: Dict[int, ServableVersion] = {}
        self._status: Dict[int, Tuple[int, int, str]] = {}  # version -> (state, code, message)
        self._failed: Dict[int, Tuple] = {}  # version -> fingerprint that failed
        self._seen: Dict[int, Tuple] = {}  # version -> fingerprint at the last poll
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # (servable, PredictRequest) -> response: runs the warmup requests of a new version
        # (the prediction core's SignatureRunner.run); None: no warmup replay.
        self.run_request = run_request

    # ---- reading
    @property
    def versions(self) -> Dict[int, ServableVersion]:
        return self._versions

    def resolve(self, spec) -> ServableVersion:
        """model_spec -> the loaded version, or RequestError as TF Serving words it."""
        if spec.name != self.name:
            what = (f"Specific({spec.name}, {spec.version.value})" if spec.HasField("version")
                    else f"Latest({spec.name})")
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {what}")
        versions = self._versions
        if spec.HasField("version"):
            found = versions.get(spec.version.value)
            if found is None:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({spec.name}, {spec.version.value})"
                    f" (loaded versions: {sorted(versions) or 'none'})")
            return found
        if spec.version_label:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {spec.version_label} "
                               "(this server has no version labels; use model_spec.version)")
        if not versions:  # TF Serving's basic_manager.cc: NOT_FOUND, as for an unknown model
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Latest({spec.name}) (no version loaded; "
                f"waiting for {self.base_path}/<version>/saved_model.pb)")
        return versions[max(versions)]

    def status(self, spec) -> List[get_model_status_pb2.ModelVersionStatus]:
        if spec.name != self.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        status = dict(self._status)
        if spec.HasField("version"):
            if spec.version.value not in status:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {spec.version.value} of model "
                                   f"{spec.name}")
            status = {spec.version.value: status[spec.version.value]}
        if not status:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        out = []
        for version in sorted(status, reverse=True):
            state, code, message = status[version]
            item = get_model_status_pb2.ModelVersionStatus(version=version, state=state)
            item.status.error_code = code
            item.status.error_message = message
            out.append(item)
        return out

    # ---- the folder
    def on_disk(self) -> Dict[int, str]:
        """Integer version folders that hold a saved_model.pb."""
        found = {}
        try:
            names = tf.io.gfile.listdir(self.base_path)
        except tf.errors.OpError:
            return found
        for name in names:
            name = name.rstrip("/")  # object stores list "folders" as "1/"
            if not name.isdigit():
                continue
            path = uri.join(self.base_path, name)
            try:
                if tf.io.gfile.exists(uri.join(path, SAVED_MODEL_PB)):
                    found[int(name)] = path
            except tf.errors.OpError:
                continue
        return found

    def poll_once(self, initial: bool = False) -> None:
        """Loads what should be loaded, swaps it in, unloads what should not."""
        with self._write_lock:
            disk = self.on_disk()
            prints = {v: _fingerprint(p) for v, p in disk.items()}
            seen, self._seen = self._seen, prints
            loaded = dict(self._versions)
            for version, fp in prints.items():  # changed files: a failed version may load now
                if version in self._failed and self._failed[version] != fp:
                    del self._failed[version]
            candidates = sorted((v for v in disk if v not in self._failed), reverse=True)
            aspired = candidates[: self.num_versions]
            for version in aspired:
                if version in loaded or self._stop.is_set():
                    continue
                if not initial and seen.get(version) != prints[version]:
                    continue  # still being written (or just appeared): next poll
                servable = self._load(version, disk[version], prints[version])
                if servable is not None:
                    loaded[version] = servable
            keep = {v: loaded[v] for v in aspired if v in loaded}
            # Until newer versions are loaded, keep older loaded ones that are still on disk.
            for version in sorted(loaded, reverse=True):
                if len(keep) >= self.num_versions:
                    break
                if version not in keep and (version in disk or not disk):
                    keep[version] = loaded[version]
            for version in set(self._versions) - set(keep):
                log.info("model %s: unloading version %d", self.name, version)
                self._status[version] = (State.END, 0, "")
            if keep.keys() != self._versions.keys() or any(
                    keep[v] is not self._versions.get(v) for v in keep):
                self._versions = keep  # the atomic swap
                log.info("model %s: serving versions %s (default %s)", self.name,
                         sorted(keep), max(keep) if keep else None)
            if not disk and self._seen != seen:
                log.warning("model %s: no version folders with saved_model.pb under %s",
                            self.name, self.base_path)

    def _load(self, version: int, path: str, fp: Tuple) -> Optional[ServableVersion]:
        self._status[version] = (State.LOADING, 0, "")
        started = time.monotonic()
        try:
            servable = ServableVersion(version, path)
            warmed = self._run_warmup(servable) if self.warmup else 0
        except Exception as exc:  # a broken version: log once, skip until its files change
            first = (_tf_error_message(exc) if isinstance(exc, tf.errors.OpError)
                     else (str(exc).strip().splitlines() or [""])[0])
            log.error("model %s: version %d at %s failed to load, skipped: %s: %s",
                      self.name, version, path, type(exc).__name__, first)
            self._failed[version] = fp
            self._status[version] = (State.END, grpc.StatusCode.UNKNOWN.value[0],
                                     f"{type(exc).__name__}: {first}")
            return None
        self._status[version] = (State.AVAILABLE, 0, "")
        log.info("model %s: loaded version %d in %.1f s%s", self.name, version,
                 time.monotonic() - started, f" ({warmed} warmup requests)" if warmed else "")
        return servable

    def _run_warmup(self, servable: ServableVersion) -> int:
        """Replays assets.extra/tf_serving_warmup_requests like TF Serving; raises on failure."""
        path = uri.join(servable.path, WARMUP_FILE)
        if self.run_request is None or not tf.io.gfile.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
            entry = prediction_log_pb2.PredictionLog()
            entry.ParseFromString(record)
            if entry.WhichOneof("log_type") != "predict_log":
                continue
            try:
                self.run_request(servable, entry.predict_log.request)
            except RequestError as exc:
                raise ValueError(f"warmup request {count} failed: {exc.code.name}: {exc.message}")
            count += 1
        return count

    # ---- the poll thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll_loop, name=f"poll-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception as exc:  # never let the poll thread die
                log.error("model %s: polling %s failed: %s: %s", self.name, self.base_path,
                          type(exc).__name__, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
