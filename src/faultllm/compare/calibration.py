"""Can a model's probabilities be trusted? Calibration and selective prediction on one set of scored rows.

- Expected calibration error (ECE), top-label: rows sorted by the confidence of the label answered,
  cut into 15 bins of equal size (equal mass: the last bins take one row fewer when the rows do not
  divide evenly), and the mean |accuracy - mean confidence| over the bins, weighted by their rows.
  Rows of equal confidence that a bin edge cuts count with their tie group's mean accuracy, so no row
  order decides a bin. Each bin's accuracy comes with its 95% Wilson score interval (the shaded band of
  calibration.png). `calibrated_ece`: the ECE a perfectly calibrated model would show with the same
  confidences in the same bins (its floor at that many rows, > 0 from sampling alone).
- Brier score: mean over rows of sum over labels of (p - 1[label is true])^2 (0 best, 2 worst).
- Negative log-likelihood: mean of -ln p(true label), unclipped: a row that gave its true label
  probability 0 makes it infinite, and `zero_probability_rows` says which rows those are.
- Risk-coverage: answer only the most confident rows; accuracy against the share of rows answered
  (coverage k/N for k = 1..N, most confident first). Rows of equal confidence are answered together,
  so inside a tie the curve takes their mean accuracy and no row order decides it. The area under
  the accuracy curve is the mean of accuracy(k/N) over k; AURC, the area under the risk (error) curve,
  is 1 minus it (lower is better).

"Confidence" is the probability of the label the model answered (its prediction): for every model but
the SVM this is the top probability; the SVM answers by its decision function and its Platt-scaled
probabilities may rank another label first on rare borderline rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BINS = 15


@dataclass(frozen=True)
class Forecast:
    """One model's probabilities on scored rows, with what was true and what it answered (label indices)."""

    probabilities: np.ndarray  # (rows, labels)
    truth: np.ndarray  # (rows,) index of the true label
    answered: np.ndarray  # (rows,) index of the label the model answered

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities[np.arange(len(self.truth)), self.answered]

    @property
    def correct(self) -> np.ndarray:
        return self.answered == self.truth

    @staticmethod
    def pooled(forecasts: list[Forecast]) -> Forecast:
        return Forecast(
            *(np.concatenate([getattr(f, name) for f in forecasts]) for name in ("probabilities", "truth", "answered"))
        )


def forecast_of(frame: pd.DataFrame, labels: list, prefix: str = "prob_", answered: str = "predicted") -> Forecast:
    """A Forecast from a predictions table: a `{prefix}{label}` column per label (in `labels`' order), the true
    label in `label` and the answer in `answered` (labels matched by their text)."""
    index = {str(label): i for i, label in enumerate(labels)}
    probabilities = frame[[f"{prefix}{label}" for label in labels]].to_numpy(np.float64)
    codes = lambda column: np.array([index[str(value)] for value in frame[column]], dtype=int)  # noqa: E731
    return Forecast(probabilities, codes("label"), codes(answered))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Equal-mass bins of rows sorted by confidence: rows, mean confidence and accuracy per bin."""
    order = np.argsort(confidence, kind="stable")
    confidence = np.asarray(confidence, np.float64)[order]
    correct = tie_averaged(confidence, np.asarray(correct)[order])
    parts = [part for part in np.array_split(np.arange(len(order)), min(bins, len(order))) if len(part)]
    return pd.DataFrame({
        "rows": [len(part) for part in parts],
        "confidence": [float(confidence[part].mean()) for part in parts],
        "accuracy": [float(correct[part].mean()) for part in parts],
    }).pipe(_with_wilson_interval)  # fmt: skip


def tie_averaged(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Each row's correctness replaced by the mean over the rows of its confidence (sorted ascending):
    where a bin edge cuts a tie, neither side depends on which tied rows came first."""
    starts = np.flatnonzero(np.r_[True, confidence[1:] != confidence[:-1]])
    sizes = np.diff(np.r_[starts, len(confidence)])
    return np.repeat(np.add.reduceat(np.asarray(correct, np.float64), starts) / sizes, sizes)


def calibrated_ece(bins: pd.DataFrame, draws: int = 2000, seed: int = 0) -> float:
    """The expected ECE of a perfectly calibrated model with the confidences of these reliability bins, in the
    same bins: each bin's rows right drawn as Binomial(rows, its mean confidence) (a sum of
    Bernoulli(confidence) has a variance no larger, so this floor errs slightly high), averaged over `draws`."""
    rows, mean_confidence = bins["rows"].to_numpy(), bins["confidence"].to_numpy()
    right = np.random.default_rng(seed).binomial(rows, np.clip(mean_confidence, 0, 1), size=(draws, len(rows)))
    return float((np.abs(right - rows * mean_confidence).sum(axis=1) / rows.sum()).mean())


def _with_wilson_interval(bins: pd.DataFrame) -> pd.DataFrame:
    """accuracy_low / accuracy_high: each bin's 95% Wilson score interval."""
    low, high = wilson_interval(bins["accuracy"].to_numpy(np.float64), bins["rows"].to_numpy(np.float64))
    return bins.assign(accuracy_low=low, accuracy_high=high)


def wilson_interval(accuracy, rows, z: float = 1.959964):
    """The 95% Wilson score interval of an accuracy measured on `rows` rows (inside [0, 1], also at 0 or 1)."""
    n, p = rows, accuracy
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    return binned_ece(reliability(confidence, correct, bins))


def binned_ece(bins: pd.DataFrame) -> float:
    """The ECE of reliability bins: |accuracy - mean confidence| per bin, weighted by its rows."""
    return float((bins["rows"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / bins["rows"].sum())


def brier_score(forecast: Forecast) -> float:
    onehot = np.eye(forecast.probabilities.shape[1])[forecast.truth]
    return float(((forecast.probabilities - onehot) ** 2).sum(axis=1).mean())


def _p_true(forecast: Forecast) -> np.ndarray:
    return forecast.probabilities[np.arange(len(forecast.truth)), forecast.truth]


def negative_log_likelihood(forecast: Forecast) -> float:
    """Mean -ln p(true label); infinite where a row gave its true label probability 0 (not clipped)."""
    with np.errstate(divide="ignore"):
        return float(-np.log(_p_true(forecast)).mean())


def zero_probability_rows(forecast: Forecast) -> np.ndarray:
    """Positions of the rows that gave their true label probability 0 (each makes the NLL infinite)."""
    return np.flatnonzero(_p_true(forecast) <= 0)


def scores(forecast: Forecast) -> dict[str, float]:
    """ECE, Brier score and NLL of one set of rows (with the rows whose true label got probability 0), the
    mean confidence and the accuracy beside them."""
    confidence, correct = forecast.confidence, forecast.correct
    return {
        "ece": expected_calibration_error(confidence, correct),
        "brier": brier_score(forecast),
        "nll": negative_log_likelihood(forecast),
        "zero_p_true": len(zero_probability_rows(forecast)),
        "confidence": float(confidence.mean()),
        "accuracy": float(correct.mean()),
    }


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """Accuracy when only the k most confident rows are answered, k = 1..N (ties answered together)."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    order = np.argsort(-confidence, kind="stable")
    confidence, correct = confidence[order], correct[order]
    starts = np.flatnonzero(np.r_[True, confidence[1:] != confidence[:-1]])  # the first row of each tie group
    sizes = np.diff(np.r_[starts, len(confidence)])
    group_right = np.add.reduceat(correct, starts)
    before = np.repeat(np.r_[0.0, np.cumsum(group_right)[:-1]], sizes)  # rows right in the groups before
    within = np.arange(len(confidence)) - np.repeat(starts, sizes) + 1  # rows answered inside the group
    right = before + within * np.repeat(group_right / sizes, sizes)
    k = np.arange(1, len(confidence) + 1)
    return pd.DataFrame({"coverage": k / len(k), "accuracy": right / k, "confidence": confidence})


def selective_scores(confidence: np.ndarray, correct: np.ndarray, coverages=(0.5, 0.8)) -> dict[str, float]:
    """The area under the accuracy-coverage curve, AURC, and the accuracy at given coverages."""
    curve = risk_coverage(confidence, correct)
    area = float(curve["accuracy"].mean())
    at = {
        f"accuracy_at_{round(c * 100)}": float(curve["accuracy"].iloc[max(0, int(np.ceil(c * len(curve) - 1e-9)) - 1)])
        for c in coverages
    }
    return {"area": area, "aurc": 1.0 - area, **at, "accuracy_at_100": float(curve["accuracy"].iloc[-1])}


# ---------------------------------------------------------------- repair: temperature and prediction sets
# Both are fitted on held-out training rows (`calibrate.holdout`), never on the test rows.

CLIP = 1e-12  # the floor of a probability of 0 before a temperature scales its log (NLL itself is never clipped)
TEMPERATURES = (0.05, 20.0)  # the range a temperature is searched in
CALIBRATION_FILE = "calibration.json"  # a run's fitted repairs, by model: LLM, or a baseline's name (rf, lr, ...)
LLM = "llm"


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """ln p with a probability of 0 floored at CLIP: scaled by a temperature it stays the least likely label."""
    return np.log(np.clip(np.asarray(probabilities, np.float64), CLIP, 1.0))


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """p_i^(1/T) renormalised (softmax of ln p / T): the ranking of the labels, and so every answer, is kept."""
    scaled = log_probabilities(probabilities) / temperature
    scaled = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The temperature T in TEMPERATURES that minimises the mean NLL of the true labels (one scalar per model)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(truth))

    def nll(log_t: float) -> float:
        return float(-np.log(with_temperature(probabilities, float(np.exp(log_t)))[rows, truth]).mean())

    found = minimize_scalar(nll, bounds=tuple(np.log(TEMPERATURES)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def conformal_threshold(probabilities: np.ndarray, truth: np.ndarray, coverage: float) -> float:
    """Split-conformal LAC: the ceil((n+1) coverage)-th smallest score 1 - p(true label) of n held-out rows
    (inf when n is too small for that coverage: every label is then in every set). A new row exchangeable
    with them has its true label in its set with probability >= coverage (Vovk et al. 2005; Sadinle et al. 2019)."""
    scores = np.sort(1.0 - probabilities[np.arange(len(truth)), truth])
    rank = int(np.ceil((len(scores) + 1) * coverage - 1e-9))
    return float(scores[rank - 1]) if rank <= len(scores) else float("inf")


def prediction_sets(probabilities: np.ndarray, threshold: float, answered: np.ndarray) -> np.ndarray:
    """(rows, labels) bool: the labels whose score 1 - p is within the threshold, and always the answered label
    (a set is never empty; adding a label can only raise the coverage)."""
    inside = 1.0 - probabilities <= threshold
    inside[np.arange(len(answered)), answered] = True
    return inside


def set_scores(sets: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Empirical coverage (the share of rows whose true label is in its set) and the mean set size."""
    return {"coverage": float(sets[np.arange(len(truth)), truth].mean()), "mean_size": float(sets.sum(axis=1).mean())}


def set_text(labels: list, inside: np.ndarray) -> str:
    """One row's set as `one of {4, 11}` (or the single label when the set holds one)."""
    chosen = [str(label) for label, kept in zip(labels, inside, strict=True) if kept]
    return chosen[0] if len(chosen) == 1 else "one of {" + ", ".join(chosen) + "}"


@dataclass(frozen=True)
class Recalibration:
    """What a run learns from its held-out training rows: a temperature, and the LAC threshold on the
    temperature-scaled probabilities for prediction sets of the target coverage."""

    temperature: float
    threshold: float
    coverage: float  # the target
    rows: int  # held-out rows it was fitted on

    @classmethod
    def fit(cls, held_out: Forecast, coverage: float) -> Recalibration:
        temperature = fit_temperature(held_out.probabilities, held_out.truth)
        scaled = with_temperature(held_out.probabilities, temperature)
        return cls(temperature, conformal_threshold(scaled, held_out.truth, coverage), coverage, len(held_out.truth))

    def apply(self, probabilities: np.ndarray, answered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(temperature-scaled probabilities, prediction sets) of new rows."""
        scaled = with_temperature(probabilities, self.temperature)
        return scaled, prediction_sets(scaled, self.threshold, answered)

    def evaluate(self, test: Forecast) -> dict:
        """On the test rows: ECE/NLL/Brier before and after the temperature (accuracy unchanged: the answers
        are kept), and the sets' empirical coverage and mean size."""
        scaled, sets = self.apply(test.probabilities, test.answered)
        after = Forecast(scaled, test.truth, test.answered)
        return {"before": scores(test), "after": scores(after), "sets": set_scores(sets, test.truth)}

    def to_json(self) -> dict:
        threshold = self.threshold if np.isfinite(self.threshold) else None  # null: every label in every set
        return {"temperature": self.temperature, "threshold": threshold, "coverage": self.coverage, "rows": self.rows}

    @classmethod
    def fitted_and_checked(cls, held_out: Forecast, test: Forecast, coverage: float) -> dict:
        """calibration.json's entry of one model: fitted on the held-out rows, what it does there and on the
        test rows."""
        repair = cls.fit(held_out, coverage)
        return repair.to_json() | {"held_out": repair.evaluate(held_out), "test": repair.evaluate(test)}

    @classmethod
    def from_json(cls, saved: dict) -> Recalibration:
        threshold = float("inf") if saved["threshold"] is None else float(saved["threshold"])
        return cls(float(saved["temperature"]), threshold, float(saved["coverage"]), int(saved["rows"]))


def recalibration_row(model: str, seed: int, entry: dict) -> dict:
    """One model run's calibration.json entry as a row of `report`'s recalibration table (test rows)."""
    test, sets = entry["test"], entry["test"]["sets"]
    changes = {
        f"{name} before / after": f"{test['before'][key]:.3f} / {test['after'][key]:.3f}"
        for name, key in (("ECE", "ece"), ("NLL", "nll"), ("Brier", "brier"))
    }
    return {
        "Model": model, "Seed": seed, "Held-out rows": entry["rows"], "Temperature": round(entry["temperature"], 3),
        **changes, "Target coverage": entry["coverage"], "Set coverage": round(sets["coverage"], 3),
        "Mean set size": round(sets["mean_size"], 2),
    }  # fmt: skip
