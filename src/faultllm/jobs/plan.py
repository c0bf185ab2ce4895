"""`faultllm plan job=train|hpo` (configs/plan.yaml): what that run will cost, with no weights loaded.
Writes plan.json and plan.md (see faultllm/cost/plan.py for what is counted and how)."""

from __future__ import annotations

from pathlib import Path

from faultllm.compare.tables import print_summary
from faultllm.config.jobs import PlanJob
from faultllm.cost.plan import make_plan
from faultllm.cost.records import Bounds, Hours, PlanRecord
from faultllm.run.directory import start_run
from faultllm.run.kind import RunKind
from faultllm.runtime.files import write_text


def run(cfg: PlanJob, run_dir: Path) -> PlanRecord:
    run_dir = start_run(cfg, run_dir, RunKind.PLAN)
    plan = make_plan(cfg)
    plan.write(run_dir / PlanRecord.FILE)
    lines = summary(cfg, plan)
    write_text(run_dir / "plan.md", markdown(cfg, plan, lines))
    print_summary(title(cfg, plan), lines | {"written to": str(run_dir / PlanRecord.FILE)})
    return plan


def title(cfg: PlanJob, plan: PlanRecord) -> str:
    return f"plan: faultllm {cfg.job} on {cfg.data.display_name} with {plan.model.path} ({cfg.plan.gpu})"


def _n(value: float) -> str:
    return f"{value:,.0f}" if 10 <= abs(value) < 1e5 else f"{value:.3g}"


def _pair(bounds: Bounds, unit: str = "") -> str:
    if bounds.worst == bounds.expected:
        return f"{_n(bounds.worst)}{unit}"
    return f"worst {_n(bounds.worst)}{unit}, expected {_n(bounds.expected)}{unit}"


def _workers(hours: Hours) -> str:
    return f"{hours.workers} worker{'s' if hours.workers > 1 else ''}"


def summary(cfg: PlanJob, plan: PlanRecord) -> dict[str, str]:
    rows, prompt, completion, memory = plan.rows, plan.prompt_tokens, plan.completion_tokens, plan.memory_gib
    folds = {f"{fold.train}/{fold.val}" for fold in rows.folds}
    return {
        "rows": f"train {rows.train}, test {rows.test}"
        + (f"; {len(rows.folds)} folds of {', '.join(sorted(folds))} (train/val)" if folds else ""),
        "prompt tokens per row": f"prompt.format={cfg.prompt.format}: min {prompt.min}, mean {prompt.mean:.1f}, "
        f"max {prompt.max}; completion {completion.min}-{completion.max}",
        "parameters": f"{plan.model.parameters / 1e9:.3g} B (base {plan.model.n_base / 1e9:.3g} B), "
        f"LoRA {plan.model.n_lora / 1e6:.3g} M at r={cfg.lora.r}",
        "trained tokens": _pair(plan.train_tokens),
        "scored tokens": _pair(plan.scoring_tokens),
        "model loads": _pair(plan.model_loads),
        "FLOPs": _pair(plan.flops),
        "memory per GPU": f"{memory.estimate_gib:.1f} GiB of {memory.gpu_memory_gib:g} ({memory.quantization}, "
        f"gradient checkpointing {'on' if memory.gradient_checkpointing else 'off'})",
        "memory terms": memory_terms(memory.terms_gib),
        "rate": plan.throughput.source,
        "GPU-hours": "; ".join(f"{_workers(h)}: {_pair(h.gpu_hours)}" for h in plan.hours),
        "wall-clock hours": "; ".join(f"{_workers(h)}: {_pair(h.wall_hours)}" for h in plan.hours),
        "the study's way": f"{_n(plan.study.gpu_hours)} GPU-h: x{plan.study_ratio:.1f} (padded to "
        f"{plan.study.pad_to}, {plan.study.new_tokens} tokens decoded at batch 1, unpruned, a load per fold)",
        **{f"note {i + 1}": note for i, note in enumerate(plan.notes)},
    }  # fmt: skip


def memory_terms(terms: dict[str, float]) -> str:
    """The memory estimate's terms in GiB, the LoRA ones apart (docs/memory_model.md)."""
    lora = " + ".join(f"{terms[key]:.2f} {name}" for key, name in LORA_TERMS.items())
    return (f"base weights {terms['base_weights']:.2f}, activations {terms['activations']:.2f}, "
            f"LM head {terms['head']:.2f} saved + {terms['backward']:.2f} backward; LoRA: {lora}")  # fmt: skip


LORA_TERMS = {"lora_weights": "weights", "lora_gradients": "gradients", "lora_optimizer": "AdamW",
              "lora_activations": "activations"}  # fmt: skip


def markdown(cfg: PlanJob, plan: PlanRecord, lines: dict[str, str]) -> str:
    table = "\n".join(f"| {key} | {value} |" for key, value in lines.items())
    return f"# {title(cfg, plan)}\n\n| | |\n| --- | --- |\n{table}\n\nAll numbers: plan.json.\n"
