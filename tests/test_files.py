"""Result files are written atomically: a killed writer leaves the previous file (or none), never half a file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from faultllm.runtime import files


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"accuracy": 0.9})
    writer = textwrap.dedent(f"""
        import sys, time
        from faultllm.runtime.files import atomic_path
        with atomic_path({str(target)!r}) as temporary:
            with open(temporary, "w") as f:
                f.write('{{"accuracy": 0.')  # half of the new file
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert json.loads(target.read_text()) == {"accuracy": 0.9}  # the old file, whole


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "trials.csv"
    files.write_csv(pd.DataFrame({"a": [1]}), target)
    with pytest.raises(RuntimeError), files.atomic_path(target) as temporary:
        temporary.write_text("a\n2\n")
        raise RuntimeError("killed")
    assert target.read_text() == "a\n1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]


def test_result_writers_rename_into_place(tmp_path, monkeypatch):
    from faultllm.compare import plots
    from faultllm.compare.tables import write_table

    renamed = []
    replace = os.replace
    monkeypatch.setattr(
        files.os, "replace", lambda src, dst: renamed.append(os.path.basename(dst)) or replace(src, dst)
    )
    write_table(pd.DataFrame({"": ["lora_r"], "value": [8]}), tmp_path / "table_4_1")
    files.write_json(tmp_path / "table_4_1.json", {})
    plots.confusion_matrix([[1, 0], [0, 1]], [0, 1], tmp_path / "confusion_matrix.png", "test")
    assert renamed == ["table_4_1.md", "table_4_1.csv", "table_4_1.json", "confusion_matrix.png"]
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")  # the format still from the suffix


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    adapter = tmp_path / "adapter"
    with files.atomic_directory(adapter) as temporary:
        (temporary / "adapter_model.safetensors").write_text("old")
    with pytest.raises(RuntimeError), files.atomic_directory(adapter) as temporary:
        (temporary / "adapter_model.safetensors").write_text("half of the ne")
        raise RuntimeError("killed mid-save")
    assert (adapter / "adapter_model.safetensors").read_text() == "old"
    with files.atomic_directory(adapter) as temporary:
        (temporary / "adapter_config.json").write_text("{}")
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json"]  # the new one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # nothing left beside it


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "faultllm"
# What writes a file itself: a raw one must write into the temporary a faultllm.runtime.files context gives.
RAW_WRITERS = re.compile(
    r"\.(to_csv|to_parquet|write_text|write_bytes|savefig|to_pickle)\(|\.to_json\([^)]|(json|joblib|pickle)\.dump\("
    r"|np\.save\w*\(|torch\.save\(|open\([^)]*,\s*[\"'][rbt]*[wax+]"
)
ATOMIC_BINDING = re.compile(r"(?:atomic_path|atomic_directory)\([^)]*\)\s+as\s+(\w+)")
# append-only: the failed command's last log line; a torn line is harmless and the log is no result
NOT_RESULTS = {("cli.py", '(run_dir / "faultllm.log").open("a")')}


def test_no_module_writes_a_file_in_place():
    raw = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module == "files.py":
            continue
        text = path.read_text()
        temporaries = set(ATOMIC_BINDING.findall(text))
        for number, line in enumerate(text.splitlines(), 1):
            if not RAW_WRITERS.search(line) or any(module == m and snippet in line for m, snippet in NOT_RESULTS):
                continue
            if not any(re.search(rf"\b{name}\b", line) for name in temporaries):
                raw.append(f"{module}:{number}: {line.strip()}")
    assert not raw, "write through faultllm.runtime.files (atomic_path/write_csv/save_figure...):\n" + "\n".join(raw)


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-previous-file", "first-write"])
def test_a_kill_during_a_large_predictions_write_leaves_the_previous_file_or_none(tmp_path, previous):
    target = tmp_path / "predictions.csv"
    old = pd.DataFrame({"row": [0, 1], "label": [3, 4], "prediction": [3, 1]})
    if previous:
        files.write_csv(old, target)
    writer = textwrap.dedent(f"""
        import numpy as np, pandas as pd
        from faultllm.runtime.files import write_csv
        rows = 3_000_000  # seconds of writing: killed long before the end
        frame = pd.DataFrame({{"row": np.arange(rows), "label": np.arange(rows) % 7, "score": np.linspace(0, 1, rows)}})
        write_csv(frame, {str(target)!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", writer])
    try:
        _wait_for_a_growing_temporary(tmp_path, child)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL  # killed mid-write, not finished
    if previous:
        pd.testing.assert_frame_equal(pd.read_csv(target), old)  # the previous file, whole
    else:
        assert not target.exists()


def _wait_for_a_growing_temporary(directory: Path, child: subprocess.Popen, size: int = 1 << 20) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if any(p.stat().st_size > size for p in directory.glob(".predictions.*.tmp.csv")):
            return
        time.sleep(0.02)
    raise AssertionError(f"no temporary predictions file grew past {size} bytes (writer exit {child.poll()})")


def test_results_are_fsynced_file_then_directory_and_figures_are_not(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or fsync(fd))
    files.write_json(tmp_path / "metrics.json", {"accuracy": 1.0})
    files.write_csv(pd.DataFrame({"trial": [0]}), tmp_path / "trials.csv")
    assert [Path(p).name for p in synced[1::2]] == [tmp_path.name] * 2  # the rename is on disk too
    assert [Path(p).name.split(".")[1] for p in synced[::2]] == ["metrics", "trials"]  # the temporary, before it
    synced.clear()
    with files.atomic_path(tmp_path / "figure.png") as temporary:
        temporary.write_bytes(b"\x89PNG")
    assert synced == []
