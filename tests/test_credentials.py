"""A password in hpo.storage (or any URL) is never written to disk or printed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from faultllm.run.kind import RunKind
from faultllm.runtime.credentials import PASSWORD_ENV, RedactingFilter, hide_passwords, redact, with_password
from faultllm.runtime.errors import FaultLLMError

SECRET = "Pa55-w0rd_x"


def test_redact_hides_every_urls_password_and_nothing_else():
    text = f"hpo.storage=postgresql+psycopg://me:{SECRET}@db:5432/x and http://u:{SECRET}@mlflow:5000/ and http://host:8080/p"
    assert redact(text) == (
        "hpo.storage=postgresql+psycopg://me:***@db:5432/x and http://u:***@mlflow:5000/ and http://host:8080/p"
    )
    assert redact("postgresql://me@db/x") == "postgresql://me@db/x"  # no password: unchanged


def test_the_password_leaves_the_command_line_for_the_environment(monkeypatch, capsys):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    overrides = hide_passwords([f"hpo.storage=postgresql://me:{SECRET}@db/x", "seed=1"])
    assert overrides == ["hpo.storage=postgresql://me:***@db/x", "seed=1"]
    (warning,) = capsys.readouterr().err.splitlines()  # this process's own argv still shows it: said once
    assert "every user of this machine can read it" in warning and "FAULTLLM_STORAGE" in warning
    assert SECRET not in warning
    hide_passwords(overrides)
    assert not capsys.readouterr().err  # a redacted URL (what the workers get): no warning
    import os

    assert os.environ[PASSWORD_ENV] == SECRET
    assert with_password("postgresql://me:***@db/x") == f"postgresql://me:{SECRET}@db/x"
    monkeypatch.delenv(PASSWORD_ENV)
    assert with_password("postgresql://me:***@db/x") == "postgresql://me@db/x"  # for PGPASSWORD or ~/.pgpass


def test_log_records_and_tracebacks_are_redacted():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "opening %s", (f"mysql://a:{SECRET}@h/d",), None)
    try:
        raise RuntimeError(f"cannot reach postgresql://a:{SECRET}@h/d")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    assert SECRET not in logging.Formatter().format(record) and "mysql://a:***@h/d" in record.getMessage()


def test_a_storage_error_names_the_url_without_its_password(compose_cfg, tmp_path):
    from faultllm.search.studies import open_study

    cfg = compose_cfg("hpo", [f"hpo.storage=postgresql://me:{SECRET}@127.0.0.1:1/x"])
    with pytest.raises(FaultLLMError, match=r"hpo.storage=postgresql://me:\*\*\*@127.0.0.1:1/x: cannot open") as err:
        open_study(cfg.hpo, 0, tmp_path)
    assert SECRET not in str(err.value)


@pytest.mark.slow  # a fresh interpreter
def test_the_cli_prints_no_password(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "faultllm.cli", "hpo", "model=tiny", f"cache_dir={tmp_path}",
         f"hpo.storage=postgresql://me:{SECRET}@127.0.0.1:1/x", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "postgresql://me:***@127.0.0.1:1/x: cannot open" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_the_run_directory_holds_no_password(compose_cfg, tmp_path, monkeypatch):
    """A password that reached the config anyway (hpo.storage=${oc.env:FAULTLLM_STORAGE}, resolved) or argv."""
    from faultllm.run.directory import start_run

    monkeypatch.setenv("FAULTLLM_STORAGE", f"postgresql://me:{SECRET}@db/x")
    monkeypatch.setattr(sys, "argv", ["faultllm hpo", f"hpo.storage=postgresql://me:{SECRET}@db/x"])
    start_run(compose_cfg("hpo", ["hpo.storage=${oc.env:FAULTLLM_STORAGE}"]), tmp_path, RunKind.HPO)
    assert "storage: postgresql://me:***@db/x" in (tmp_path / "config.yaml").read_text()
    assert json.loads((tmp_path / "run_info.json").read_text())["command"][1] == "hpo.storage=postgresql://me:***@db/x"
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SECRET in p.read_text()]
