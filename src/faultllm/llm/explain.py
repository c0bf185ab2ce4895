"""Ask the fine-tuned model why, and measure what actually drives its answer.

1. Free-text probe (the study's section 4.3): the test row's question plus "can you tell me
   why ...", greedy, for each configured number of new tokens (the study: 5 and 50).
2. Occlusion attribution: each serialized feature in turn is replaced by a reference value
   (the training median, or the scaler's midpoint) and the restricted evaluator's
   probability of the originally predicted label is recomputed; the drop, averaged in
   absolute value over a sample of test rows (and per class), ranks the features.
3. When a baselines run is given: Spearman rank correlation and top-k overlap with the
   tree models' impurity and permutation importances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from faultllm.compare.tables import markdown
from faultllm.data.tables import LABEL
from faultllm.llm.decoding import generate_answers, parse_answer
from faultllm.llm.scoring import answer_space, score
from faultllm.llm.trained import TrainedLLM
from faultllm.prompts.serialize import WHY_QUESTION
from faultllm.run.kind import RunKind, run_kind
from faultllm.run.records import SplitSummary
from faultllm.run.saved import SavedRun, load_importances
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.progress import steps


def probe_transcripts(llm: TrainedLLM, test: pd.DataFrame, rows: list[int], token_budgets: list[int]) -> pd.DataFrame:
    """The study's follow-up question after each row's question, answered greedily within each token budget."""
    serializer = llm.serializer
    examples = serializer.examples(test)  # a few-shot run's in-context examples, as its evaluation showed them
    records = []
    for row in steps(rows, f"explain: probe rows answered ({len(token_budgets)} token budgets each)"):
        user = serializer.question(test[serializer.features].iloc[row].to_numpy(np.float64)) + WHY_QUESTION
        for budget in token_budgets:
            (output,) = generate_answers(llm.model, llm.tokenizer, [serializer.chat(user, examples[row])], budget)
            answer = parse_answer(output, serializer.labels)
            records.append({
                "row": row, "label": test[LABEL].iloc[row], "new_tokens": budget, "user": user, "output": output,
                "answer": answer, "valid": answer is not None, "correct": answer == test[LABEL].iloc[row],
            })  # fmt: skip
    return pd.DataFrame(records)


def reference_values(run: SavedRun, how: str) -> pd.Series:
    """Each feature's occlusion value, by feature name (prompts may write features in another order)."""
    features = run.split.features
    if how == "median":
        return run.split.train[features].median().astype(np.float64)
    if how == "midpoint":  # the middle of the scaled range, or of the raw training range when unscaled
        if run.scaler is not None:
            return pd.Series(sum(run.scaler.feature_range) / 2, index=features, dtype=np.float64)
        values = run.split.train[features]
        return ((values.min() + values.max()) / 2).astype(np.float64)
    raise FaultLLMError(f"explain.reference={how!r}; expected median or midpoint")


def occlusion(
    llm: TrainedLLM, test: pd.DataFrame, rows: list[int], reference: pd.Series, batch_size: int
):  # fmt: skip
    """Per row and feature: p(predicted label | original) - p(predicted label | feature set to reference).
    A few-shot run's rows keep their in-context examples while a feature is occluded."""
    features, labels = llm.serializer.features, llm.serializer.labels
    every_row = llm.serializer.examples(test)
    examples = [every_row[row] for row in rows]
    test = test.iloc[rows].reset_index(drop=True)
    original_prompts = llm.serializer.render(test, examples=examples)
    space = answer_space(llm.tokenizer, original_prompts)
    truth = original_prompts.truth
    original = score(llm.model, llm.tokenizer, original_prompts.texts, truth, space, batch_size).probabilities()
    predicted = original.argmax(axis=1)

    # feature-major: block j holds every row with feature j occluded
    occluded = pd.concat([test.assign(**{feature: reference[feature]}) for feature in features], ignore_index=True)
    texts = llm.serializer.render(occluded, examples=examples * len(features)).texts
    title = f"explain: occluding {len(features)} features x {len(rows)} rows"
    probabilities = score(
        llm.model, llm.tokenizer, texts, truth * len(features), space, batch_size, title
    ).probabilities()
    probabilities = probabilities.reshape(len(features), len(rows), len(labels))
    index = np.arange(len(rows))
    effect = original[index, predicted][None, :] - probabilities[:, index, predicted]  # (features, rows)
    return pd.DataFrame(
        {
            "row": np.tile(np.asarray(rows), len(features)),
            "label": truth * len(features),
            "predicted": [labels[p] for p in predicted] * len(features),
            "feature": np.repeat(features, len(rows)),
            "effect": effect.reshape(-1),
        }
    )


def attribution_table(effects: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Mean absolute effect per feature, overall and per true class, ranked."""
    effects = effects.assign(abs_effect=effects["effect"].abs())
    table = effects.groupby("feature")["abs_effect"].mean().rename("mean_abs_effect").to_frame()
    per_class = effects.pivot_table(index="feature", columns="label", values="abs_effect", aggfunc="mean")
    per_class.columns = [f"mean_abs_effect_class_{c}" for c in per_class.columns]
    table = table.join(per_class).reindex(features)
    table["rank"] = table["mean_abs_effect"].rank(ascending=False, method="min").astype(int)
    return table.sort_values("rank").reset_index()


def check_same_split(run: SavedRun, baselines_dir: Path) -> None:
    """A baselines run's importances are compared feature by feature: only one made on this run's very split
    (the same split fingerprint, as `faultllm report` pairs runs) is accepted."""
    path = baselines_dir / "split.json"
    kind = run_kind(baselines_dir)
    if not path.exists() or kind is not RunKind.BASELINES:
        what = f"a `{kind.command}` run" if kind is not RunKind.UNKNOWN and path.exists() else "no split.json"
        raise FaultLLMError(
            f"explain.baselines_dir={baselines_dir}: not a `faultllm baselines` run ({what}); give the directory "
            "of a `faultllm baselines` run made with this run's data config and seed"
        )
    theirs = SplitSummary.read(path)
    ours = SplitSummary.read(run.run_dir / "split.json")
    if theirs.split_fingerprint == ours.split_fingerprint:
        return
    other = sorted(set(theirs.features) ^ set(ours.features))
    what = f"other features ({', '.join(other[:5])}{', ...' if len(other) > 5 else ''})" if other else "other rows"
    raise FaultLLMError(
        f"explain.baselines_dir={baselines_dir}: a baselines run on another split ({what}; fingerprint "
        f"{theirs.split_fingerprint} vs this run's {ours.split_fingerprint}); run `faultllm baselines` "
        "with this run's data config, data.normalize and seed"
    )


def compare_with_baselines(attribution: pd.DataFrame, baselines_dir: Path, k: int) -> pd.DataFrame:
    """Spearman rank correlation and top-k overlap with each baseline's impurity and permutation importances."""
    from scipy.stats import spearmanr

    importances = load_importances(baselines_dir)
    llm = attribution.set_index("feature")["mean_abs_effect"]
    top_llm = set(llm.sort_values(ascending=False).index[:k])
    rows = []
    for model, group in importances.groupby("model"):
        group = group.set_index("feature").reindex(llm.index)
        for kind in ("impurity", "permutation_mean"):
            values = group[kind]
            if values.isna().all():
                continue
            top_other = set(values.sort_values(ascending=False).index[:k])
            rows.append({
                "model": model, "importance": kind, "spearman": float(spearmanr(llm, values, nan_policy="omit").statistic),
                f"top{k}_overlap": len(top_llm & top_other) / k, f"top{k}_llm": ", ".join(sorted(top_llm)),
                f"top{k}_model": ", ".join(sorted(top_other)),
            })  # fmt: skip
    return pd.DataFrame(rows)


def choose_rows(requested, n: int, n_test: int, seed: int) -> list[int]:
    if requested:
        rows = [int(r) for r in requested]
        bad = [r for r in rows if not 0 <= r < n_test]
        if bad:
            raise FaultLLMError(
                f"explain.rows: row {bad[0]} is out of range; the test split has {n_test} rows (0..{n_test - 1})"
            )
        return rows
    return sorted(np.random.default_rng(seed).choice(n_test, size=min(n, n_test), replace=False).tolist())


def report_markdown(
    run_dir: Path, transcripts: pd.DataFrame, table: pd.DataFrame, comparison, reference: str, n_rows: int
) -> str:
    """report.md: the probe's transcripts, the ranked attribution and the comparison with the baselines."""
    lines = [f"# Explanations for {run_dir}", "", "## Free-text probe", ""]
    lines += [markdown(transcripts[["row", "label", "new_tokens", "output", "valid", "correct"]])]
    lines += ["## Occlusion attribution", ""]
    lines += [f"Reference value: training {reference}; {n_rows} test rows.", ""]
    lines += ["![attribution](attribution.png)", "", markdown(table.head(15)[["rank", "feature", "mean_abs_effect"]])]
    if comparison is not None:
        lines += ["## Against the tree baselines' importances", "", markdown(comparison)]
    return "\n".join(lines)
