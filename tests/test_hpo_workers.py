"""Several HPO workers on one study: seeds per worker, a dead worker's trial retried, one refit,
PostgreSQL for real (a server the test starts itself)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from faultllm.errors import FaultLLMError
from faultllm.jobs.hpo import run as search
from tests.test_hpo import _hpo_process, _states, hpo_overrides


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*command) -> list[str]:
    """The server refuses to run as root: run its tools as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *map(str, command)] if os.geteuid() == 0 else list(map(str, command))


@pytest.fixture(scope="module")
def postgres_url():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    bin_dir, port = Path(bins[-1]), _free_port()
    base = Path(tempfile.mkdtemp(prefix="faultllm-pg-"))
    base.chmod(0o777)  # the postgres user owns the cluster inside
    subprocess.run(
        _as_postgres(bin_dir / "initdb", "-D", base / "data", "-A", "trust", "-U", "postgres"),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
    start = [bin_dir / "pg_ctl", "-D", base / "data", "-o", options, "-l", base / "server.log", "-w", "start"]
    subprocess.run(_as_postgres(*start), check=True, capture_output=True)
    try:
        subprocess.run(
            _as_postgres(bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "faultllm"), check=True
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/faultllm"
    finally:
        subprocess.run(
            _as_postgres(bin_dir / "pg_ctl", "-D", base / "data", "-m", "immediate", "stop"), capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def test_bad_worker_counts_and_storages_are_one_line_errors(compose_cfg, tmp_path, monkeypatch):
    with pytest.raises(FaultLLMError, match=r"hpo.workers=0: expected at least 1 worker process"):
        search(compose_cfg("hpo", ["hpo.workers=0"]), tmp_path / "a")
    with pytest.raises(FaultLLMError, match=r"hpo.storage=redis://x/0: unknown scheme 'redis'"):
        search(compose_cfg("hpo", ["model=tiny", "hpo.storage=redis://x/0"]), tmp_path / "b")
    with pytest.raises(FaultLLMError, match=r"postgresql://postgres@127.0.0.1:1/x: cannot open \(OperationalError"):
        search(compose_cfg("hpo", ["model=tiny", "hpo.storage=postgresql://postgres@127.0.0.1:1/x"]), tmp_path / "c")
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "psycopg" in name else find_spec(name, *a)
    )
    with pytest.raises(FaultLLMError, match=r"no PostgreSQL driver; pip install -e '.\[postgres\]'"):
        search(compose_cfg("hpo", ["model=tiny", "hpo.storage=postgresql://postgres@127.0.0.1:1/x"]), tmp_path / "d")


def _heartbeats(db: Path) -> list:
    try:
        return sqlite3.connect(db).execute("SELECT trial_id FROM trial_heartbeats").fetchall()
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_retried_by_the_other(tiny_cache, easy_csv, tmp_path):
    db = tmp_path / "shared.db"
    shared = [
        *hpo_overrides(tiny_cache, easy_csv, 4), f"hpo.storage=sqlite:///{db}", "hpo.refit=false",
        "hpo.heartbeat_interval=1", "hpo.grace_period=3",
    ]  # fmt: skip
    logs = [open(tmp_path / f"worker{w}.log", "w") for w in range(2)]  # noqa: SIM115
    victim = _hpo_process([*shared, "hpo.worker_index=0", f"hydra.run.dir={tmp_path / 'w0'}"], logs[0])
    deadline = time.time() + 300
    while time.time() < deadline and not _heartbeats(db) and victim.poll() is None:
        time.sleep(0.2)  # until the victim is mid-trial: running, with a heartbeat recorded
    survivor = _hpo_process([*shared, "hpo.worker_index=1", f"hydra.run.dir={tmp_path / 'w1'}"], logs[1])
    os.killpg(victim.pid, signal.SIGKILL)  # a crashed or preempted node: no goodbye to the storage
    victim.wait()
    assert survivor.wait(timeout=600) == 0, (tmp_path / "worker1.log").read_text()[-3000:]
    for log in logs:
        log.close()
    states = _states(db)
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 4 and "RUNNING" not in states and "FAIL" in states
    rows = (
        sqlite3.connect(db)
        .execute("SELECT a.value_json FROM trial_system_attributes a WHERE a.key = 'failed_trial'")
        .fetchall()
    )
    assert rows  # the dead worker's trial was queued again and run by the survivor
    assert (tmp_path / "w1" / "table_4_1.md").exists() and not (tmp_path / "w0" / "table_4_1.md").exists()


@pytest.mark.slow
def test_two_worker_processes_on_postgresql_share_one_study_and_refit_once(
    tiny_cache, easy_csv, tmp_path, postgres_url
):
    import optuna

    overrides = [*hpo_overrides(tiny_cache, easy_csv, 4), "hpo.workers=2", f"hpo.storage={postgres_url}"]
    result = subprocess.run(
        [sys.executable, "-m", "faultllm", "hpo", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="faultllm", storage=postgres_url.replace("://", "+psycopg://")).trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len({tuple(sorted(t.params.items())) for t in finished}) == 4
    assert result.stdout.count("trained:") == 1 and result.stdout.count("hpo: ") == 1  # one refit, one Table 4.1
    assert (tmp_path / "run" / "final" / "metrics.json").exists() and (tmp_path / "run" / "table_4_1.md").exists()


def test_the_refit_is_claimed_once_and_freed_by_a_failed_or_killed_claimant(compose_cfg, tmp_path):
    from faultllm.hpo import _claims, fail_interrupted, open_study, refit_claim

    cfg = compose_cfg("hpo", [f"hpo.storage=sqlite:///{tmp_path / 'study.db'}"])
    study, other = open_study(cfg.hpo, 0, tmp_path), open_study(cfg.hpo, 0, tmp_path, worker_index=1)
    with pytest.raises(RuntimeError), refit_claim(study) as mine:
        assert mine
        with refit_claim(other) as theirs:
            assert not theirs  # held by the first worker
        raise RuntimeError("the refit failed")
    _claims(other).ask()  # freed by the failure, then claimed by a worker killed mid-refit: left running
    with refit_claim(study) as mine:
        assert not mine  # a running claim holds the refit
    fail_interrupted(study)  # what a rerun on the run directory's own database does first
    with refit_claim(study) as mine:
        assert mine
    with refit_claim(other) as theirs:
        assert not theirs  # done once: nobody refits again
