"""`faultllm explain run_dir=DIR` (configs/explain.yaml): the free-text "why?" probe and occlusion
attribution of a trained run, compared with a baselines run's importances when one is given."""

from __future__ import annotations

from pathlib import Path

from faultllm.compare import plots
from faultllm.compare.tables import print_summary
from faultllm.config.jobs import ExplainJob
from faultllm.llm.explain import (
    attribution_table,
    compare_with_baselines,
    occlusion,
    probe_transcripts,
    reference_values,
    report_markdown,
)
from faultllm.llm.trained import TrainedLLM
from faultllm.preflight import explain_inputs
from faultllm.run.directory import start_run
from faultllm.run.kind import RunKind
from faultllm.runtime.files import write_csv, write_json, write_text


def run(cfg: ExplainJob, out_dir: Path) -> dict:
    saved, probe_rows, attribution_rows = explain_inputs(cfg)
    llm, test = TrainedLLM.from_run(saved), saved.split.test
    out_dir = start_run(cfg, out_dir, RunKind.EXPLAIN)

    transcripts = probe_transcripts(llm, test, probe_rows, list(cfg.explain.new_tokens))
    write_csv(transcripts, out_dir / "transcripts.csv")
    reference = reference_values(saved, cfg.explain.reference)
    effects = occlusion(llm, test, attribution_rows, reference, cfg.eval.batch_size)
    write_csv(effects, out_dir / "attribution_rows.csv")
    table = attribution_table(effects, saved.split.features)
    write_csv(table, out_dir / "attribution.csv")
    plots.attribution(table, out_dir / "attribution.png")
    comparison = None
    if cfg.explain.baselines_dir:
        comparison = compare_with_baselines(table, Path(cfg.explain.baselines_dir), cfg.explain.top_k)
        write_csv(comparison, out_dir / "comparison.csv")
    report = report_markdown(
        saved.run_dir, transcripts, table, comparison, cfg.explain.reference, len(attribution_rows)
    )
    write_text(out_dir / "report.md", report)

    valid = transcripts.groupby("new_tokens")["valid"].mean().to_dict()
    summary = {
        "top_features": table["feature"].head(cfg.explain.top_k).tolist(),
        "valid_answer_rate_by_new_tokens": {int(k): float(v) for k, v in valid.items()},
        "comparison": comparison.to_dict(orient="records") if comparison is not None else None,
    }
    write_json(out_dir / "explain.json", summary)
    _print_summary(cfg, saved.run_dir, summary, len(probe_rows), out_dir)
    return summary


def _print_summary(cfg: ExplainJob, run_dir: Path, summary: dict, n_probe_rows: int, out_dir: Path) -> None:
    comparison = summary["comparison"]
    print_summary(
        f"explained: {run_dir}",
        {
            "probe rows / token budgets": f"{n_probe_rows} / {list(cfg.explain.new_tokens)}",
            "valid answers by budget": ", ".join(
                f"{k} tokens: {v:.0%}" for k, v in summary["valid_answer_rate_by_new_tokens"].items()
            ),
            f"top {cfg.explain.top_k} features (occlusion)": ", ".join(map(str, summary["top_features"])),
            "vs baselines (spearman)": ", ".join(
                f"{r['model']}/{r['importance']}: {r['spearman']:.2f}" for r in comparison
            )
            if comparison is not None
            else "(explain.baselines_dir not given)",
            "written to": str(out_dir),
        },
    )
