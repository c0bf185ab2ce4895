"""faultllm/search/heartbeats.py is the only place that reaches below Optuna's public API: these tests pin what it
relies on, so that an Optuna release that changes it fails here, not in a user's sweep."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import optuna
import pytest

from faultllm.search.heartbeats import heartbeat_thread, last_heartbeats, stale_trial_ids, storage_of
from faultllm.search.studies import open_study

ROOT = Path(__file__).resolve().parents[1]
PRIVATE = re.compile(r"\boptuna(\.\w+)*\._\w|\._storage\b|\._study_id\b|\._trial_id\b")


def test_only_the_adapter_touches_optunas_private_api():
    touching = {path.name for path in (ROOT / "src" / "faultllm").rglob("*.py") if PRIVATE.search(path.read_text())}
    assert touching == {"heartbeats.py"}


def test_the_fast_moving_dependencies_are_bounded_to_the_tested_minor_versions():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    requirements = {
        (req := Requirement(line)).name: req
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    for name in ("optuna", "transformers", "trl", "peft"):
        assert any(spec.operator == "<" for spec in requirements[name].specifier), name
        assert requirements[name].specifier.contains(version(name)), (name, version(name))
    assert requirements["torch"].specifier.contains("2.13.0")  # torch's bound stays loose


def test_the_adapter_pins_optunas_heartbeat_internals(compose_cfg, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = compose_cfg("hpo", [f"hpo.storage={url}", "hpo.heartbeat_interval=1"])
    study = open_study(cfg.hpo, 0, tmp_path)
    storage = storage_of(study)
    study_id = storage.get_study_id_from_name("faultllm")

    def trial_id(number: int) -> int:
        return storage.get_trial_id_from_study_id_trial_number(study_id, number)

    study.ask()  # Optuna's cache creates trials through the storage's _create_new_trial
    study.enqueue_trial({"x": 1})
    study.ask()  # a queued trial is taken through set_trial_state_values
    assert set(last_heartbeats(storage, [trial_id(0), trial_id(1)])) == {trial_id(0), trial_id(1)}
    plain = optuna.load_study(study_name="faultllm", storage=url)  # Optuna's own RDBStorage: no heartbeat
    beaten, unbeaten = plain.ask(), plain.ask()
    assert not last_heartbeats(storage, [trial_id(beaten.number), trial_id(unbeaten.number)])
    with heartbeat_thread(storage, trial_id(beaten.number)):  # beats at once, then every interval
        pass
    assert trial_id(beaten.number) in last_heartbeats(storage, [trial_id(beaten.number)])
    assert stale_trial_ids(storage, study_id) == []  # none stale yet; a running trial without a heartbeat ...
    assert trial_id(unbeaten.number) in last_heartbeats(storage, [trial_id(unbeaten.number)])  # ... gets one


def test_a_journal_file_has_no_heartbeats_to_read(tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    assert stale_trial_ids(JournalStorage(JournalFileBackend(str(tmp_path / "study.log"))), 0) == []
