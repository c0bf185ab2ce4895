"""Several HPO workers on one study: seeds per worker, a dead worker's trial retried, one refit,
PostgreSQL for real (a server the test starts itself)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from faultllm.jobs.hpo import run as search
from faultllm.runtime.errors import FaultLLMError
from tests import postgres
from tests.test_hpo import _hpo_process, _states, complete_trials_ran_every_fold, hpo_overrides


def test_bad_worker_counts_and_storages_are_one_line_errors(compose_cfg, tmp_path, monkeypatch):
    with pytest.raises(FaultLLMError, match=r"hpo.workers=0: expected >= 1"):
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


def test_a_journal_file_is_refused_for_several_workers_and_recovered_when_alone(compose_cfg, tmp_path):
    """A journal has no heartbeats: a dead worker's trial would stay running while others wait for it. Alone, the
    rerun fails the killed trial and queues it again, as with the run directory's own database."""
    from faultllm.search.studies import fail_interrupted, open_study, sole_user

    journal = tmp_path / "study.log"
    for workers in ("hpo.workers=2", "hpo.worker_index=1"):  # here, or another machine's workers
        with pytest.raises(FaultLLMError, match=rf"^hpo.storage={journal}: a journal file has no heartbeats"):
            compose_cfg("hpo", [f"hpo.storage={journal}", workers])
    cfg = compose_cfg("hpo", [f"hpo.storage={journal}"])
    killed = open_study(cfg.hpo, 0, tmp_path).ask()
    killed.suggest_int("lora_r", 4, 256)  # then the process died: the trial is left running
    rerun = open_study(cfg.hpo, 0, tmp_path)
    assert sole_user(cfg.hpo) and not sole_user(compose_cfg("hpo", [f"hpo.storage=sqlite:///{tmp_path}/x.db"]).hpo)
    fail_interrupted(rerun, cfg.hpo.n_trials)
    assert [t.state.name for t in rerun.trials] == ["FAIL", "WAITING"]
    assert rerun.trials[1].user_attrs["retry_of"] == 0
    assert rerun.ask().suggest_int("lora_r", 4, 256) == killed.params["lora_r"]  # the killed trial's parameters


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
    states = list(_states(db).values())
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 4 and "RUNNING" not in states and "FAIL" in states
    rows = (
        sqlite3.connect(db)
        .execute("SELECT a.value_json FROM trial_system_attributes a WHERE a.key = 'failed_trial'")
        .fetchall()
    )
    assert rows  # the dead worker's trial was queued again and run by the survivor
    assert (tmp_path / "w1" / "table_4_1.md").exists() and not (tmp_path / "w0" / "table_4_1.md").exists()


def _children_cmdlines(pid: int) -> dict[int, str]:
    """{child pid: its command line, as every user of the machine can read it} of process `pid` (a child between
    fork and exec still shows the parent's; an ended one, not yet waited for, shows '')."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):  # a process that just ended
            continue
    return found


@pytest.mark.slow
def test_two_worker_processes_on_postgresql_share_one_study_and_refit_once(
    postgres_server, tiny_cache, easy_csv, tmp_path
):
    """With the password on the command line: the command warns once, and no worker's command line
    (/proc/PID/cmdline, readable by every user) holds it."""
    import optuna

    postgres_server.createdb("workers", owner="faultllm")
    url = postgres_server.url("workers", "faultllm", postgres.PASSWORD)
    overrides = [*hpo_overrides(tiny_cache, easy_csv, 4), "hpo.workers=2", f"hpo.storage={url}"]
    command = [sys.executable, "-m", "faultllm", "hpo", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        sweep, workers = subprocess.Popen(command, stdout=out, stderr=err), {}
        while sweep.poll() is None:
            children = _children_cmdlines(sweep.pid).items()
            workers |= {child: line for child, line in children if "hpo.worker_index=" in line}  # exec'd workers
            time.sleep(0.05)
    stdout, stderr = (tmp_path / "out.log").read_text(), (tmp_path / "err.log").read_text()
    assert sweep.returncode == 0, stderr[-3000:]
    assert len(workers) == 2 and all("hpo.storage=postgresql://faultllm:***@" in line for line in workers.values())
    assert not [line for line in workers.values() if postgres.PASSWORD in line]
    assert stderr.count("has its password on the command line") == 1  # the command's, not the workers'
    trials = optuna.load_study(study_name="faultllm", storage=url.replace("://", "+psycopg://")).trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and len({tuple(sorted(t.params.items())) for t in finished}) == 4
    assert stdout.count("trained:") == 1 and stdout.count("hpo: ") == 1  # one refit, one Table 4.1
    assert (tmp_path / "run" / "final" / "metrics.json").exists() and (tmp_path / "run" / "table_4_1.md").exists()
    best = min(complete_trials_ran_every_fold(trials, 2, 1), key=lambda trial: trial.value)  # val_loss
    refit = OmegaConf.load(tmp_path / "run" / "final" / "config.yaml")  # the default schedule's refit: asha's
    assert (refit.lora.r, refit.trainer.learning_rate) == (best.params["lora_r"], best.params["learning_rate"])
    assert refit.hpo.schedule == "asha"


def test_the_refit_is_claimed_once_and_freed_by_a_failed_or_killed_claimant(compose_cfg, tmp_path):
    from faultllm.search.studies import _claims, fail_interrupted, open_study, refit_claim

    cfg = compose_cfg("hpo", [f"hpo.storage=sqlite:///{tmp_path / 'study.db'}"])
    study, other = open_study(cfg.hpo, 0, tmp_path), open_study(cfg.hpo, 0, tmp_path)
    with pytest.raises(RuntimeError), refit_claim(study, 4) as mine:
        assert mine
        with refit_claim(other, 4) as theirs:
            assert not theirs  # held by the first worker
        raise RuntimeError("the refit failed")
    _claims(other, 4).ask()  # freed by the failure, then claimed by a worker killed mid-refit: left running
    with refit_claim(study, 4) as mine:
        assert not mine  # a running claim holds the refit
    fail_interrupted(study, 4)  # what a rerun on the run directory's own database does first
    with refit_claim(study, 4) as mine:
        assert mine
    with refit_claim(other, 4) as theirs:
        assert not theirs  # done once: nobody refits again
    with refit_claim(other, 6) as theirs:
        assert theirs  # unless the study is extended to more trials


def _heartbeat_ids(url: str) -> set[int]:
    import sqlalchemy

    from faultllm.search.studies import _with_driver

    engine = sqlalchemy.create_engine(_with_driver(url), poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        return {row[0] for row in connection.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))}


@pytest.mark.slow  # starts PostgreSQL
def test_trials_and_refit_claims_carry_heartbeats_from_the_start_and_go_stale_on_postgresql(
    postgres_server, compose_cfg, tmp_path
):
    """Workers killed right after `ask`, mid-refit, or running an older faultllm (no heartbeat at all)."""
    import optuna

    from faultllm.search.studies import _claims, _with_driver, fail_stale, open_study, refit_claim

    postgres_server.createdb("heartbeats", owner="faultllm")
    url = postgres_server.url("heartbeats", "faultllm", postgres.PASSWORD)
    cfg = compose_cfg("hpo", [f"hpo.storage={url}", "hpo.heartbeat_interval=1", "hpo.grace_period=2"])
    study = open_study(cfg.hpo, 0, tmp_path)
    asked, claim = study.ask(), _claims(study, 4).ask()  # then killed: no heartbeat thread ever started
    older = optuna.load_study(study_name="faultllm", storage=_with_driver(url)).ask()  # Optuna's own storage
    assert _heartbeat_ids(url) == {asked._trial_id, claim._trial_id}  # from the moment they exist
    other = open_study(cfg.hpo, 0, tmp_path)
    optuna.storages.fail_stale_trials(other)  # what `optimize` does before each trial: none stale yet
    assert older._trial_id in _heartbeat_ids(url)  # found running without a heartbeat: given one, to go stale
    with refit_claim(other, 4) as mine:
        assert not mine  # the claim is fresh: its worker may be alive
    time.sleep(3.5)  # > the grace period
    optuna.storages.fail_stale_trials(other)
    states = {t.number: t.state.name for t in other.trials}
    assert states[asked.number] == states[older.number] == "FAIL" and list(states.values()).count("WAITING") == 2
    with refit_claim(other, 4, patience=10, poll=0.5) as mine:
        assert mine  # the dead worker's claim was failed and the refit claimed again
    fail_stale(_claims(other, 4))
    assert [t.state.name for t in _claims(other, 4).trials] == ["FAIL", "COMPLETE"]


def _count(url: str, states: tuple[str, ...], study: str = "faultllm") -> int:
    import sqlalchemy

    from faultllm.search.studies import _with_driver

    query = sqlalchemy.text(
        "SELECT count(*) FROM trials t JOIN studies s USING (study_id) "
        "WHERE s.study_name = :study AND CAST(t.state AS TEXT) = ANY(:states)"
    )
    engine = sqlalchemy.create_engine(_with_driver(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(query, {"study": study, "states": list(states)}).scalar()
    except sqlalchemy.exc.ProgrammingError:  # no tables yet: the workers are starting
        return 0


CHAOS_SEED = 3  # see _kill_points


def _kill_points(seed: int) -> tuple[int, int, float, float]:
    """Drawn from the seed: once the study holds `after` finished trials (0..5) and `delay` seconds more, worker
    `victim` is killed mid-search; then the worker that claims the refit, `refit_delay` seconds into it."""
    rng = random.Random(seed)
    return rng.randrange(6), rng.randrange(3), rng.uniform(0, 2), rng.uniform(0, 2)


@pytest.mark.slow
def test_chaos_three_workers_on_postgresql_killed_mid_search_and_mid_refit_then_a_rerun(
    postgres_server, tiny_cache, easy_csv, tmp_path
):
    """Three workers on one study with a password; SIGKILL to one worker at a seeded point of the search and
    to the one that claimed the refit; then a rerun: 6 finished trials, no duplicate parameters, nothing left
    running, one refit, one Table 4.1, and no password anywhere on disk or in the output."""
    after, victim, delay, refit_delay = _kill_points(CHAOS_SEED)
    postgres_server.createdb("chaos", owner="faultllm")
    url = postgres_server.url("chaos", "faultllm", postgres.PASSWORD)
    run_dir = tmp_path / "run"
    overrides = [*hpo_overrides(tiny_cache, easy_csv, 6), "hpo.heartbeat_interval=1", "hpo.grace_period=3"]
    logs = [tmp_path / f"worker{k}.log" for k in range(3)]
    workers = [
        _hpo_process([*overrides, f"hpo.worker_index={k}", f"hpo.storage={url}", f"hydra.run.dir={run_dir}"],
                     log.open("w"))
        for k, log in enumerate(logs)
    ]  # fmt: skip

    def mid_search() -> int | None:
        return victim if _count(url, ("COMPLETE", "PRUNED")) >= after else None

    def refit_claimant() -> int | None:
        return next(
            (k for k, log in enumerate(logs) if "the refit and Table 4.1 are this worker's" in log.read_text()), None
        )

    killed = {_kill(workers, delay, mid_search), _kill(workers, refit_delay, refit_claimant)} - {None}
    for k, worker in enumerate(workers):
        assert worker.wait(timeout=900) == (-signal.SIGKILL if k in killed else 0), logs[k].read_text()[-3000:]
    assert len(killed) == 2  # both kill points came while their victims were alive
    rerun = subprocess.run(
        [sys.executable, "-m", "faultllm.cli", "hpo", *overrides, "hpo.storage=${oc.env:FAULTLLM_STORAGE}",
         f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=900, env=os.environ | {"FAULTLLM_STORAGE": url},
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _check_the_study_after_chaos(url, run_dir)
    printed = rerun.stdout + rerun.stderr + "".join(log.read_text() for log in logs)
    assert postgres.PASSWORD not in printed
    assert not [p for p in run_dir.rglob("*") if p.is_file() and postgres.PASSWORD.encode() in p.read_bytes()]
    assert "storage: postgresql://faultllm:***@" in (run_dir / "config.yaml").read_text()  # the rerun's, resolved


def _kill(workers, delay: float, victim_when) -> int | None:
    """Wait until `victim_when()` names a worker, `delay` seconds more, then SIGKILL its process group. Its index,
    or None when the workers ended first or it had left already."""
    deadline = time.time() + 900
    while (victim := victim_when()) is None:
        if time.time() > deadline or all(worker.poll() is not None for worker in workers):
            return None
        time.sleep(0.2)
    time.sleep(delay)
    if workers[victim].poll() is not None:
        return None
    os.killpg(workers[victim].pid, signal.SIGKILL)
    return victim


def _check_the_study_after_chaos(url: str, run_dir: Path) -> None:
    import json

    import optuna

    from faultllm.search.studies import _with_driver

    storage = _with_driver(url)
    trials = optuna.load_study(study_name="faultllm", storage=storage).trials
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and len({tuple(sorted(t.params.items())) for t in finished}) == 6
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    claims = [t.state.name for t in optuna.load_study(study_name="faultllm:refit:6", storage=storage).trials]
    assert claims.count("COMPLETE") == 1 and "RUNNING" not in claims  # one refit
    assert (run_dir / "final" / "metrics.json").exists() and (run_dir / "table_4_1.md").exists()
    assert json.loads((run_dir / "table_4_1.json").read_text())["trials_finished"] == 6
