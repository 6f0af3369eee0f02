"""Accuracy as an offline `evaluate` module.

`evaluate.load("accuracy")` fetches its script from the Hugging Face Hub, so it fails with the network
unreachable. This folder is a self-contained module with the same inputs and output key, loaded by path:
`evaluate.load("training/metrics/accuracy")`. Written here (not copied) and needs only numpy.

    accuracy = sum_i w_i * [prediction_i == reference_i] / sum_i w_i      (w_i = 1 unless sample_weight)
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Fraction of predictions equal to their reference label (optionally sample-weighted)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    normalize (bool): return the fraction (default) or, when False, the weighted count of correct predictions.
    sample_weight (list of float): per-sample weights (default: all 1).
Returns:
    {"accuracy": float}
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        weights = np.ones(len(predictions), dtype=np.float64) if sample_weight is None else np.asarray(
            sample_weight, dtype=np.float64
        )
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        if total == 0:
            raise ValueError("accuracy: no samples (or all sample_weight are 0); the fraction is undefined")
        return {"accuracy": correct / total}
