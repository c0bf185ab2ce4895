"""Every command refuses bad input in one line before the heavy work: torch is never imported and no run
directory is left behind (SPEC's reliability list). All cases run in one fresh interpreter (a second each
without torch); the run directories they reopen are made here from one `data prepare` run, without a model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from faultllm.config.load import load_config
from faultllm.jobs.prepare import run as prepare_job
from faultllm.run.directory import redacted_config
from faultllm.run.kind import RunKind
from faultllm.run.saved import expand_run_dirs, open_run
from faultllm.runtime.errors import FaultLLMError
from tests.conftest import easy_frame

# Runs each case in its own empty working directory: (exit code, stderr, torch imported, files left there).
RUNNER = """
import contextlib, io, json, os, sys
import faultllm.cli as cli
cases, root, results = json.loads(sys.argv[1]), sys.argv[2], []  # cli.main hands sys.argv to Hydra
for i, argv in enumerate(cases):
    cwd = os.path.join(root, str(i))
    os.makedirs(cwd)
    os.chdir(cwd)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except Exception as crash:  # a traceback: recorded as a wrong answer, the other cases still run
            code, err = 1, io.StringIO(f"{type(crash).__name__}: {crash}")
    results.append([code, err.getvalue(), "torch" in sys.modules, os.listdir(cwd) if os.path.isdir(cwd) else None])
    os.chdir(root)
print(json.dumps(results))
"""

EASY = ["data=csv", "data.train_size=160", "data.test_size=80"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _copy_run(source: Path, target: Path, job: str, config) -> Path:
    """A run directory of another kind over the same split: its config.yaml and run_info.json rewritten."""
    shutil.copytree(source, target)
    (target / "config.yaml").write_text(OmegaConf.to_yaml(redacted_config(config)))
    (target / "run_info.json").write_text(json.dumps({"job": job}))
    return target


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Input files, and a prepare, a train (trainer.epochs=0: the base model, nothing to load here), a baselines
    and two hpo run directories, all on one split of easy.csv."""
    root = tmp_path_factory.mktemp("refusals")
    frame = easy_frame()
    paths = {"root": root, "easy": root / "easy.csv", "bad_dir": root / "dä ta"}
    frame.to_csv(paths["easy"], index=False)
    paths["bad_dir"].mkdir()
    files = {
        "one_class": frame.assign(label=1), "no_label": frame.drop(columns="label"), "no_b": frame.drop(columns="b"),
        "text": frame.astype({"b": object}).assign(b=lambda f: f["b"].where(f.index != 7, "high")),
        "nan": frame.assign(c=lambda f: f["c"].where(f.index != 3)), "inf": frame.assign(a=float("inf")),
        "unknown_label": frame.assign(label=frame["label"].where(frame.index != 0, 9)),
    }  # fmt: skip
    for name, table in files.items():
        paths[name] = root / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    paths["empty"] = _write(root / "empty.csv", "")
    paths["header_only"] = _write(root / "header_only.csv", "a,b,c,label\n")
    paths["duplicate"] = _write(root / "duplicate.csv", "a,a,b,label\n" + "1,2,3,0\n4,5,6,1\n" * 200)
    paths["xlsx"] = _write(root / "table.xlsx", "not a table")
    prepare = root / "prepare"
    prepare_job(load_config("prepare", [*EASY, f"data.path={paths['easy']}"]), prepare)
    shutil.copy(paths["easy"], paths["bad_dir"] / "ä b.csv")
    train_config = load_config("train", ["model=tiny", *EASY, f"data.path={paths['easy']}", "trainer.epochs=0"])
    baselines_config = load_config("baselines", [*EASY, f"data.path={paths['easy']}"])
    paths |= {
        "prepare": prepare,
        "train": _copy_run(prepare, root / "train", "train", train_config),
        "baselines": _copy_run(prepare, root / "baselines", "baselines", baselines_config),
        "hpo_unfinished": root / "hpo_unfinished",
    }
    (paths["baselines"] / "models").mkdir()
    paths["hpo_unfinished"].mkdir()
    (paths["hpo_unfinished"] / "run_info.json").write_text(json.dumps({"job": "hpo"}))
    paths["hpo"] = root / "hpo"
    shutil.copytree(paths["hpo_unfinished"], paths["hpo"])
    _copy_run(prepare, paths["hpo"] / "final", "hpo", train_config)
    resumed = _copy_run(prepare, root / "resumed", "train", train_config)
    (resumed / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    paths["resumed"] = resumed
    return paths


def _cases(p: dict[str, Path]) -> list[tuple[list[str], str]]:
    """(arguments, what the one line must say)."""
    data = lambda name: ["data", "prepare", *EASY, f"data.path={p[name]}"]  # noqa: E731
    train, base, prep = f"run_dir={p['train']}", f"run_dir={p['baselines']}", f"run_dir={p['prepare']}"
    missing = p["root"] / "missing.csv"
    return [
        (data("root") + ["data.path=" + str(missing)], "no such file or directory"),
        (data("empty"), "empty.csv: cannot read as csv"),
        (data("header_only"), "header_only.csv: the table has no rows (a header only?)"),
        (data("duplicate"), "duplicate.csv: column(s) a appear more than once in the header"),
        (data("xlsx"), "unsupported file type '.xlsx'"),
        (data("no_label"), "missing column(s) label"),
        (data("text"), "column 'b' row 7 holds 'high'; expected a number"),
        (data("nan"), "column 'c' row 3 holds nan; expected a finite number (data.allow_missing=true keeps it)"),
        (data("inf"), "column 'a' row 0 holds inf"),
        (data("one_class"), "holds one class (1); a classifier needs rows of at least two labels"),
        (data("easy") + ["data.labels=[0,7]"], "data.labels: label 7 does not occur"),
        (["data", "prepare", "data=tep_sim", "data.labels=[0,x]"], "data.labels: 'x' is not a fault number"),
        (data("easy") + ["data.train_size=1000"], "label 0 has 187 usable rows, 540 needed"),
        (data("easy") + ["data.paht=x"], "data.paht: no such config key"),
        (data("easy") + ["data.train_size=-4"], "data.train_size"),
        (data("easy") + ["data.path="], "data.path= has no value; pass data.path=VALUE"),
        (data("easy") + ["data.path"], "data.path: no value given; pass data.path=VALUE"),
        (data("easy") + [f"hydra.run.dir={p['easy']}/run"], "is a file, not a directory"),
        (data("easy") + ["-m", "seed=1,2", f"hydra.sweep.dir={p['easy']}/sweep"], "is a file, not a directory"),
        (["train", "model=tiny", *data("one_class")[2:]], "holds one class"),
        (["train", "model=tiny", *data("easy")[2:], f"hydra.run.dir={p['resumed']}", "seed=7"],
         "holds a run of another config (seed: 42 there, 7 here)"),
        (["train", "model=tiny", *data("easy")[2:], "prompt.feature_order=importance",
          f"prompt.importance_from={p['prepare']}"], "no feature_importances.csv"),
        (["train", *data("easy")[2:], f"model.path={p['root'] / 'no_model'}"], "no such model directory"),
        (["hpo", "model=tiny", *data("easy")[2:], "hpo.folds=90"], "90 folds need at least 90 training rows"),
        (["hpo", "model=tiny", *data("easy")[2:], "hpo.storage=postgresql://u@127.0.0.1:9/db"], "hpo.storage="),
        (["hpo", "model=tiny", *data("easy")[2:], "hpo.storage=nowhere"], "hpo.storage=nowhere: expected sqlite:///"),
        (["baselines", *data("easy")[2:], "baselines.tune=true", "baselines.folds=90"], "90 folds need"),
        (["baselines", *data("text")[2:]], "expected a number"),
        (["plan", "job=hpo", "model=tiny", *data("easy")[2:], "hpo.folds=90"], "90 folds need"),
        (["bench", "model=tiny", *data("one_class")[2:]], "holds one class"),
        (["evaluate", prep], "is a `faultllm data prepare` run (no model); evaluate needs a `faultllm train` run"),
        (["evaluate", base], "is a `faultllm baselines` run; evaluate needs a train run"),
        (["evaluate", f"run_dir={p['root'] / 'nowhere'}"], "not a finished"),
        (["evaluate", train, f"eval.split_path={missing}"], "eval.split_path=" + str(missing) + ": no such file"),
        (["evaluate", train, f"eval.split_path={p['unknown_label']}"], "label 9 was not trained on"),
        (["evaluate", f"run_dir={p['hpo_unfinished']}"], "`faultllm hpo` run without a refit model (no final/)"),
        (["explain", train, f"explain.baselines_dir={p['train']}"], "not a `faultllm baselines` run (a `faultllm train`"),
        (["explain", train, "explain.rows=[9999]"], "explain.rows: row 9999 is out of range"),
        (["explain", prep], "is a `faultllm data prepare` run"),
        (["predict", prep, f"input={p['easy']}"], "neither a train run (adapter/) nor a baselines run"),
        (["predict", base, f"input={p['no_b']}"], "missing column(s) b; expected the run's features"),
        (["predict", base, f"input={p['easy']}", "data.path=x"], "data: no such config key"),
        (["predict", base, f"input={p['text']}"], "column 'b' row 7 holds 'high'"),
        (["predict", base, f"input={p['unknown_label']}"], "label 9 was not trained on"),
        (["predict", base], "input is required: pass input=..."),
        (["predict", base, "input"], "input: no value given"),
        (["report", str(p["baselines"]), "--out"], "--out needs a directory"),
        (["report", str(p["baselines"]), "--out", f"{p['easy']}/out"], "is a file, not a directory"),
        (["report", str(p["hpo_unfinished"])], "without a refit model"),
        (["report", str(p["root"] / "nowhere")], "nowhere"),
    ]  # fmt: skip


def _unusual_paths(p: dict[str, Path]) -> list[str]:
    """`data prepare` of a file and into a run directory whose paths hold spaces and non-ASCII characters."""
    return [
        "data",
        "prepare",
        *EASY,
        f"data.path={p['bad_dir'] / 'ä b.csv'}",
        f"hydra.run.dir={p['root'] / 'prép run'}",
    ]


@pytest.fixture(scope="module")
def cli_results(runs, tmp_path_factory) -> list[list]:
    """[exit code, stderr, torch imported, files left in the working directory] of every case of `_cases`, then
    of `_unusual_paths`, all run in one fresh interpreter."""
    argvs = [argv for argv, _ in _cases(runs)] + [_unusual_paths(runs)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cwd = tmp_path_factory.mktemp("cwd")
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(argvs), str(cwd)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # some 35 command lines in a fresh interpreter (cli_results)
def test_every_refusal_is_one_line_before_torch_and_leaves_no_run_directory(runs, cli_results):
    cases = _cases(runs)
    assert len(cases) >= 30
    wrong = []
    for (argv, expected), (code, stderr, torch_loaded, left) in zip(cases, cli_results[:-1], strict=True):
        line = stderr.strip()
        if code == 0 or "\n" in line or expected not in line or ": error: " not in line or torch_loaded or left != []:
            wrong.append((argv[:2], code, line, torch_loaded, left))
    assert not wrong, "\n".join(map(str, wrong))
    assert not (runs["easy"].parent / "run").exists() and not (runs["root"] / "nowhere").exists()


@pytest.mark.slow  # cli_results
def test_paths_with_spaces_and_non_ascii_characters_are_ordinary_paths(runs, cli_results):
    code, stderr, _, _ = cli_results[-1]
    out = runs["root"] / "prép run"
    assert code == 0 and json.loads((out / "summary.json").read_text())["rows"]["test"] == {"0": 40, "1": 40}, stderr
    assert OmegaConf.load(out / "config.yaml").data.path == str(runs["bad_dir"] / "ä b.csv")


def test_an_hpo_run_directory_stands_for_its_refit(runs):
    final = runs["hpo"] / "final"
    assert open_run(runs["hpo"]).run_dir == final
    assert expand_run_dirs([runs["hpo"]]) == [final]
    from faultllm.preflight import evaluate_inputs, predict_inputs

    assert evaluate_inputs(load_config("evaluate", [f"run_dir={runs['hpo']}"]))[0].run_dir == final
    saved, rows = predict_inputs(load_config("predict", [f"run_dir={runs['hpo']}", f"input={runs['easy']}"]))
    assert (saved.run_dir, saved.kind, len(rows)) == (final, RunKind.HPO, 400)


def _fail_with_a_cause(error: type[Exception], message: str):
    def fail(*args, **kwargs):
        try:
            {}["the original cause"]
        except KeyError as err:
            raise error(message) from err

    return fail


@pytest.fixture()
def keep_logging():
    """Hydra, run in this process, gives the root logger handlers (this test's stderr, the run's log): close them."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in set(root.handlers) - set(before):
        root.removeHandler(handler)
        handler.close()


# where the failure happens -> what to patch to raise there, and how the one line starts
FAILURE_POINTS = {
    "job": ("faultllm.jobs.prepare.run", "faultllm data prepare: error: "),
    "preflight": ("faultllm.preflight.check", "faultllm data prepare: error: "),
    "dispatch": ("faultllm.cli.config_error", "faultllm: error: "),
}


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "FAULTLLM_DEBUG"])
@pytest.mark.parametrize(
    ("where", "error", "code"),
    [
        ("job", FaultLLMError, 2),
        ("job", RuntimeError, 1),
        ("preflight", FaultLLMError, 2),
        ("dispatch", RuntimeError, 1),
    ],
)
@pytest.mark.usefixtures("keep_logging")
def test_one_line_and_with_faultllm_debug_the_chained_trace(tmp_path, monkeypatch, capsys, debug, where, error, code):
    import faultllm.cli as cli

    easy = tmp_path / "easy.csv"
    easy_frame().to_csv(easy, index=False)
    target, prefix = FAILURE_POINTS[where]
    monkeypatch.setattr(target, _fail_with_a_cause(error, "it failed"))
    monkeypatch.delenv("FAULTLLM_DEBUG", raising=False)
    if debug:
        monkeypatch.setenv("FAULTLLM_DEBUG", "1")
    try:
        returned = cli.main(["data", "prepare", *EASY, f"data.path={easy}", f"hydra.run.dir={tmp_path / 'run'}"])
    except SystemExit as exit_:
        returned = exit_.code
    stderr = capsys.readouterr().err.strip()
    line = "it failed" if error is FaultLLMError else "RuntimeError: it failed (FAULTLLM_DEBUG=1 shows the full trace)"
    assert returned == code and stderr.splitlines()[-1] == prefix + line  # the one line, last, trace or not
    cause = "KeyError: 'the original cause'\n\nThe above exception was the direct cause of the following exception:"
    assert (cause in stderr) == debug and ("Traceback" in stderr) == debug
    assert not (tmp_path / "run").exists()  # nothing written: no run directory left


@pytest.mark.usefixtures("keep_logging")
def test_a_loader_error_keeps_the_library_exception_under_faultllm_debug(tmp_path, monkeypatch, capsys):
    import faultllm.cli as cli

    bad = _write(tmp_path / "bad.parquet", "not parquet")
    monkeypatch.setenv("FAULTLLM_DEBUG", "1")
    assert cli.main(["data", "prepare", *EASY, f"data.path={bad}", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    stderr = capsys.readouterr().err.strip()
    assert "pyarrow.lib.ArrowInvalid" in stderr and "was the direct cause" in stderr
    assert stderr.splitlines()[-1].startswith(f"faultllm data prepare: error: {bad}: cannot read as parquet")


def test_no_translated_exception_drops_its_cause():
    """`raise FaultLLMError(...) from err`, never `from None`: FAULTLLM_DEBUG=1 must be able to show the cause."""
    source = Path(__file__).resolve().parents[1] / "src" / "faultllm"
    dropped = [
        f"{path.relative_to(source)}:{number}"
        for path in sorted(source.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.rstrip().endswith("from None")
    ]
    assert not dropped, dropped
