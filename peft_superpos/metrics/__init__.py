"""The paper's task metrics for use outside the harness: an ``evaluate`` module and a ``Trainer`` hook.

    import evaluate
    from peft_superpos.metrics import METRIC_PATH

    metric = evaluate.load(METRIC_PATH, "cb")  # config name: any of peft_superpos.data.TASK_NAMES; no Hub needed
    metric.compute(predictions=[0, 2, None], references=[0, 1, 1])  # None (or -1): invalid, counted as wrong

``trainer_compute_metrics(task, tokenizer)`` is a ready ``transformers.Trainer(compute_metrics=...)`` for
generated label tokens. Both compute what the harness reports (``peft_superpos.metrics.scoring``).
``paired_bootstrap(task, predictions_a, predictions_b, references)`` says whether a score difference on the
same eval examples is real or within noise (``peft_superpos.metrics.bootstrap``).
"""

from pathlib import Path

from .bootstrap import PairedDifference, Verdict, bootstrap_scores, paired_bootstrap
from .floors import best_constant_prediction, constant_prediction_floor
from .scoring import compute_metrics, fill_invalid
from .trainer_metrics import trainer_compute_metrics

#: Folder of the ``evaluate`` metric module ``superpos_glue``: ``evaluate.load(METRIC_PATH, task_name)``.
METRIC_PATH: str = str(Path(__file__).resolve().parent / "superpos_glue")

__all__ = [
    "METRIC_PATH",
    "PairedDifference",
    "Verdict",
    "best_constant_prediction",
    "bootstrap_scores",
    "constant_prediction_floor",
    "compute_metrics",
    "fill_invalid",
    "paired_bootstrap",
    "trainer_compute_metrics",
]
