"""The quality report (benchmarks/quality_report.py and its parts: quality_stats.py, quality_numbers.py,
quality_render.py, quality_figures.py): its numbers and tables on hand-made results, the paired bootstrap over the
saved predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from quality_results import lr_check_grid, write_first_steps, write_lr_check, write_predictions, write_run

from benchmarks import quality_report as qr
from benchmarks.quality_grid import ABLATION, MAIN, MINILM, SEED, ZERO_SHOT, RunSpec
from benchmarks.quality_stats import SeriesSummary, Side, compare, paired, pooled, two_level_interval
from peft_superpos.metrics import compute_metrics


def report_grid() -> list[RunSpec]:
    grid = [RunSpec(ZERO_SHOT, "smollm2", task, "full", eval_only=True) for task in ("sst2", "cb", "rte")]
    grid += [
        RunSpec(MAIN, "smollm2", task, method, max_steps=400)
        for task in ("sst2", "cb", "rte")
        for method in ("superpos", "prompt_tuning", "residual")
    ]
    grid.append(RunSpec(SEED, "smollm2", "sst2", "superpos", seed=7, max_steps=400))
    grid += [RunSpec(ABLATION, "smollm2", "sst2", "superpos", max_steps=400, m=16)]
    grid += [RunSpec(MINILM, "minilm", "sst2", "superpos", max_steps=400, keep_dropout=k) for k in (False, True)]
    return grid


def test_report_numbers_on_a_partial_results_tree(tmp_path):
    results = tmp_path / "results"
    grid = report_grid()

    def put(run_id: str, scores: dict[int, float], **kwargs) -> Path:
        assert run_id in {spec.run_id for spec in grid}
        write_run(results / run_id, scores, **kwargs)
        return results / run_id

    put("smollm2/sst2/zero-shot", {0: 30.0}, final_extra={"floors": {"majority": 51.0}})
    put("smollm2/sst2/superpos-s42", {100: 66.0, 200: 75.0, 300: 80.0, 400: 78.0}, invalid=2.0, losses={100: 0.6})
    put("smollm2/sst2/superpos-s7", {100: 72.0, 200: 80.0, 300: 80.0, 400: 80.0}, top_class=100.0, losses={100: 0.4})
    put("smollm2/sst2/prompt_tuning-s42", {100: 60.0, 400: 55.0}, losses={100: 0.9, 400: 0.1})
    environment = {"device": "cpu: X", "torch_threads": 2, "torch": "2.13", "transformers": "5.23", "peft": "0.21"}
    put("smollm2/sst2/residual-s42", {100: 70.0, 400: 70.0}, final_extra={"environment": environment})
    cb = put("smollm2/cb/superpos-s42", {100: 50.0, 400: 50.0})
    # gold labels of the CB eval examples: predicting class 0 everywhere gives accuracy 60, macro-F1 25 -> 42.5
    write_predictions(cb, 100, "cb", [0, 0, 0, 1, 2], [0, 0, 0, 0, 0])
    put("smollm2/cb/prompt_tuning-s42", {100: 50.0, 400: 40.0}, losses={100: 1.5})  # superpos has none on cb
    put("smollm2/cb/residual-s42", {100: 80.0, 400: 80.0})
    put("smollm2/rte/superpos-s42", {100: 50.0, 200: 60.0})  # short of its 400 steps: not finished
    put("smollm2/sst2/superpos-m16-s42", {100: 40.0, 400: 60.0})
    put("minilm/sst2/superpos-dropout-s42", {100: -5.0, 400: -1.0})
    put("minilm/sst2/superpos-s42", {100: 0.0, 400: -3.0})

    report = qr.build_report(grid, results)
    assert (report["finished"], report["planned"]) == (11, len(grid))
    assert report["tables"]["status"].startswith(f"11 of {len(grid)} planned runs finished")
    environments = report["tables"]["environments"].splitlines()
    assert environments[2:] == ["| not recorded | not recorded | not recorded | not recorded | not recorded | 10 |",
                                "| cpu: X | 2 | 2.13 | 5.23 | 0.21 | 1 |"]  # fmt: skip
    assert (
        "| main | smollm2 | sst2, cb, rte | superpos; prompt_tuning; residual | 400 | 42 | 9 |"
        in (report["tables"]["grid"])
    )
    assert report["floors"]["smollm2"]["sst2"] == {"majority": 51.0, "zero_shot": 30.0}
    assert report["floors"]["smollm2"]["cb"] == {"majority": pytest.approx(42.5), "zero_shot": None}
    assert report["floors"]["smollm2"]["rte"] == {"majority": None, "zero_shot": None}

    superpos = report["series"]["smollm2"]["sst2"]["superpos"]
    assert superpos["seeds"] == [42, 7]
    assert superpos["best"] == 80.0 and superpos["final"] == 79.0
    assert superpos["steps_to_90"] == 150.0  # 90 % of 80 = 72: step 200 (seed 42: 66 < 72) and step 100 (seed 7: 72)
    assert superpos["invalid_at_best"] == 1.0
    assert superpos["top_class_at_best"] == 75.0  # seed 42: 50 %, seed 7: one class for all
    assert superpos["early_train_loss"] == pytest.approx(0.5)  # mean train loss of steps 1-100, mean over seeds
    assert superpos["first_eval"] == 69.0  # the score at step 100, mean over seeds
    assert superpos["curve"] == {
        "steps": [100, 200, 300, 400],
        "scores": [69.0, 77.5, 80.0, 79.0],
        "low": [66.0, 75.0, 80.0, 78.0],
        "high": [72.0, 80.0, 80.0, 80.0],
    }
    assert report["series"]["smollm2"]["rte"]["superpos"] is None

    assert report["average"]["smollm2"]["methods"]["superpos"]["best"] is None  # rte missing
    best_table = report["tables"]["smollm2-best"]
    assert "| sst2 | 51.0 | 30.0 | 80.0 | 60.0 | 70.0 |" in best_table
    assert "| cb | 42.5 | — | 50.0 | 50.0 | 80.0 |" in best_table
    assert "| rte | — | — | — | — | — |" in best_table
    detail = report["tables"]["smollm2-detail"]
    assert "| sst2 | superpos | 2 | 80.0 | 79.0 | 150 | 0.500 | 1.0 | 75.0 | 51.0 | 30.0 |" in detail
    assert "| cb | superpos | 1 | 50.0 | 50.0 | 100 | — | 0.0 | 50.0 | 42.5 | — |" in detail
    assert "| sst2 | superpos | 80.0 | 80.0 |" in report["tables"]["smollm2-seeds"]
    assert report["ablation"]["superpos m=128 (main run)"]["best"] == {"sst2": 80.0}  # seed 42 only
    assert report["ablation"]["superpos m=16"]["final"] == {"sst2": 60.0}
    assert report["minilm"]["best"]["sst2"] == {"superpos, dropout off": 0.0, "superpos, dropout on": -1.0}
    assert "| sst2 | — | 0.0 | -1.0 |" in report["tables"]["minilm"]
    minilm = report["series"]["minilm"]["sst2"]
    assert minilm["superpos, dropout off"]["steps_to_90"] == 100  # best 0 (e.g. MCC of a collapse): reached at once
    assert minilm["superpos, dropout on"]["steps_to_90"] is None  # 90 % of a negative best means nothing

    # head to head over the tasks both sides finished (rte: neither); with no predictions to test a task's
    # difference on (only superpos on cb saved any) every task is untested and none counts as learned
    head = {row["label"]: row for row in report["head_to_head"]}
    versus_pt = head["smollm2: superpos vs prompt_tuning"]
    assert versus_pt["tasks"] == ["sst2", "cb"]
    assert [versus_pt[k] for k in ("better", "within_noise", "worse", "untested")] == [0, 0, 0, 2]
    assert versus_pt["per_task"] == {"sst2": None, "cb": None}
    assert (versus_pt["first_best"], versus_pt["second_best"]) == (65.0, 55.0)
    assert (versus_pt["first_steps_to_90"], versus_pt["second_steps_to_90"]) == (None, None)
    # early train loss over the tasks where both sides have it: sst2 only (superpos logged none on cb)
    assert (versus_pt["first_early_train_loss"], versus_pt["second_early_train_loss"]) == pytest.approx((0.5, 0.9))
    versus_floor = head["smollm2: superpos vs majority floor"]
    assert (versus_floor["first_best"], versus_floor["second_best"]) == (65.0, 46.75)
    # cb: the saved predictions are the constant of the floor itself, so the difference is exactly 0
    assert versus_floor["per_task"]["cb"] == {"difference": 7.5, "low": 0.0, "high": 0.0, "verdict": "within noise"}
    dropout = head["minilm: superpos, dropout off vs on"]
    assert (dropout["tasks"], dropout["first_best"], dropout["second_best"]) == (["sst2"], 0.0, -1.0)
    assert (
        "| smollm2: superpos vs residual | 2 | 0 / 0 / 0 (2 untested) | 0 / 0 / 0 (2 untested) | 65.0 | 75.0 | -10.0 "
        "| — / — | — / — |" in (report["tables"]["head-to-head"])
    )
    assert "| cb | +7.5 (+0.0 to +0.0) | — | — |" in report["tables"]["smollm2-floor"]
    # untested tasks: no mean over the tasks, and no task is known to be at the floor for every method
    assert report["tables"]["smollm2-floor"].endswith("| **average** | — | — | — |")
    assert report["not_informative"] == {"smollm2": [], "minilm": []}

    qr.write_report(grid, results)
    assert (results / "report.md").read_text().startswith("# Quality suite report")
    assert json.loads((results / "report.json").read_text())["finished"] == 11
    pictures = sorted(p.name for p in (results / "curves").iterdir())
    assert pictures == ["minilm-sst2.png", "overview.png", "smollm2-cb.png", "smollm2-sst2.png"]


def test_ablation_at_two_seeds_sits_beside_the_main_run_of_each_seed(tmp_path):
    results = tmp_path / "results"
    grid = [
        RunSpec(MAIN, "smollm2", "sst2", "superpos", max_steps=400),
        RunSpec(SEED, "smollm2", "sst2", "superpos", seed=7, max_steps=400),
        *(RunSpec(ABLATION, "smollm2", "sst2", "superpos", seed=seed, max_steps=400, m=16) for seed in (42, 7)),
    ]
    for spec, scores in zip(grid, ({100: 80.0, 400: 78.0}, {100: 84.0, 400: 84.0}, {100: 70.0, 400: 76.0},
                                   {100: 72.0, 400: 70.0}), strict=True):  # fmt: skip
        write_run(results / spec.run_id, scores, final_extra={"hyperparameters": {"lr": 3e-3}})
    write_first_steps(results, {("smollm2", "superpos", "normal", None, False): 90.0,
                                ("smollm2", "superpos", "normal", 16, False): 27.0})  # fmt: skip
    # predictions at the best evaluations of seed 42 (200 examples, the first 160 / 152 right); none for seed 7
    golds = [i % 2 for i in range(200)]
    for spec, (step, right) in zip(grid[::2], ((100, 160), (400, 152)), strict=True):
        write_predictions(results / spec.run_id, step, "sst2", golds, [g if i < right else 1 - g
                                                                      for i, g in enumerate(golds)])  # fmt: skip
    report = qr.build_report(grid, results)
    assert report["ablation"]["superpos m=16"]["best"] == {"sst2 seed 42": 76.0, "sst2 seed 7": 72.0}
    table = report["tables"]["ablation"]
    assert "| variant | whole step / RMS | sst2 seed 42 best / final | sst2 seed 7 best / final | mean best |" in table
    assert "| superpos m=128 (main run) | 0.27 | 80.0 / 78.0 | 84.0 / 84.0 | 82.0 |" in table
    assert "| superpos m=16 | 0.081 | 76.0 / 76.0 | 72.0 / 70.0 | 74.0 |" in table
    # the variant against the main run of its seed: 8 examples fewer right at seed 42, untested at seed 7
    versus_main = report["ablation"]["superpos m=16"]["versus_main"]
    assert versus_main["sst2 seed 42"]["verdict"] == "worse" and versus_main["sst2 seed 42"]["difference"] == -4.0
    assert versus_main["sst2 seed 7"] is None and "versus_main" not in report["ablation"]["superpos m=128 (main run)"]
    differences = report["tables"]["ablation-differences"].splitlines()
    assert differences[0] == "| task | superpos m=16 |" and differences[3] == "| sst2 seed 7 | — |"
    assert differences[2].startswith("| sst2 seed 42 | **-4.0** (")


def side(scores: list[float]) -> Side:
    """A side of a comparison on 3 made-up examples with the given score on each resample."""
    return ((0, 1, 2), (0, 1, 0)), np.array(scores)


def test_head_to_head_speed_counts_only_tasks_both_sides_learn():
    first = {"a": SeriesSummary(best=80.0, steps_to_90=100), "b": SeriesSummary(best=50.0, steps_to_90=300),
             "c": SeriesSummary(best=90.0, steps_to_90=400)}  # fmt: skip
    second = {"a": SeriesSummary(best=70.0, steps_to_90=200), "b": SeriesSummary(best=60.0, steps_to_90=100),
              "c": SeriesSummary(best=90.0, steps_to_90=100)}  # fmt: skip
    # on every resample: a better, b worse, c within noise
    sides = {"a": (side([1.0, 1.0]), side([0.0, 0.0])), "b": (side([0.0, 0.0]), side([1.0, 1.0])),
             "c": (side([-1.0, 1.0]), side([0.0, 0.0]))}  # fmt: skip
    # only a is learned by both sides (b: first is at its majority floor, where 90 % of the best is reached by
    # chance; c: not above the floor either)
    row = compare("x", first, second, sides, {"a"})
    assert row.tasks == ["a", "b", "c"]
    assert (row.better, row.within_noise, row.worse, row.untested) == (1, 1, 1, 0)
    assert (row.first_steps_to_90, row.second_steps_to_90) == (100, 200)
    assert row.pooled.difference == 0.0  # the mean of +10, -10 and 0
    # c not informative: left out of the counts, still in the mean over the tasks
    quiet = compare("x", first, second, sides, {"a"}, not_informative=["c"])
    assert (quiet.better, quiet.within_noise, quiet.worse, quiet.not_informative) == (1, 0, 1, ["c"])
    assert quiet.pooled == row.pooled


def test_pooled_interval_resamples_each_task_independently():
    rng = np.random.default_rng(3)
    first, second = 50 + rng.normal(0, 5, 1000), 48 + rng.normal(0, 5, 1000)
    one = pooled([(side(list(first)), side(list(second)), 50.0, 48.0)])
    alone = paired(side(list(first)), side(list(second)), 50.0, 48.0)
    assert one == alone  # one task: its own paired difference
    # two tasks of the same size share their resample draws (same seed); the pooled interval treats them as
    # independent, so the mean of two equal noisy differences is about 1/sqrt(2) as wide as one
    two = pooled([(side(list(first)), side(list(second)), 50.0, 48.0)] * 2)
    assert two.difference == 2.0 and 0.6 < (two.high - two.low) / (one.high - one.low) < 0.8
    assert pooled([(side(list(first)), None, 50.0, 48.0), (side(list(first)), side(list(second)), 50.0, 48.0)]) is None


def test_two_level_interval_spans_the_seeds_as_well_as_the_examples():
    examples = np.random.default_rng(1).normal(0, 2, 1000)
    # two seeds 10 points apart, each steady over the examples: a quarter of the draws take one seed twice
    assert two_level_interval(np.stack([np.full(1000, 80.0), np.full(1000, 90.0)])) == (80.0, 90.0)
    # one seed: the interval over the examples alone
    low, high = two_level_interval((85 + examples)[None])
    assert (low, high) == (np.percentile(85 + examples, 2.5), np.percentile(85 + examples, 97.5))
    # equal seeds: the seed draws change nothing
    assert two_level_interval(np.stack([85 + examples] * 2)) == (low, high)


def test_head_to_head_tests_each_task_on_the_saved_predictions(tmp_path):
    """SST-2: SuperPos (two seeds) right on about 90 % at step 100 against prompt tuning's 55 % (65 % at its best,
    step 200): better at both, both above the floor. COPA: one example more than the floor (56 against 55 on 100):
    within noise, not learned."""
    results = tmp_path / "results"
    grid = [RunSpec(MAIN, "smollm2", task, method, max_steps=200) for task in ("sst2", "copa")
            for method in ("superpos", "prompt_tuning")]  # fmt: skip
    grid.append(RunSpec(SEED, "smollm2", "sst2", "superpos", seed=7, max_steps=200))
    golds = {"sst2": [i % 2 for i in range(200)], "copa": [0] * 55 + [1] * 45}

    def put(spec: RunSpec, right: dict[int, int]) -> None:
        """A run whose evaluation at step s gets the first ``right[s]`` examples right (predictions saved)."""
        scores = {}
        for step, count in right.items():
            preds = [g if i < count else 1 - g for i, g in enumerate(golds[spec.task])]
            scores[step] = compute_metrics(spec.task, preds, golds[spec.task])["score"]
            write_predictions(results / spec.run_id, step, spec.task, golds[spec.task], preds)
        write_run(results / spec.run_id, scores)

    superpos, prompt_tuning, copa_superpos, copa_prompt_tuning, superpos_7 = grid
    put(superpos, {100: 180, 200: 178})
    put(superpos_7, {100: 176, 200: 170})
    put(prompt_tuning, {100: 110, 200: 130})
    put(copa_superpos, {100: 55, 200: 56})
    put(copa_prompt_tuning, {100: 55, 200: 55})
    report = qr.build_report(grid, results)
    head = {row["label"]: row for row in report["head_to_head"]}
    versus_pt = head["smollm2: superpos vs prompt_tuning"]
    # COPA: both within noise of the floor, so it is not informative and left out of the counts
    assert [versus_pt[k] for k in ("better", "within_noise", "worse", "untested")] == [1, 0, 0, 0]
    assert versus_pt["not_informative"] == ["copa"] and report["not_informative"]["smollm2"] == ["copa"]
    sst2 = versus_pt["per_task"]["sst2"]
    assert sst2["difference"] == pytest.approx(89.0 - 65.0) and sst2["low"] > 15 and sst2["verdict"] == "better"
    copa = versus_pt["per_task"]["copa"]
    # the sides differ on one example only: a resample without it differs by 0, so 0 is in the interval
    assert copa["difference"] == pytest.approx(1.0) and copa["low"] == 0.0 < copa["high"]
    assert (versus_pt["first_steps_to_90"], versus_pt["second_steps_to_90"]) == (100, 200)  # sst2 only
    # the mean of the two tasks' differences, its interval from resampling each task's examples
    average = versus_pt["pooled"]
    assert average["difference"] == pytest.approx((24.0 + 1.0) / 2) and average["verdict"] == "better"
    assert (sst2["low"] + copa["low"]) / 2 < average["low"] < average["high"] < (sst2["high"] + copa["high"]) / 2
    # at the first evaluation: 89 against 55 on SST-2; the same predictions on COPA
    first_eval = versus_pt["first_eval"]
    assert [first_eval[k] for k in ("better", "within_noise", "worse", "untested")] == [1, 0, 0, 0]
    assert first_eval["per_task"]["sst2"]["difference"] == pytest.approx(89.0 - 55.0)
    assert first_eval["per_task"]["copa"] == {"difference": 0.0, "low": 0.0, "high": 0.0, "verdict": "within noise"}
    floor = head["smollm2: superpos vs majority floor"]
    assert [floor[k] for k in ("better", "within_noise", "worse")] == [1, 1, 0] and floor["first_eval"] is None
    assert head["smollm2: prompt_tuning vs majority floor"]["per_task"]["copa"]["high"] == 0.0  # the floor itself
    pairs = report["tables"]["smollm2-pairs"]
    assert f"| sst2 | **+24.0** ({sst2['low']:+.1f} to {sst2['high']:+.1f}) |" in pairs
    assert f"| copa | +1.0 ({copa['low']:+.1f} to {copa['high']:+.1f}) n.i. |" in pairs
    assert f"| **average** | **+12.5** ({average['low']:+.1f} to {average['high']:+.1f}) |" in pairs
    assert "| copa | +0.0 (+0.0 to +0.0) n.i. |" in report["tables"]["smollm2-pairs-first-eval"]
    assert "| copa (not informative) | 55.0 | — | 56.0 | 55.0 |" in report["tables"]["smollm2-best"]
    assert (
        "| smollm2: superpos vs prompt_tuning | 2 | 1 / 0 / 0 (1 not informative) | 1 / 0 / 0 (1 not informative) "
        f"| 72.5 | 60.0 | **+12.5** ({average['low']:+.1f} to {average['high']:+.1f}) |"
        in (report["tables"]["head-to-head"])
    )

    # a run without its predictions file, or evaluated on other examples, leaves the task untested
    (results / copa_prompt_tuning.run_id / "predictions" / "step-000100.jsonl").unlink()  # its best (the first)
    write_predictions(results / superpos_7.run_id, 100, "sst2", golds["sst2"][:100], golds["sst2"][:100])
    head = {row["label"]: row for row in qr.build_report(grid, results)["head_to_head"]}
    assert head["smollm2: superpos vs prompt_tuning"]["untested"] == 2
    assert head["smollm2: superpos vs prompt_tuning"]["first_eval"]["untested"] == 2


def test_second_seed_against_the_main_seed_and_each_seed_head_to_head(tmp_path):
    """SST-2, 200 examples: SuperPos right on 180 at seed 42 and 150 at seed 7 (a training-seed difference far
    outside the eval-example interval), prompt tuning on 130 at seed 42; its seed-7 run is not finished."""
    results = tmp_path / "results"
    grid = [RunSpec(MAIN, "smollm2", "sst2", method, max_steps=200) for method in ("superpos", "prompt_tuning")]
    grid += [
        RunSpec(SEED, "smollm2", "sst2", method, seed=7, max_steps=200) for method in ("superpos", "prompt_tuning")
    ]
    golds = [i % 2 for i in range(200)]
    for spec, right in zip(grid[:3], ({100: 170, 200: 180}, {100: 110, 200: 130}, {100: 150, 200: 140}), strict=True):
        for step, count in right.items():
            write_predictions(results / spec.run_id, step, "sst2", golds,
                              [g if i < count else 1 - g for i, g in enumerate(golds)])  # fmt: skip
        write_run(results / spec.run_id, {step: count / 2 for step, count in right.items()})
    report = qr.build_report(grid, results)

    seeds = report["seeds"]["smollm2"]["series"]
    assert seeds["sst2/superpos"]["best"] == {42: 90.0, 7: 75.0}
    spread = seeds["sst2/superpos"]["versus_main_seed"][7]
    assert spread["difference"] == -15.0 and spread["verdict"] == "worse" and spread["high"] < -5
    assert seeds["sst2/prompt_tuning"] == {"best": {42: 65.0, 7: None}, "versus_main_seed": {7: None}}
    table = report["tables"]["smollm2-seeds"].splitlines()
    assert table[0] == "| task | method | best, seed 42 | best, seed 7 | seed 7 - seed 42 |"
    assert table[2].startswith("| sst2 | superpos | 90.0 | 75.0 | **-15.0** (")
    assert table[3] == "| sst2 | prompt_tuning | 65.0 | — | — |"

    pairs = report["tables"]["smollm2-seed-pairs"].splitlines()
    assert pairs[0] == "| task | superpos vs prompt_tuning | superpos vs prompt_tuning, step 100 |"
    assert pairs[2].startswith("| sst2 seed 42 | **+25.0** (") and "| **+30.0** (" in pairs[2]
    assert pairs[3] == "| sst2 seed 7 | — | — |"


def test_report_lr_check_table_marks_the_chosen_lr(tmp_path):
    results = tmp_path / "results"
    write_lr_check(results, {("sst2", 3e-3): 70, ("cola", 3e-3): 30, ("sst2", 1e-2): 80, ("cola", 1e-2): 30,
                             ("sst2", 3e-2): 75, ("cola", 3e-2): 45})  # fmt: skip
    report = qr.build_report(lr_check_grid(), results)
    assert report["lr_check"]["smollm2/superpos"]["chosen"] == 3e-2
    assert (
        "| smollm2 superpos | 0.03 (chosen) | — | 75.0 | 45.0 | 60.0 |" in report["tables"]["lr-check"]
    )  # not measured
