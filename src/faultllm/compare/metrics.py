"""Classification metrics shared by the LLM evaluator and the classical baselines."""

from __future__ import annotations


def classification_metrics(true: list, predicted: list, labels: list) -> dict:
    """Accuracy, and macro-F1 and per-class recall over the classes present in the truth or the predictions
    (`classes_scored`): a class absent from both would count as recall 0 and drag macro-F1 down for nothing.
    The confusion matrix keeps every label, in `labels` order."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    keys = [str(label) for label in labels]
    true_s = [str(v) for v in true]
    pred_s = [str(v) for v in predicted]  # an invalid generation ("None") counts as wrong
    present = [key for key in keys if key in set(true_s) | set(pred_s)]
    return {
        "accuracy": float(accuracy_score(true_s, pred_s)),
        "macro_f1": float(f1_score(true_s, pred_s, labels=present, average="macro", zero_division=0)),
        "per_class_recall": dict(
            zip(
                present,
                recall_score(true_s, pred_s, labels=present, average=None, zero_division=0).tolist(),
                strict=True,
            )
        ),
        "classes_scored": present,
        "confusion_matrix": confusion_matrix(true_s, pred_s, labels=keys).tolist(),
        "n": len(true_s),
    }
