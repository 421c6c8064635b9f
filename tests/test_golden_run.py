"""Golden runs: a refactor must not change what a seeded run computes.

Six steps of every method on a tiny random Llama and the CB fixtures (seed 42, batch 2, length-grouped
batches, rank evaluation at steps 3 and 6). The logged train losses depend on every update before them, so a
change to data order, padding, loss normalisation, initialisation or the optimizer groups moves them. If a
change is *meant* to alter training, regenerate the numbers and say so in the commit message.
"""

from __future__ import annotations

import pytest
from tiny_models import harness_config, read_jsonl

from peft_superpos.harness import run_experiment

# (step, train loss, eval score) per evaluation.
GOLDEN = {
    "superpos": [(3, 6.559439977010091, 29.523809523809526), (6, 6.539157867431641, 29.523809523809526)],
    "prompt_tuning": [(3, 6.554386138916016, 29.523809523809526), (6, 6.533902486165364, 29.523809523809526)],
    "residual": [(3, 6.557573954264323, 29.523809523809526), (6, 6.539663950602214, 29.523809523809526)],
    "dept": [(3, 6.565845489501953, 29.523809523809526), (6, 6.5477250417073565, 29.523809523809526)],
    "lora": [(3, 6.578245798746745, 29.523809523809526), (6, 6.571895599365234, 29.523809523809526)],
}


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_seeded_run_matches_the_golden_numbers(method, llama, tmp_path):
    config = harness_config(llama, tmp_path, method, max_steps=6, eval_steps=3, eval_mode="rank", seed=42)
    run_experiment(config)
    rows = [(r["step"], r["train_loss"], r["eval_score"]) for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert [r[0] for r in rows] == [g[0] for g in GOLDEN[method]]
    for (_, loss, score), (_, golden_loss, golden_score) in zip(rows, GOLDEN[method], strict=True):
        assert loss == pytest.approx(golden_loss, rel=1e-6)
        assert score == pytest.approx(golden_score, rel=1e-6)
