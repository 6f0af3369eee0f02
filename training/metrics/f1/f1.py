"""F1 score as an offline `evaluate` module (the Hub's `f1` needs the network and scikit-learn).

Loaded by path: `evaluate.load("training/metrics/f1")`. Per class c, with true positives TP_c, false
positives FP_c and false negatives FN_c:

    F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)          (0 when the denominator is 0, as scikit-learn does)

Averages over classes, named as in scikit-learn:
    binary   : F1 of `pos_label` only
    macro    : unweighted mean of F1_c over the classes present in predictions or references
    weighted : mean of F1_c weighted by each class's support (count in references)
    micro    : 2 sum TP / (2 sum TP + sum FP + sum FN), which equals accuracy for single-label data
    None     : the list of F1_c, classes sorted
"""

import datasets
import evaluate
import numpy as np

AVERAGES = ("binary", "macro", "weighted", "micro", None)

_DESCRIPTION = "Harmonic mean of precision and recall, per class and averaged."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    average (str or None): one of "binary" (default), "macro", "weighted", "micro", or None.
    pos_label (int): the positive class for average="binary" (default 1).
    labels (list of int): the classes to score (default: every class seen in predictions or references).
Returns:
    {"f1": float} or {"f1": list of float} for average=None.
"""


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1, labels=None):
        if average not in AVERAGES:
            raise ValueError(f"f1: average={average!r} is not one of {AVERAGES}")
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if average == "binary":
            classes = np.array([pos_label])
        elif labels is not None:
            classes = np.asarray(labels)
        else:
            classes = np.union1d(predictions, references)
        true_pos = np.array([np.sum((predictions == c) & (references == c)) for c in classes], dtype=np.float64)
        false_pos = np.array([np.sum((predictions == c) & (references != c)) for c in classes], dtype=np.float64)
        false_neg = np.array([np.sum((predictions != c) & (references == c)) for c in classes], dtype=np.float64)
        if average == "micro":
            denominator = 2 * true_pos.sum() + false_pos.sum() + false_neg.sum()
            return {"f1": float(2 * true_pos.sum() / denominator) if denominator > 0 else 0.0}
        denominators = 2 * true_pos + false_pos + false_neg
        per_class = np.divide(2 * true_pos, denominators, out=np.zeros_like(true_pos), where=denominators > 0)
        if average is None:
            return {"f1": per_class.tolist()}
        if average == "weighted":
            support = true_pos + false_neg
            return {"f1": float(np.sum(per_class * support) / support.sum()) if support.sum() > 0 else 0.0}
        return {"f1": float(per_class.mean())}  # binary (one class) or macro
