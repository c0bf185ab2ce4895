"""The typed records a JSON file is written from and read through, and the ones a run writes.

`Record` and `VersionedFile` are the base: a record is a dataclass whose nested records (alone, in a list or
dict, or optional) are rebuilt from its field types; a `VersionedFile` is a whole file, written with a top-level
`version` and read back only at the version this faultllm writes, so a field is named in one place and a file
of another version is refused in one line. `faultllm plan` and `bench` write theirs on it (`cost.records`).

Here, what each job writes as metrics.json, and `data prepare` as summary.json: `train` (and HPO's refit in
final/) writes `TrainMetrics`, `baselines` a `BaselinesMetrics` (a `BaselineMetrics` per model), `evaluate` an
`EvaluateMetrics`, `predict` a `PredictMetrics`; split.json and `data prepare`'s summary.json hold a
`SplitSummary`. They are read back by `report`, `predict` and HPO's Table 4.1.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from faultllm.data.splits import MinMaxScaler, Split
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.files import write_json

T = TypeVar("T", bound="Record")


def _typed(kind: Any, value: Any) -> Any:
    """`value` (parsed JSON) as `kind`: records rebuilt, also inside lists, dicts and optionals; the rest as is."""
    if value is None:
        return None
    origin = get_origin(kind)
    if isinstance(kind, type) and issubclass(kind, Record):
        return kind.from_json(value)
    if origin in (Union, types.UnionType):
        (kind,) = [arg for arg in get_args(kind) if arg is not type(None)]
        return _typed(kind, value)
    if origin is list:
        return [_typed(get_args(kind)[0], item) for item in value]
    if origin is dict:
        return {key: _typed(get_args(kind)[1], item) for key, item in value.items()}
    return value


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data: records by their `to_json` (a whole file's record, nested in another, without
    its version), also inside lists and dicts."""
    if isinstance(value, VersionedFile):
        return {key: item for key, item in value.to_json().items() if key != "version"}
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


class Record:
    """to_json / from_json for a dataclass. A field left at its None default is not written (None in one without
    a default is, as null); a key without a field is ignored; a field without a default must be there."""

    def to_json(self) -> dict[str, Any]:
        return {
            spec.name: _plain(value)
            for spec in fields(self)  # type: ignore[arg-type]
            if (value := getattr(self, spec.name)) is not None or spec.default is not None
        }

    @classmethod
    def from_json(cls: type[T], payload: dict[str, Any]) -> T:
        hints = get_type_hints(cls)
        specs = fields(cls)  # type: ignore[arg-type]
        return cls(
            **{spec.name: _typed(hints[spec.name], payload[spec.name]) for spec in specs if spec.name in payload}
        )


F = TypeVar("F", bound="VersionedFile")


class VersionedFile(Record):
    """A record that is a whole file: written with `version`, read back only at that version. VERSION grows
    when a field is renamed, changes meaning or becomes required; RERUN names what writes a current file."""

    VERSION: ClassVar[int] = 1
    RERUN: ClassVar[str] = "the job that wrote it"

    def to_json(self) -> dict[str, Any]:
        return {"version": self.VERSION} | super().to_json()

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def read(cls: type[F], path: Path) -> F:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise FaultLLMError(f"{path}: not a faultllm {cls.__name__} file ({type(err).__name__}: {err})") from err
        version = payload.get("version") if isinstance(payload, dict) else None
        if version != cls.VERSION:
            found = f"version {version}" if version is not None else "no version (an older faultllm)"
            raise FaultLLMError(
                f"{path}: written with {found}; this faultllm reads version {cls.VERSION}: rerun {cls.RERUN}"
            )
        try:
            return cls.from_json({key: value for key, value in payload.items() if key != "version"})
        except (AttributeError, KeyError, TypeError, ValueError) as err:  # a required field missing, or mistyped
            raise FaultLLMError(f"{path}: not a faultllm {cls.__name__} file ({type(err).__name__}: {err})") from err


@dataclass
class SplitMetrics(Record):
    """One split scored (`metrics.classification_metrics` and what the scorer adds)."""

    accuracy: float
    macro_f1: float | None = None
    per_class_recall: dict[str, float] | None = None
    classes_scored: list[str] | None = None
    confusion_matrix: list[list[int]] | None = None
    n: int | None = None
    loss: float | None = None  # restricted scoring: mean NLL per answer token of the true answer
    invalid_outputs: int | None = None  # generate mode: answers that did not parse as `Y = label`
    extra: dict[str, float] = field(default_factory=dict)  # further per-split numbers the scorer reports

    def to_json(self) -> dict[str, Any]:
        payload = super().to_json()
        return {k: v for k, v in payload.items() if k != "extra"} | self.extra

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> SplitMetrics:
        names = {spec.name for spec in fields(cls)}
        known = {k: v for k, v in payload.items() if k in names and k != "extra"}
        return cls(**known, extra={k: v for k, v in payload.items() if k not in names})


@dataclass
class SplitSummary(VersionedFile):
    """split.json, and `data prepare`'s summary.json: what `faultllm report` compares (the fingerprint) before
    putting runs side by side."""

    rows: dict[str, dict[str, int]]  # train / test -> rows per label
    labels: list[str]
    features: list[str]
    seed: int
    split_fingerprint: str
    scaler_range: list[float] | None = None  # data.normalize=false: none

    @classmethod
    def of(cls, split: Split, scaler: MinMaxScaler | None, seed: int) -> SplitSummary:
        return cls(
            rows=split.counts(),
            labels=[str(label) for label in split.labels],
            features=list(split.features),
            seed=seed,
            split_fingerprint=split.fingerprint(),
            scaler_range=list(scaler.feature_range) if scaler else None,
        )


@dataclass
class TrainMetrics(VersionedFile):
    """metrics.json of `train` and of HPO's refit (final/)."""

    train: SplitMetrics
    test: SplitMetrics
    epochs: list[dict] | None = None  # one row per epoch (epochs.jsonl)
    eval_mode: str | None = None
    train_seconds: float | None = None
    hardware: dict | None = None  # the hardware plan as run
    processes: int | None = None
    effective_batch_size: int | None = None
    split: SplitSummary | None = None  # split.json's content


@dataclass
class BaselineMetrics(Record):
    """One classical model's entry in a `baselines` run's metrics.json (keyed by model name)."""

    train_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    per_class_recall: dict[str, float] | None = None
    fit_seconds: float | None = None
    predict_seconds: float | None = None
    params: dict | None = None  # baselines.tune=true: the tuned parameters
    cv_accuracy: float | None = None  # baselines.tune=true: their mean fold accuracy


@dataclass
class BaselinesMetrics(VersionedFile):
    """metrics.json of `baselines`: each model's entry, keyed by model name."""

    models: dict[str, BaselineMetrics]


@dataclass
class EvaluateMetrics(SplitMetrics, VersionedFile):
    """metrics.json of `evaluate`: one split scored, and where its rows came from."""

    eval_mode: str = "restricted"
    source: str = ""  # the run's test split, or the table given by eval.split_path
    run_dir: str = ""  # the train run evaluated


@dataclass
class PredictMetrics(SplitMetrics, VersionedFile):
    """metrics.json of `predict` (rows with labels): the rows scored by one model."""

    model: str = ""
    input: str = ""
