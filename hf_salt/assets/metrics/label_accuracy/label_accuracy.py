"""Label accuracy as a local `evaluate` module (loads offline: `evaluate.load(<this folder>)`).

`evaluate.load("accuracy")` downloads its script from the Hub; this local copy computes the same
formula (share of predictions equal to the reference) on label strings.
"""

import datasets
import evaluate


class LabelAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Share of predicted labels equal to the reference label (string equality).",
            citation="",
            inputs_description="predictions: list of str, references: list of str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        if not references:
            return {"accuracy": 0.0}
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references)}
