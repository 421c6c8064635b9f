"""The CLI end to end on tiny models (one decoder-only, one encoder-decoder) and its one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import (
    FIXTURE_DATA,
    REPO_ROOT,
    cli_args,
    finish_python,
    read_jsonl,
    run_cli,
    start_python,
    tiny_model_dir,
)

from peft_superpos.harness import DataError, MethodSettings, RunSettings, read_rows
from peft_superpos.harness.engines import SAVE_GATHERED

REAL_DATA = Path("/work/shared/data")


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
    environment = final["environment"]  # where the numbers were computed
    assert environment["device"].startswith(("cpu: ", "cuda: ")) and environment["torch"] == torch.__version__
    assert environment["torch_threads"] == 1 and environment["peft"]  # run_cli sets OMP_NUM_THREADS=1
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()


def _error_of(capsys, args) -> str:
    """Run the CLI in-process; it must exit 2 with a one-line ``error:`` message (argparse style), without
    printing the usage first."""
    from peft_superpos.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
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


@pytest.mark.parametrize(("flag", "value"), [("--epochs", "0"), ("--epochs", "-1"), ("--lr", "-1"), ("--m", "0")])
def test_out_of_range_values_are_named(flag, value, capsys, tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    args = cli_args(model, tmp_path / "run")
    del args[args.index("--m") : args.index("--m") + 2]
    args += [flag, value]
    message = _error_of(capsys, args)
    assert f"{flag} {float(value) if flag != '--m' else value}" in message and "must be" in message
    assert not (tmp_path / "run").exists()


def test_model_errors_name_the_folder(capsys, tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, no_tokenizer / name)
    message = _error_of(capsys, cli_args(no_tokenizer, tmp_path / "a", "cb", "--max-steps", "1"))
    assert f"--model {no_tokenizer} has no tokenizer" in message
    missing = tmp_path / "nowhere" / "model"
    message = _error_of(capsys, cli_args(missing, tmp_path / "b", "cb", "--max-steps", "1"))
    assert str(missing) in message and "does not exist" in message


def _real_cb(tmp_path) -> Path:
    if not (REAL_DATA / "superglue" / "CB").is_dir():
        pytest.skip("the real task files are not in /work/shared/data")
    shutil.copytree(REAL_DATA / "superglue" / "CB", tmp_path / "data" / "superglue" / "CB")
    return tmp_path / "data"


def test_invalid_utf8_and_null_fields_name_file_and_line(capsys, tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    data = _real_cb(tmp_path)
    train = data / "superglue" / "CB" / "train.jsonl"
    lines = train.read_bytes().splitlines(keepends=True)
    original = lines[4]
    lines[4] = original.replace(b"premise", b"pr\xffemise", 1)
    train.write_bytes(b"".join(lines))
    args = cli_args(model, tmp_path / "run", "cb", "--max-steps", "1")
    args[args.index("--data-dir") + 1] = str(data)
    message = _error_of(capsys, args)
    assert f"{train}, line 5: not valid UTF-8" in message

    row = json.loads(original)
    row["premise"] = None
    lines[4] = (json.dumps(row) + "\n").encode()
    train.write_bytes(b"".join(lines))
    message = _error_of(capsys, args)
    assert f"{train}, line 5: field 'premise' is null" in message
    from peft_superpos.harness import RunConfig, run_experiment

    config = RunConfig(task="cb", output_dir=str(tmp_path / "direct"), data_dir=str(data), model=str(model))
    with pytest.raises(DataError, match="line 5"):  # its own exception type, not a message to match
        run_experiment(config)


def test_every_setting_is_reachable_from_the_command_line(tmp_path, monkeypatch):
    from peft_superpos.train import parse_run_config

    monkeypatch.setenv("LOCAL_RANK", "0")  # as a launcher sets it: DeepSpeed on CPU needs one
    ds_config = tmp_path / "zero2.json"
    ds_config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    values = {"task": "rte", "output_dir": str(tmp_path), "data_dir": str(tmp_path), "model": "m", "method": "lora"}
    values.update(max_steps=7, eval_steps=3, save_steps=5, save_total_limit=4, batch_size=6, eval_batch_size=5)
    values.update(gradient_accumulation_steps=2, max_length=99, eval_mode="rank", eval_split="train", seed=3)
    values.update(max_train_samples=11, max_eval_samples=12, group_by_length=False, eval_only=True)
    values.update(zero_shot_floor=True, overwrite_output_dir=True, disable_tqdm=True)
    values.update(dev_size=9, dev_seed=2, lr=0.5, weight_decay=0.25, num_virtual_tokens=4, m=16, use_softmax=True)
    values.update(weight_init="uniform", weight_init_std=0.5, bottleneck_size=32, r=3, lora_lr=0.125, lora_alpha=7)
    values.update(lora_dropout=0.1, keep_dropout=True, deepspeed=str(ds_config))
    fields = {f.name for f in dataclasses.fields(RunSettings)} | {f.name for f in dataclasses.fields(MethodSettings)}
    assert set(values) == fields - {"epochs", "fsdp", "fsdp_config"}  # FSDP needs GPUs: see test_engine_options
    argv = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    config = parse_run_config(argv)
    settings = dataclasses.asdict(config.method_settings)
    assert {k: settings.get(k, getattr(config, k, None)) for k in values} == values
    assert parse_run_config(["cb", "--output-dir", "x", "--epochs", "0.5"]).epochs == 0.5


def test_config_files_and_run_config_json_reproduce_the_run(capsys, tmp_path_factory, tmp_path):
    """The same run from flags, from a YAML file (task positional in the file's place) and from the first
    run's own run_config.json: the same metrics."""
    import yaml

    from peft_superpos.train import main

    model = tiny_model_dir(tmp_path_factory, "llama")
    flags = ["--max-steps", "2", "--eval-steps", "2", "--eval-mode", "rank", "--max-eval-samples", "8", "--seed", "7"]
    assert main(cli_args(model, tmp_path / "flags", "cb", *flags)) == 0
    settings = {
        "task": "cb",
        "model": str(model),
        "data_dir": str(FIXTURE_DATA),
        "output_dir": str(tmp_path / "yaml"),
        "batch_size": 2,
        "eval_batch_size": 8,
        "disable_tqdm": True,
        "num_virtual_tokens": 3,
        "m": 8,
        "max_steps": 2,
        "eval_steps": 2,
        "eval_mode": "rank",
        "max_eval_samples": 8,
        "seed": 7,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    assert main([str(tmp_path / "run.yaml")]) == 0
    recorded = tmp_path / "flags" / "run_config.json"
    assert main(["--config", str(recorded), "--output-dir", str(tmp_path / "again")]) == 0
    keys, names = ("step", "train_loss", "eval_score"), ("flags", "yaml", "again")
    runs = [[{k: r[k] for k in keys} for r in read_rows(tmp_path / name / "metrics.jsonl")] for name in names]
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 1
    finals = [json.loads((tmp_path / name / "final.json").read_text()) for name in names]
    assert finals[0]["config"] == {**finals[2]["config"], "output_dir": finals[0]["config"]["output_dir"]}
    capsys.readouterr()
    (tmp_path / "bad.json").write_text(json.dumps({**settings, "learning_rate": 0.1}))
    assert "unknown settings learning_rate" in _error_of(capsys, [str(tmp_path / "bad.json")])
    (tmp_path / "bad.json").write_text(json.dumps({**settings, "max_steps": "ten"}))
    assert "max_steps = 'ten' is not a int" in _error_of(capsys, [str(tmp_path / "bad.json")])


def test_a_new_method_is_one_registration_and_one_method_entry(llama, tmp_path):
    """README "Adding a method": a config class, an encoder and their registration (what a tuners/<method>/ folder
    holds), plus one ``MethodSpec``; the command line then trains it, lists it in ``--help``, and the adapter it
    saves reloads through stock ``PeftModel.from_pretrained``. In a fresh process: registration is permanent."""
    out = tmp_path / "run"
    script = f"""
        import contextlib, io, json
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from peft_superpos import SuperPosPromptConfig, SuperPosPromptEmbedding
        from peft_superpos._peft_compat import register_prompt_method
        from peft_superpos.harness.methods import METHODS, OPTIONS, MethodSpec
        from peft_superpos.train import main

        class ToyPromptConfig(SuperPosPromptConfig):
            def __post_init__(self):
                super().__post_init__()
                self.peft_type = TOY_PROMPT

        class ToyPromptEmbedding(SuperPosPromptEmbedding):
            pass

        TOY_PROMPT = register_prompt_method("toy_prompt", ToyPromptConfig, ToyPromptEmbedding)
        METHODS["toy"] = MethodSpec("toy", "a toy prompt method", ToyPromptConfig, lr=1e-2, weight_decay=0.0,
                                    options=(OPTIONS["num_virtual_tokens"], OPTIONS["m"]))

        help_text = io.StringIO()
        with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
            main(["--help"])
        assert "toy: a toy prompt method" in help_text.getvalue(), help_text.getvalue()
        assert main({cli_args(llama, out, "cb", "--method", "toy", "--max-steps", "2", "--eval-steps", "2")!r}) == 0
        saved = {str(out / "checkpoint-2")!r}
        assert json.load(open(saved + "/adapter_config.json"))["peft_type"] == "TOY_PROMPT"
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(llama)!r}), saved)
        assert type(model.prompt_encoder["default"]).__name__ == "ToyPromptEmbedding"
        assert json.load(open({str(out / "final.json")!r}))["config"]["method"] == "toy"
        print("ok")
    """
    assert finish_python(start_python(script, tmp_path, "new_method"), timeout=240).strip().endswith("ok")


def test_run_config_json_of_earlier_runs_loads_with_the_current_setting_names(tmp_path):
    """The run_config.json of a run made before the method settings were named after the config fields (as the
    committed quality results hold them: softmax, bottleneck, rank, lr_lowrank, and seed/max_length under
    method_settings) is read with the current names, and the old flags still work."""
    from peft_superpos.harness.errors import RunFolderError
    from peft_superpos.harness.run_folder import check_run_identity
    from peft_superpos.train import parse_run_config

    old_settings = {"lr": None, "softmax": True, "bottleneck": 16, "rank": 4, "lr_lowrank": 0.5, "keep_dropout": False}
    old = {"task": "cb", "output_dir": str(tmp_path / "run"), "data_dir": str(FIXTURE_DATA), "method": "dept"}
    old.update(seed=7, method_settings={**old_settings, "seed": 0, "max_length": 256})
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(old))
    config = parse_run_config(["--config", str(path)])
    settings = config.method_settings
    assert (settings.use_softmax, settings.bottleneck_size, settings.r, settings.lora_lr) == (True, 16, 4, 0.5)
    assert (config.seed, config.max_length) == (7, 256)
    flags = ["cb", "--output-dir", "x", "--softmax", "--bottleneck", "8", "--rank", "2", "--lr-lowrank", "0.25"]
    settings = parse_run_config(flags).method_settings
    assert (settings.use_softmax, settings.bottleneck_size, settings.r, settings.lora_lr) == (True, 8, 2, 0.25)
    # a restart into the folder of such a run compares the settings under their current names
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run_config.json").write_text(json.dumps(old))
    current = json.loads(json.dumps(config.to_dict()))
    current["method_settings"]["r"] = 5
    with pytest.raises(RunFolderError, match=r"changed: method_settings\.r\b"):
        check_run_identity(current, folder, ("method_settings",))


EXAMPLE_ZERO3 = REPO_ROOT / "examples" / "deepspeed" / "zero3.json"


def _json_file(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    return str(folder / name)


def _zero3_with(folder: Path, change) -> str:
    """examples/deepspeed/zero3.json after ``change(config)``, as a file in ``folder``."""
    config = json.loads(EXAMPLE_ZERO3.read_text())
    change(config)
    return _json_file(folder, "changed.json", json.dumps(config))


ENGINE_ERRORS = {  # case: (the options, given the test's folder; fragments of the error)
    "missing file": (lambda d: ["--deepspeed", str(d / "nowhere.json")], ["nowhere.json: no such file"]),
    "not JSON": (lambda d: ["--deepspeed", _json_file(d, "bad.json", "{stage: 3")], ["not valid JSON"]),
    "optimizer": (
        lambda d: ["--deepspeed", _zero3_with(d, lambda c: c.update(optimizer={"type": "AdamW"}))],
        ["remove its optimizer section", "its own AdamW", "FusedAdam"],
    ),
    "scheduler": (
        lambda d: ["--deepspeed", _zero3_with(d, lambda c: c.update(scheduler={"type": "WarmupLR"}))],
        ["remove its scheduler section"],
    ),
    "fixed batch": (
        lambda d: ["--deepspeed", _zero3_with(d, lambda c: c.update(train_micro_batch_size_per_gpu=4))],
        ['train_micro_batch_size_per_gpu=4 to "auto"', "--batch-size"],
    ),
    "adapter not gathered": (
        lambda d: ["--deepspeed", _zero3_with(d, lambda c: c["zero_optimization"].pop(SAVE_GATHERED))],
        [f'"{SAVE_GATHERED}": true', "would hold none"],
    ),
    "zero-shot floor": (
        lambda d: ["--deepspeed", str(EXAMPLE_ZERO3), "--zero-shot-floor"],
        ["--zero-shot-floor with --deepspeed", "partitioned", "without --deepspeed"],
    ),
    "eval only": (lambda d: ["--deepspeed", str(EXAMPLE_ZERO3), "--eval-only"], ["--eval-only with", "partitioned"]),
    "stock prompt tuning": (
        lambda d: ["--deepspeed", str(EXAMPLE_ZERO3), "--method", "prompt_tuning"],
        ["--method prompt_tuning with", "hang", "superpos"],
    ),
    "no launcher": (
        lambda d: ["--deepspeed", str(EXAMPLE_ZERO3)],
        ["without GPUs: start the processes with a launcher", "torchrun --nproc_per_node 2"],
    ),
    "FSDP on CPU": (
        lambda d: ["--fsdp", "full_shard auto_wrap"],
        ["accelerate runs FSDP on GPUs only", "silently train with plain DDP", "leave out --fsdp", "--deepspeed"],
    ),
    "FSDP options": (lambda d: ["--fsdp", "full_shard sideways"], ["expected space-separated options of", "auto_wrap"]),
    "FSDP config alone": (lambda d: ["--fsdp-config", "fsdp.json"], ["--fsdp-config fsdp.json needs --fsdp"]),
    "FSDP config missing": (
        lambda d: ["--fsdp", "full_shard", "--fsdp-config", str(d / "nowhere.json")],
        ["--fsdp-config", "nowhere.json: no such file"],
    ),
    "both engines": (lambda d: ["--deepspeed", str(EXAMPLE_ZERO3), "--fsdp", "full_shard"], ["not both"]),
}


@pytest.mark.parametrize("case", list(ENGINE_ERRORS))
def test_engine_options_name_the_problem_and_the_way_out(case, capsys, tmp_path, monkeypatch):
    """--deepspeed / --fsdp / --fsdp-config that cannot run as given: one line naming the file or option and
    what to do, before anything is written."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)  # not started by a launcher
    options, fragments = ENGINE_ERRORS[case]
    message = _error_of(capsys, ["cb", "--output-dir", str(tmp_path / "run"), *options(tmp_path)])
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "run").exists()


def test_engine_options_are_recorded_and_define_the_run(tmp_path, monkeypatch):
    """The engine options go into run_config.json and come back from it (the deepspeed launcher's --local_rank is
    taken and ignored); a restart with another engine is refused (its checkpoints resume only with their own)."""
    from peft_superpos.harness.errors import RunFolderError
    from peft_superpos.harness.run_folder import prepare_folder
    from peft_superpos.train import parse_run_config

    monkeypatch.setenv("LOCAL_RANK", "0")
    folder = tmp_path / "run"
    folder.mkdir()
    config = parse_run_config(["cb", "--output-dir", str(folder), "--deepspeed", str(EXAMPLE_ZERO3), "--local_rank=0"])
    prepare_folder(config, folder)
    again = parse_run_config(["--config", str(folder / "run_config.json")])
    assert again.deepspeed == str(EXAMPLE_ZERO3) and again.to_dict() == config.to_dict()
    other = _zero3_with(tmp_path, lambda c: None)
    with pytest.raises(RunFolderError, match="changed: deepspeed"):
        prepare_folder(parse_run_config(["cb", "--output-dir", str(folder), "--deepspeed", other]), folder)
    with pytest.raises(RunFolderError, match="changed: deepspeed"):
        prepare_folder(parse_run_config(["cb", "--output-dir", str(folder)]), folder)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # FSDP's options as on a GPU machine
    fsdp_config = _json_file(tmp_path, "fsdp.json", json.dumps({"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}))
    fsdp = ["--fsdp", "full_shard auto_wrap", "--fsdp-config", fsdp_config]
    config = parse_run_config(["cb", "--output-dir", str(tmp_path / "fsdp"), *fsdp])
    assert (config.fsdp, config.fsdp_config) == ("full_shard auto_wrap", fsdp_config)
    path = tmp_path / "fsdp-run.json"
    path.write_text(json.dumps(config.to_dict()))
    assert parse_run_config(["--config", str(path)]).to_dict() == config.to_dict()
