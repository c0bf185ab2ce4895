"""`faultllm explain`: ask the fine-tuned model why, and measure what actually drives its answer.

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

from faultllm.errors import FaultLLMError
from faultllm.loaders import LABEL


def probe_transcripts(run, rows: list[int], token_budgets: list[int]) -> pd.DataFrame:
    from faultllm.evaluation import generate_answers, parse_answer
    from faultllm.prompts import WHY_QUESTION, chat_prompt, question

    test, features, labels = run.split.test, run.split.features, run.split.labels
    records = []
    for row in rows:
        user = question(test[features].iloc[row].to_numpy(np.float64), features, labels, run.fmt) + WHY_QUESTION
        for budget in token_budgets:
            (output,) = generate_answers(run.model, run.tokenizer, [chat_prompt(user, run.fmt.system)], budget)
            answer = parse_answer(output, labels)
            records.append({
                "row": row, "label": test[LABEL].iloc[row], "new_tokens": budget, "user": user, "output": output,
                "answer": answer, "valid": answer is not None, "correct": answer == test[LABEL].iloc[row],
            })  # fmt: skip
    return pd.DataFrame(records)


def reference_values(run, how: str) -> np.ndarray:
    features = run.split.features
    if how == "median":
        return run.split.train[features].median().to_numpy(np.float64)
    if how == "midpoint":  # the middle of the scaled range, or of the raw training range when unscaled
        if run.scaler is not None:
            return np.full(len(features), sum(run.scaler.feature_range) / 2)
        values = run.split.train[features]
        return ((values.min() + values.max()) / 2).to_numpy(np.float64)
    raise FaultLLMError(f"explain.reference={how!r}; expected median or midpoint")


def occlusion(run, rows: list[int], reference: np.ndarray, batch_size: int) -> pd.DataFrame:
    """Per row and feature: p(predicted label | original) - p(predicted label | feature set to reference)."""
    from faultllm.evaluation import answer_space, score
    from faultllm.prompts import prompts

    test, features, labels = run.split.test.iloc[rows].reset_index(drop=True), run.split.features, run.split.labels
    original_texts = prompts(test, features, labels, run.fmt)
    space = answer_space(run.tokenizer, labels, original_texts[0])
    truth = test[LABEL].tolist()
    original = score(run.model, run.tokenizer, original_texts, truth, space, batch_size).probabilities()
    predicted = original.argmax(axis=1)

    occluded = pd.concat(
        [test.assign(**{feature: reference[j]}) for j, feature in enumerate(features)], ignore_index=True
    )
    texts = prompts(
        occluded, features, labels, run.fmt
    )  # feature-major: block j holds every row with feature j occluded
    probabilities = score(run.model, run.tokenizer, texts, truth * len(features), space, batch_size).probabilities()
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


def aggregate(effects: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Mean absolute effect per feature, overall and per true class, ranked."""
    effects = effects.assign(abs_effect=effects["effect"].abs())
    table = effects.groupby("feature")["abs_effect"].mean().rename("mean_abs_effect").to_frame()
    per_class = effects.pivot_table(index="feature", columns="label", values="abs_effect", aggfunc="mean")
    per_class.columns = [f"mean_abs_effect_class_{c}" for c in per_class.columns]
    table = table.join(per_class).reindex(features)
    table["rank"] = table["mean_abs_effect"].rank(ascending=False, method="min").astype(int)
    return table.sort_values("rank").reset_index()


def compare_with_baselines(attribution: pd.DataFrame, baselines_dir: Path, k: int) -> pd.DataFrame:
    from scipy.stats import spearmanr

    from faultllm.baselines import load_importances

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


def plot_attribution(table: pd.DataFrame, path: Path, top: int = 20) -> None:
    from faultllm.reporting import _pyplot

    plt = _pyplot()
    shown = table.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(shown) + 1.2))
    ax.barh(shown["feature"].astype(str), shown["mean_abs_effect"])
    ax.set_xlabel("mean |change in p(predicted label)| when the feature is occluded")
    ax.set_title("LLM feature attribution (occlusion)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def explain(cfg, out_dir) -> dict:
    from faultllm.config import start_run, write_json
    from faultllm.evaluation import open_run
    from faultllm.reporting import markdown, print_summary

    run = open_run(cfg.run_dir)
    n_test = len(run.split.test)
    probe_rows = choose_rows(cfg.explain.rows, cfg.explain.n_probe_rows, n_test, cfg.seed)
    attribution_rows = choose_rows(cfg.explain.rows, cfg.explain.n_attribution_rows, n_test, cfg.seed)
    out_dir = start_run(cfg, out_dir)

    transcripts = probe_transcripts(run, probe_rows, list(cfg.explain.new_tokens))
    transcripts.to_csv(out_dir / "transcripts.csv", index=False)
    effects = occlusion(run, attribution_rows, reference_values(run, cfg.explain.reference), cfg.eval.batch_size)
    effects.to_csv(out_dir / "attribution_rows.csv", index=False)
    table = aggregate(effects, run.split.features)
    table.to_csv(out_dir / "attribution.csv", index=False)
    plot_attribution(table, out_dir / "attribution.png")
    comparison = None
    if cfg.explain.baselines_dir:
        comparison = compare_with_baselines(table, Path(cfg.explain.baselines_dir), cfg.explain.top_k)
        comparison.to_csv(out_dir / "comparison.csv", index=False)

    lines = [f"# Explanations for {run.run_dir}", "", "## Free-text probe", ""]
    lines += [
        markdown(transcripts[["row", "label", "new_tokens", "output", "valid", "correct"]]),
        "## Occlusion attribution",
        "",
    ]
    lines += [
        f"Reference value: training {cfg.explain.reference}; {len(attribution_rows)} test rows.",
        "",
        "![attribution](attribution.png)",
        "",
    ]
    lines += [markdown(table.head(15)[["rank", "feature", "mean_abs_effect"]])]
    if comparison is not None:
        lines += ["## Against the tree baselines' importances", "", markdown(comparison)]
    (out_dir / "report.md").write_text("\n".join(lines))

    valid = transcripts.groupby("new_tokens")["valid"].mean().to_dict()
    summary = {
        "top_features": table["feature"].head(cfg.explain.top_k).tolist(),
        "valid_answer_rate_by_new_tokens": {int(k): float(v) for k, v in valid.items()},
        "comparison": comparison.to_dict(orient="records") if comparison is not None else None,
    }
    write_json(out_dir / "explain.json", summary)
    print_summary(
        f"explained: {run.run_dir}",
        {
            "probe rows / token budgets": f"{len(probe_rows)} / {list(cfg.explain.new_tokens)}",
            "valid answers by budget": ", ".join(
                f"{k} tokens: {v:.0%}" for k, v in summary["valid_answer_rate_by_new_tokens"].items()
            ),
            f"top {cfg.explain.top_k} features (occlusion)": ", ".join(map(str, summary["top_features"])),
            "vs baselines (spearman)": ", ".join(
                f"{r['model']}/{r['importance']}: {r['spearman']:.2f}" for r in summary["comparison"]
            )
            if comparison is not None
            else "(explain.baselines_dir not given)",
            "written to": str(out_dir),
        },
    )
    return summary
