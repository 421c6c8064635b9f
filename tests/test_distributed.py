"""SuperPos, Residual and DePT on 2 CPU ranks with the real engines: DeepSpeed ZeRO-3 (every parameter
partitioned), FSDP1 (``FullyShardedDataParallel`` with peft's auto-wrap policy) and FSDP2 (``fully_shard``), each
launched once with ``torch.distributed.run`` (distributed_worker.py does the work on the ranks).

For every engine and method: the adapter created on the ranks starts exactly as one created in a single process
(the same sampled ids, E_freeze, initial prompt), a saved adapter loads there with ``is_trainable=True``, 3 AdamW
steps give the same table on both ranks and match a single-process run, and ``save_pretrained`` /
``export_prompt_tuning`` called on every rank write adapters that load bit-exact in a process without the engine.
Under ZeRO-3 the ``transformers.Trainer`` saves too: a checkpoint and ``save_model`` neither hang nor write an
empty table. The accelerate example (examples/accelerate/) trains on 2 CPU ranks with its ZeRO-3 config, and refuses
its FSDP config there (accelerate would silently run DDP on CPU). The harness (``peft_superpos.train``) with
``--deepspeed`` trains and resumes under ZeRO-3 like one process, and its evaluation gives one process's records
under FSDP1 and FSDP2 too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
from distributed_worker import METHODS, STEPS, initial_state, method_config, reference_run
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from tiny_models import (
    REPO_ROOT,
    TESTS_DIR,
    batch_logits,
    cli_args,
    make_tiny,
    perturb,
    run_cli,
    subprocess_env,
    tiny_model_dir,
)
from transformers import AutoModelForCausalLM

import peft_superpos  # noqa: F401  (registers the methods)
from peft_superpos.harness import RunRecord

pytestmark = pytest.mark.distributed
ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny base model folder, and one trained-looking adapter per method saved in one process."""
    root = tmp_path_factory.mktemp("distributed")
    base_dir, adapters = root / "base", root / "adapters"
    make_tiny("llama").save_pretrained(base_dir)
    for method in METHODS:
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), method_config(method))
        perturb(model)
        model.save_pretrained(adapters / method)
    return base_dir, adapters


def torchrun(arguments: list[str], cwd, what: str, timeout: float = 300) -> None:
    """``torch.distributed.run`` of ``arguments`` on 2 ranks (``--standalone``: a free port, so parallel runs do not
    collide); the test fails with the ranks' output when they fail or hang."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *arguments]
    env = {**subprocess_env(), "DS_ACCELERATOR": "cpu"}
    try:
        process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as error:  # a collective that only some ranks entered
        pytest.fail(f"{what} on 2 ranks hung for {timeout} s\n{(error.stderr or b'')[-6000:]}")
    assert process.returncode == 0, f"{what} failed\n{process.stdout[-3000:]}\n{process.stderr[-8000:]}"


def launch(engine: str, base_dir, adapters, out) -> None:
    """Run distributed_worker.py on 2 ranks."""
    torchrun([str(TESTS_DIR / "distributed_worker.py"), engine, str(base_dir), str(adapters), str(out)], out, engine)


def plain_model(base_dir, adapter_dir):
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)


def assert_reloads_exactly(base_dir, folder, table: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adapter in ``folder`` holds ``table`` bit for bit and loads with stock peft (no engine) onto the base,
    whose encoder then gives the same table and state."""
    saved = load_file(folder / ADAPTER_FILE)
    assert torch.equal(saved["prompt_embeddings"], table)
    encoder = plain_model(base_dir, folder).prompt_encoder["default"]
    assert torch.equal(encoder.final_table(), table)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    return saved


@pytest.mark.parametrize("engine", ["zero3", "fsdp1", "fsdp2"])
def test_two_ranks_match_one_process_and_save_exactly(engine, inputs, tmp_path):
    base_dir, adapters = inputs
    launch(engine, base_dir, adapters, tmp_path)
    for method in METHODS:
        folder = tmp_path / method
        created = [torch.load(folder / f"created-rank{rank}.pt") for rank in range(2)]
        if engine == "zero3":  # the base really was partitioned when the adapter was created
            assert created[0]["embedding_shape"] == (0,)
        expected = initial_state(get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), method_config(method)))
        for state in created:
            for name, tensor in expected.items():
                assert torch.equal(state[name], tensor), (method, name)

        trained = [torch.load(folder / f"trained-rank{rank}.pt") for rank in range(2)]
        assert trained[0]["split"] and trained[1]["split"], method
        assert torch.equal(trained[0]["table"], trained[1]["table"]), method
        reference = reference_run(base_dir, adapters / method)
        reference_table = reference.prompt_encoder["default"].final_table()
        torch.testing.assert_close(trained[0]["table"], reference_table, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(trained[0]["table"], load_file(adapters / method / ADAPTER_FILE)["prompt_embeddings"])

        assert_reloads_exactly(base_dir, folder / "saved", trained[0]["table"])
        # a state_dict without the split prompt, given on one rank only: a clear error, not a hang
        assert "stage3_gather_16bit_weights_on_model_save" in (folder / "partial-error.txt").read_text()
        assert not (folder / "partial").exists()
        reloaded = plain_model(base_dir, folder / "saved")
        torch.testing.assert_close(
            batch_logits(reloaded, "llama"), batch_logits(reference, "llama"), rtol=1e-4, atol=1e-5
        )
        if method != "dept":
            exported = load_file(folder / "exported" / ADAPTER_FILE)
            assert list(exported) == ["prompt_embeddings"] and torch.equal(
                exported["prompt_embeddings"], trained[0]["table"]
            )


def test_trainer_saves_under_zero3(inputs, tmp_path):
    """Checkpoints and ``save_model`` of the stock Trainer under ZeRO-3 (peft's prompt tuning hangs there: its
    saving runs the prompt encoder, a collective, on rank 0 only)."""
    base_dir, adapters = inputs
    launch("zero3-trainer", base_dir, adapters, tmp_path)
    tables = [torch.load(tmp_path / f"trained-rank{rank}.pt")["table"] for rank in range(2)]
    assert torch.equal(tables[0], tables[1])
    final = assert_reloads_exactly(base_dir, tmp_path / "final", tables[0])
    checkpoint = load_file(tmp_path / "checkpoint-2" / ADAPTER_FILE)
    assert_reloads_exactly(base_dir, tmp_path / "checkpoint-2", checkpoint["prompt_embeddings"])
    start = load_file(adapters / "superpos" / ADAPTER_FILE)["prompt_embeddings"]
    assert not torch.allclose(checkpoint["prompt_embeddings"], start)
    assert not torch.allclose(checkpoint["prompt_embeddings"], final["prompt_embeddings"])
    assert (tmp_path / f"checkpoint-{STEPS}" / ADAPTER_FILE).is_file()


def run_accelerate_example(config: str, model, output_dir) -> subprocess.CompletedProcess:
    """``accelerate launch`` of examples/accelerate/train_superpos.py with ``config`` on 2 CPU processes."""
    with socket.socket() as probe:  # a free port: other runs on this machine may hold accelerate's default
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    examples = REPO_ROOT / "examples" / "accelerate"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(examples / config)]
    command += ["--main_process_port", str(port), str(examples / "train_superpos.py"), "--model", str(model)]
    command += ["--output-dir", str(output_dir), "--max-steps", "2", "--num-virtual-tokens", "3", "--m", "8"]
    return subprocess.run(command, env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_accelerate_example_trains_with_zero3(tmp_path_factory, tmp_path):
    model = tiny_model_dir(tmp_path_factory, "llama")
    process = run_accelerate_example("zero3.yaml", model, tmp_path)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-8000:]
    assert "DEEPSPEED on 2 processes" in process.stdout
    adapter = tmp_path / "adapter"
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), adapter)
    table = load_file(adapter / ADAPTER_FILE)["prompt_embeddings"]
    assert torch.equal(loaded.prompt_encoder["default"].final_table(), table)
    start = get_peft_model(AutoModelForCausalLM.from_pretrained(model), loaded.peft_config["default"])
    assert not torch.allclose(start.prompt_encoder["default"].final_table(), table)  # trained, not empty


def test_accelerate_example_refuses_fsdp_on_cpu(tmp_path_factory, tmp_path):
    process = run_accelerate_example("fsdp2.yaml", tiny_model_dir(tmp_path_factory, "llama"), tmp_path)
    assert process.returncode != 0 and "accelerate runs FSDP on GPUs only" in process.stderr


def test_harness_with_zero3_matches_one_process(tmp_path_factory, tmp_path):
    """``peft_superpos.train --deepspeed`` (examples/deepspeed/zero3.json) on 2 CPU ranks, then resumed from its
    ZeRO-3 checkpoint: every record written once, the same train losses, prompt tables and generated texts as one
    process without DeepSpeed, and checkpoints that load in one process without it. The 5 eval examples split
    3 and 2 over the ranks in batches of 2: the ranks still generate in lockstep (ZeRO-3 gathers in every
    forward)."""
    model = tiny_model_dir(tmp_path_factory, "llama")
    config = json.loads((REPO_ROOT / "examples" / "deepspeed" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even the tiny prompt
    ds_config = tmp_path / "zero3.json"
    ds_config.write_text(json.dumps(config))
    # global batch 6 = every CB training example: each step sees the same examples however they are split
    common = ("--batch-size", "6", "--eval-batch-size", "2", "--eval-steps", "2", "--eval-mode", "generate")
    single, zero3 = tmp_path / "single", tmp_path / "zero3"
    run_cli(cli_args(model, single, "cb", *common, "--max-steps", "3"))
    for steps in ("2", "3"):  # 3: resumes from the ZeRO-3 checkpoint of step 2
        arguments = cli_args(model, zero3, "cb", *common, "--max-steps", steps, "--deepspeed", str(ds_config))
        torchrun(["-m", "--", "peft_superpos.train", *arguments], tmp_path, f"the harness ({steps} steps)")

    mine, reference = RunRecord(zero3), RunRecord(single)
    rows = mine.rows(dedupe=False)
    assert [(row["step"], row["session"]) for row in rows] == [(2, 0), (3, 1)]  # one row per evaluation
    for row, expected in zip(rows, reference.rows(), strict=True):
        assert row["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
        assert mine.predictions(row["step"]) == reference.predictions(row["step"])  # raw generated texts included
    final, expected = mine.final, reference.final
    assert final["world_size"] == 2 and final["global_step"] == 3 and final["config"]["deepspeed"] == str(ds_config)
    assert final["resumed_from"] == str(zero3 / "checkpoint-2")
    for key in ("trainable_parameters", "total_parameters", "step_size"):
        assert final[key] == expected[key], key
    for step in (2, 3):
        table = load_file(zero3 / f"checkpoint-{step}" / ADAPTER_FILE)["prompt_embeddings"]
        single_table = load_file(single / f"checkpoint-{step}" / ADAPTER_FILE)["prompt_embeddings"]
        torch.testing.assert_close(table, single_table, rtol=1e-5, atol=1e-6)
        assert_reloads_exactly(model, zero3 / f"checkpoint-{step}", table)


def test_evaluation_under_fsdp_matches_one_process(tmp_path_factory, tmp_path):
    """The harness's evaluation (generate and rank) of a model sharded by FSDP1 or FSDP2 on 2 ranks: every rank
    gets the records of one process, raw generated texts included."""
    model = tiny_model_dir(tmp_path_factory, "llama")
    launch("fsdp-evaluation", model, tmp_path, tmp_path)
    expected = json.loads((tmp_path / "evaluation-single.json").read_text())
    assert len(expected["generate"]) == len(expected["rank"]) == 5
    for engine in ("fsdp1", "fsdp2"):
        for rank in range(2):
            assert json.loads((tmp_path / f"{engine}-rank{rank}.json").read_text()) == expected, (engine, rank)
