"""The model folder an export writes into: versions reserved under a lock, temporary folders of interrupted
exports removed, never a version; and a re-export whose run's dataset is gone. Fast: the SavedModel writer (or
the whole export) is stubbed, only the folder logic and export_run's choices run."""

from __future__ import annotations

import os
import threading

import pytest

from mtl_keras.errors import ExportError
from mtl_keras.serving import export


@pytest.fixture
def stub_writer(monkeypatch):
    """export.export with a SavedModel writer that only writes saved_model.pb; `calls` sees each folder."""
    calls = []

    def write_saved_model(model, folder, class_names, top_k, max_pixels):
        calls.append(folder)
        (folder / "saved_model.pb").write_bytes(b"stub")

    monkeypatch.setattr(export.signatures, "write_saved_model", write_saved_model)
    return calls


def _entries(model_dir) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name != ".lock")


def test_interrupted_exports_temporary_folders_are_removed_but_live_ones_kept(tmp_path, stub_writer, capsys):
    from mtl_keras import locks

    model_dir = tmp_path / "m"
    stale = model_dir / ".tmp-1-killed"  # what a kill -9 mid-export leaves: nobody holds it
    (stale / "variables").mkdir(parents=True)
    (stale / "saved_model.pb").write_bytes(b"half")
    live = model_dir / ".tmp-2-running"  # another export, still writing: it holds its folder
    live.mkdir()
    held = locks.hold(live)
    try:
        version = export.export(None, str(tmp_path), "m", onnx=False)
        assert version.name == "3"  # past the live export's reserved version 2
        assert _entries(model_dir) == [".tmp-2-running", "3"]
        assert f"removed {stale}, left by an interrupted export" in capsys.readouterr().out
    finally:
        os.close(held)
    assert export.export(None, str(tmp_path), "m", onnx=False).name == "4"  # its holder gone: stale now
    assert _entries(model_dir) == ["3", "4"]


def test_temporary_folders_are_never_versions_to_a_server(tmp_path, stub_writer):
    # TF Serving (and next_version) take a child folder as a version only when its name is an integer.
    export.export(None, str(tmp_path), "m", onnx=False)
    assert all(not p.name.isdigit() for p in stub_writer)
    assert all(p.name.startswith(".tmp-1-") for p in stub_writer)


def test_concurrent_exports_to_one_model_folder_get_their_own_versions(tmp_path, monkeypatch):
    both_writing = threading.Barrier(2, timeout=20)

    def write_saved_model(model, folder, class_names, top_k, max_pixels):
        both_writing.wait()  # both exports have picked their version before either renames
        (folder / "saved_model.pb").write_bytes(b"stub")

    monkeypatch.setattr(export.signatures, "write_saved_model", write_saved_model)
    results, errors = [], []

    def one_export():
        try:
            results.append(export.export(None, str(tmp_path), "m", onnx=False).name)
        except Exception as e:  # the loser used to fail at the rename, after the whole export
            errors.append(e)

    threads = [threading.Thread(target=one_export) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and sorted(results) == ["1", "2"]
    assert _entries(tmp_path / "m") == ["1", "2"]


def test_an_explicit_version_being_written_or_existing_is_one_line(tmp_path, stub_writer):
    from mtl_keras import locks

    model_dir = tmp_path / "m"
    live = model_dir / ".tmp-5-running"
    live.mkdir(parents=True)
    held = locks.hold(live)
    try:
        with pytest.raises(ExportError, match=f"^export version {model_dir / '5'} is being written by another "
                                              "export; pick another --version$"):
            export.export(None, str(tmp_path), "m", version=5, onnx=False)
    finally:
        os.close(held)
    export.export(None, str(tmp_path), "m", version=7, onnx=False)
    with pytest.raises(ExportError, match=f"^export version {model_dir / '7'} exists; pick another --version"):
        export.export(None, str(tmp_path), "m", version=7, onnx=False)
    assert _entries(model_dir) == ["7"]


def test_version_folder_follows_the_umask(tmp_path, stub_writer):
    old = os.umask(0o027)
    try:
        version = export.export(None, str(tmp_path), "m", onnx=False)
    finally:
        os.umask(old)
    assert version.stat().st_mode & 0o777 == 0o750


def _run_folder(tmp_path, **settings):
    """A finished run's records (config.json, classes.json) for `settings`; the model is given in memory."""
    import json

    from mtl_keras import config as config_lib

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_lib.flat(config_lib.make(**settings))))
    (run / "classes.json").write_text(json.dumps({"fine": ["a", "b", "c", "d"], "coarse": ["x", "y"],
                                                  "fine_to_coarse": [0, 0, 1, 1]}))
    return run


def test_reexport_without_int8_needs_no_dataset(tmp_path, monkeypatch, capsys):
    import types

    from mtl_keras.serving import runs

    # The run's image folder has moved since training: --noint8 exports all the same (it used to need it).
    run = _run_folder(tmp_path, dataset="folder", data_dir=str(tmp_path / "moved"))
    exported = {}

    def fake_export(model, export_dir, model_name, **kwargs):
        exported.update(kwargs)
        return tmp_path / "e" / model_name / "1"

    monkeypatch.setattr(runs.export, "export", fake_export)
    model = types.SimpleNamespace(input_shape=(None, 16, 16, 3))
    result = runs.export_run(run, export_dir=str(tmp_path / "e"), model_name="m", int8=False, check=False, model=model)
    assert result["ok"] and exported["calibration_images"] is None
    assert exported["warmup_images"].shape == (runs.WARMUP_IMAGES, 16, 16, 3)  # random pixels stand in
    assert "note: the run's dataset cannot be read (" in capsys.readouterr().out
    with pytest.raises(ExportError, match=rf"^--workdir={run}: the run's dataset cannot be read \(.*\); int8 is timed "
                                          "and checked on its images: make it readable again or pass --noint8$"):
        runs.export_run(run, export_dir=str(tmp_path / "e"), model_name="m", int8=True, check=False, model=model)
