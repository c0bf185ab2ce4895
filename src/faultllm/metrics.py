"""Classification metrics shared by the LLM evaluator and the classical baselines."""

from __future__ import annotations


def classification_metrics(true: list, predicted: list, labels: list) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    keys = [str(label) for label in labels]
    true_s = [str(v) for v in true]
    pred_s = [str(v) for v in predicted]  # an invalid generation ("None") counts as wrong
    return {
        "accuracy": float(accuracy_score(true_s, pred_s)),
        "macro_f1": float(f1_score(true_s, pred_s, labels=keys, average="macro", zero_division=0)),
        "per_class_recall": dict(
            zip(keys, recall_score(true_s, pred_s, labels=keys, average=None, zero_division=0).tolist(), strict=True)
        ),
        "confusion_matrix": confusion_matrix(true_s, pred_s, labels=keys).tolist(),
        "n": len(true_s),
    }
