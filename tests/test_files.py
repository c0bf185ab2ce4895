"""Result files are written atomically: a killed writer leaves the previous file (or none), never half a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from faultllm import files


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"accuracy": 0.9})
    writer = textwrap.dedent(f"""
        import sys, time
        from faultllm.files import atomic_path
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
    from faultllm import plots
    from faultllm.reporting import write_table

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
