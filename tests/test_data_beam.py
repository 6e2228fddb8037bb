"""The converters' Beam path (cnnrnn_tf.data.beam_writer) against the single-process one.

Most tests run Beam's DirectRunner in_memory (one process, about a second); one runs
the CLI's default, multi_processing with 2 worker processes (about 30 s on 2 cores,
nearly all of it the workers' start-up).
"""
import json
import os

import pytest

pytest.importorskip("apache_beam")

from cnnrnn_tf.cli.app import main  # noqa: E402
from cnnrnn_tf.data import beam_writer, writing  # noqa: E402
from cnnrnn_tf.data.converters import convert_coco, convert_csv, convert_voc  # noqa: E402
from cnnrnn_tf.errors import InputError  # noqa: E402
from cnnrnn_tf.schema import iter_records, list_shards  # noqa: E402
from tests.test_data_converters import (  # noqa: E402,F401  (fixtures)
    _coco, _csv_with_bad_images, _rgb, csv_dir, voc_root)

IN_MEMORY = dict(beam=True, beam_args=["--direct_running_mode=in_memory"])


def _features(folder):
    """Every record as (id, labels, image bytes), order-independent."""
    return sorted((r.image_id, tuple(r.labels), r.image) for r in iter_records(str(folder)))


def _same_output(single, beam, same_shards=True):
    assert _features(beam) == _features(single)
    counts = [json.loads((d / "label_counts.json").read_text()) for d in (single, beam)]
    if not same_shards:
        for c in counts:
            del c["shards"]
    assert counts[1] == counts[0]
    assert not any(name.startswith(beam_writer.TMP_PREFIX) for name in os.listdir(beam))


def _csv(csv_dir, rows=12):
    lines = ["image,labels"]
    names = ["img/a.png", "img/b.jpg", '"img/c, d.png"', "img/e.bmp"]
    for i in range(rows):
        lines.append(f"{names[i % 4]},l{i % 3}|l{i % 5}")
    path = csv_dir / "many.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pipeline_args_defaults_and_pass_through():
    assert beam_writer.pipeline_args() == ["--direct_running_mode=multi_processing",
                                           "--direct_num_workers=2"]
    assert beam_writer.pipeline_args(["--direct_num_workers=4"], 2) == [
        "--direct_running_mode=multi_processing", "--direct_num_workers=4"]
    assert beam_writer.pipeline_args(["--direct_running_mode=in_memory"]) == [
        "--direct_running_mode=in_memory"]
    dataflow = ["--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/t"]
    assert beam_writer.pipeline_args(dataflow, 3) == ["--direct_num_workers=3", *dataflow]


def test_csv_beam_matches_single_process_byte_for_byte(csv_dir, tmp_path):
    path = _csv(csv_dir)
    single = convert_csv(str(path), str(tmp_path / "single"), records_per_shard=5)
    beam = convert_csv(str(path), str(tmp_path / "beam"), records_per_shard=5, **IN_MEMORY)
    assert (beam.written, beam.labels, beam.skipped) == (single.written, single.labels, 0)
    assert [os.path.basename(p) for p in beam.shards] == [
        f"data-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    _same_output(tmp_path / "single", tmp_path / "beam")
    for a, b in zip(single.shards, beam.shards):  # no skipped image: the same shards
        assert open(a, "rb").read() == open(b, "rb").read()


def test_coco_and_voc_beam_match_single_process(tmp_path, voc_root):
    path, images, _ = _coco(tmp_path)
    single = convert_coco(str(path), str(images), str(tmp_path / "c1"), records_per_shard=1)
    beam = convert_coco(str(path), str(images), str(tmp_path / "c2"), records_per_shard=1,
                        **IN_MEMORY)
    assert (beam.written, beam.skipped, beam.skip_reason) == (2, 1, "no annotations")
    assert len(beam.shards) == len(single.shards) == 2
    _same_output(tmp_path / "c1", tmp_path / "c2")
    convert_voc(str(voc_root), "train", str(tmp_path / "v1"), include_difficult=True)
    summary = convert_voc(str(voc_root), "train", str(tmp_path / "v2"), include_difficult=True,
                          **IN_MEMORY)
    assert summary.written == 3
    _same_output(tmp_path / "v1", tmp_path / "v2")


def test_beam_skip_writes_the_report_and_drops_empty_shards(csv_dir, tmp_path):
    path = _csv_with_bad_images(csv_dir)
    single = convert_csv(str(path), str(tmp_path / "single"), on_bad_image="skip",
                         records_per_shard=2)
    beam = convert_csv(str(path), str(tmp_path / "beam"), on_bad_image="skip",
                       records_per_shard=1, **IN_MEMORY)
    assert (beam.written, beam.skipped, beam.bad_images) == (3, 3, 3)
    _same_output(tmp_path / "single", tmp_path / "beam", same_shards=False)
    assert (tmp_path / "beam" / "skipped.csv").read_text() == \
        (tmp_path / "single" / "skipped.csv").read_text().replace("/single/", "/beam/")
    # 6 one-image shards planned, 3 of them empty: published as 3, renumbered.
    assert [os.path.basename(p) for p in list_shards(str(tmp_path / "beam"))] == [
        f"data-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    assert beam.report == str(tmp_path / "beam" / "skipped.csv")


def test_beam_fail_names_the_first_bad_file_and_leaves_nothing(csv_dir, tmp_path):
    path = _csv_with_bad_images(csv_dir)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "README").write_text("keep me")
    with pytest.raises(InputError, match=r"l\.csv: line 3: image file .*missing\.png does not "
                                         r"exist \(and 2 more bad image files\)$"):
        convert_csv(str(path), str(out), records_per_shard=2, **IN_MEMORY)
    assert os.listdir(out) == ["README"]  # no shard, no temporary folder
    (csv_dir / "all_bad.csv").write_text("image,labels\nimg/nope.png,cat\nnotes.txt,dog\n")
    with pytest.raises(InputError, match=r"all 2 image files are bad, nothing to write"):
        convert_csv(str(csv_dir / "all_bad.csv"), str(tmp_path / "new" / "out"),
                    on_bad_image="skip", **IN_MEMORY)
    assert not (tmp_path / "new").exists()


def test_beam_worker_error_leaves_nothing(csv_dir, tmp_path, monkeypatch):
    def broken(path, where):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(writing, "read_checked_image", broken)  # in_memory: same process
    with pytest.raises(Exception, match="disk on fire"):
        convert_csv(str(_csv(csv_dir)), str(tmp_path / "out"), **IN_MEMORY)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_beam_multi_processing_two_workers(csv_dir, tmp_path, capsys):
    path = _csv_with_bad_images(csv_dir)
    common = ["data", "from-csv", "--csv", str(path), "--on-bad-image", "skip"]
    assert main([*common, "--out", str(tmp_path / "single"), "--quiet"]) == 0
    assert main([*common, "--out", str(tmp_path / "beam"), "--beam",
                 "--direct-num-workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'beam'}: wrote 3 examples with 3 labels in 1 shard; skipped 3" in out
    _same_output(tmp_path / "single", tmp_path / "beam")
    assert main([*common, "--out", str(tmp_path / "x"), "--beam-arg=--runner=X"]) == 2
    assert "--beam-arg: only with --beam" in capsys.readouterr().err
