"""SuperPos, Residual and DePT on 2 CPU ranks with the real engines: DeepSpeed ZeRO-3 (every parameter
partitioned), FSDP1 (``FullyShardedDataParallel`` with peft's auto-wrap policy) and FSDP2 (``fully_shard``), each
launched once with ``torch.distributed.run`` (distributed_worker.py does the work on the ranks).

For every engine and method: the adapter created on the ranks starts exactly as one created in a single process
(the same sampled ids, E_freeze, initial prompt), a saved adapter loads there with ``is_trainable=True``, 3 AdamW
steps give the same table on both ranks and match a single-process run, and ``save_pretrained`` /
``export_prompt_tuning`` called on every rank write adapters that load bit-exact in a process without the engine.
Under ZeRO-3 the ``transformers.Trainer`` saves too: a checkpoint and ``save_model`` neither hang nor write an
empty table. The accelerate example (examples/accelerate/) trains on 2 CPU ranks with its ZeRO-3 config, and refuses
its FSDP config there (accelerate would silently run DDP on CPU).
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch
from distributed_worker import METHODS, STEPS, initial_state, method_config, reference_run
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from tiny_models import REPO_ROOT, TESTS_DIR, batch_logits, make_tiny, perturb, subprocess_env, tiny_model_dir
from transformers import AutoModelForCausalLM

import peft_superpos  # noqa: F401  (registers the methods)

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


def launch(engine: str, base_dir, adapters, out, timeout: float = 300) -> None:
    """Run distributed_worker.py on 2 ranks (``--standalone``: a free port, so parallel runs do not collide)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(TESTS_DIR / "distributed_worker.py"), engine, str(base_dir), str(adapters), str(out)]
    env = {**subprocess_env(), "DS_ACCELERATOR": "cpu"}
    try:
        process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=out)
    except subprocess.TimeoutExpired as error:  # a collective that only some ranks entered
        pytest.fail(f"{engine} on 2 ranks hung for {timeout} s\n{(error.stderr or b'')[-6000:]}")
    assert process.returncode == 0, f"{engine} failed\n{process.stdout[-3000:]}\n{process.stderr[-8000:]}"


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
