"""``evaluate`` metric module of the 13 GLUE / SuperGLUE tasks of the SuperPos-Prompt paper, as the harness reports
them. It ships inside the ``peft_superpos`` package and loads offline; the config name is the task::

    import evaluate
    from peft_superpos.metrics import METRIC_PATH

    metric = evaluate.load(METRIC_PATH, "cb")
    metric.compute(predictions=[0, 2, None, -1], references=[0, 1, 1, 2])

Inputs (one row per example):

* ``predictions``: label ids (``int64``; STS-B: scores, ``float64``). An invalid prediction (generated text that is
  no label word, ``Task.parse_prediction`` returned ``None``) is ``None``, or ``-1`` for classes and ``NaN`` for
  STS-B where an array cannot hold ``None``. It counts as wrong exactly as in the harness (binary tasks: the
  opposite of the gold label; MNLI/CB: a class that is never gold; STS-B: the end of [0, 5] farthest from gold).
* ``references``: gold label ids (STS-B: gold scores).
* ``groups`` (MultiRC only): the question id of each answer option, as a string (the ``group`` column the harness
  builds, ``"<paragraph>-<question>"``); exact match counts a question only if all its answers are right.

Output: the task's metrics (e.g. CB ``macro_f1`` and ``accuracy``), ``score`` (their mean) and ``invalid_rate``,
all in 0..100. The computation is ``peft_superpos.metrics.scoring.compute_metrics``, the one the harness uses.
"""

import math

import datasets
import evaluate

from peft_superpos.data.tasks import get_task
from peft_superpos.metrics.scoring import compute_metrics

_CITATION = """\
@article{sadraeijavaeri2024superpos,
  title={SuperPos-Prompt: Enhancing Soft Prompt Tuning of Language Models with Superposition of Multi Token
    Embeddings},
  author={SadraeiJavaeri, MohammadAli and Asgari, Ehsaneddin and McHardy, Alice Carolyn and Rabiee, Hamid Reza},
  journal={arXiv preprint arXiv:2406.05279},
  year={2024}
}
"""

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions: label ids (STS-B: scores); None, -1 (classes) or NaN (STS-B) for an invalid prediction.
    references: gold label ids (STS-B: gold scores).
    groups: MultiRC only, the question id (string) of each answer option.
Returns:
    The task's metrics, "score" (their mean) and "invalid_rate", in 0..100.
Examples:
    >>> metric = evaluate.load(peft_superpos.metrics.METRIC_PATH, "mrpc")
    >>> metric.compute(predictions=[1, 0, None, 1], references=[1, 0, 1, 0])
    {'f1': 50.0, 'accuracy': 50.0, 'score': 50.0, 'invalid_rate': 25.0}
"""

#: Prediction a numpy array can hold for an invalid label id.
INVALID_LABEL_ID = -1


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SuperposGlue(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        try:
            task = get_task(self.config_name)
        except ValueError as error:
            raise ValueError(f"{error}. Pass the task as the config name: evaluate.load(METRIC_PATH, 'cb')") from None
        value = datasets.Value("float64" if task.is_regression else "int64")
        features = {"predictions": value, "references": value}
        if task.is_grouped:
            features["groups"] = datasets.Value("string")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
        )

    def _compute(self, predictions, references, groups=None) -> dict[str, float]:
        task = get_task(self.config_name)
        if task.is_regression:
            predictions = [None if p is None or math.isnan(p) else p for p in predictions]
        else:
            predictions = [None if p == INVALID_LABEL_ID else p for p in predictions]
        return compute_metrics(task, predictions, references, groups)
