"""The CLI end to end on tiny models (one decoder-only, one encoder-decoder) and its one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from tiny_models import FIXTURE_DATA, cli_args, read_jsonl, run_cli, tiny_model_dir


@pytest.mark.parametrize(
    ("family", "task", "mode"), [("llama", "cb", "generate"), ("t5", "rte", "rank")], ids=["decoder", "seq2seq"]
)
def test_cli_end_to_end(family, task, mode, tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, family)
    out = tmp_path / "run"
    process = run_cli(cli_args(model, out, task, "--max-steps", "3", "--eval-steps", "2", "--eval-mode", mode))
    assert "done:" in process.stdout
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 3]  # every 2 steps and at the end
    expected = {"step", "epoch", "train_loss", "eval_score", "eval_accuracy", "eval_invalid_rate", "elapsed_s"}
    for row in rows:
        assert expected <= set(row)
    final = json.loads((out / "final.json").read_text())
    assert final["global_step"] == 3 and final["final"]["step"] == 3 and final["best"] is not None
    assert final["config"]["eval_mode"] == mode and final["timings"]["wall_s"] > 0
    assert final["model_class"] == ("T5ForConditionalGeneration" if family == "t5" else "LlamaForCausalLM")
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()


def _error_of(capsys, args) -> str:
    """Run the CLI in-process; it must exit 2 with a one-line ``error:`` message (argparse style)."""
    from peft_superpos.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if "error:" in line]
    assert len(message) == 1, err
    return message[0]


def test_unknown_task_lists_the_known_ones(capsys, tmp_path):
    message = _error_of(capsys, ["nosuchtask", "--output-dir", str(tmp_path)])
    assert "unknown task" in message and "RTE" in message and "CB" in message


def test_missing_data_names_the_expected_paths(capsys, tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    args = cli_args(model, tmp_path / "run", "copa")
    args[args.index("--data-dir") + 1] = str(tmp_path)
    message = _error_of(capsys, args)
    assert "COPA" in message and str(tmp_path / "superglue" / "COPA" / "train.jsonl") in message


def test_malformed_row_names_file_and_line(capsys, tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    data = tmp_path / "data"
    shutil.copytree(FIXTURE_DATA / "superglue" / "CB", data / "superglue" / "CB")
    train = data / "superglue" / "CB" / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[2] = '{"premise": "broken'
    train.write_text("\n".join(lines) + "\n")
    args = cli_args(model, tmp_path / "run", "cb")
    args[args.index("--data-dir") + 1] = str(data)
    assert f"{train}, line 3" in _error_of(capsys, args)


def test_subprocess_error_is_one_line(tmp_path):
    """The real entry point (python -m) prints the error without a traceback too."""
    process = run_cli(["cb", "--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path)], check=False)
    assert process.returncode == 2 and "Traceback" not in process.stderr and "is not a folder" in process.stderr
