"""Training on 2 CPU ranks with the real engines, and the single-process run it must match (test_distributed.py).

``python -m torch.distributed.run --nproc_per_node 2 distributed_worker.py ENGINE BASE ADAPTERS OUT`` runs, for
every method of ``METHODS`` and on every rank: ``get_peft_model`` on the tiny model saved in ``BASE`` (its initial
state goes to ``OUT/<method>/created-rank<r>.pt``), then ``PeftModel.from_pretrained(..., is_trainable=True)`` of
the adapter the test saved in ``ADAPTERS/<method>``, ``STEPS`` AdamW steps on this rank's batch, the final table
(``trained-rank<r>.pt``) and ``save_pretrained`` / ``export_prompt_tuning`` called on every rank into
``OUT/<method>/{saved,exported}``. ENGINE is ``zero3`` (DeepSpeed ZeRO-3, the base built inside ``zero.Init``
through ``from_pretrained``), ``fsdp1`` (``FullyShardedDataParallel`` with peft's ``fsdp_auto_wrap_policy``) or
``fsdp2`` (``fully_shard`` on every decoder layer and the root). ``zero3-trainer`` trains SuperPos with a
``transformers.Trainer`` under ZeRO-3 instead and saves through its checkpoints and ``save_model``.
``fsdp-evaluation`` runs the harness's evaluation of the tiny harness model in ``BASE`` under FSDP1 and FSDP2
(:func:`run_evaluation`).

``reference_run`` is the same training in one process: the mean of the ranks' losses, which is what the engines'
gradient averaging computes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

STEPS = 3
LR = 1e-2
BATCH, LENGTH, WORLD = 2, 6, 2
# (config class name, config kwargs): small sizes, so each step is quick
METHODS = {
    "superpos": ("SuperPosPromptConfig", {"num_virtual_tokens": 4, "m": 16}),
    "residual": ("ResidualPromptConfig", {"num_virtual_tokens": 4, "bottleneck_size": 8}),
    "dept": ("DePTConfig", {"num_virtual_tokens": 4, "r": 2, "max_length": 16}),
}
# ZeRO-3 keeps parameters below this many elements whole on every rank; 0 partitions every parameter, as happens
# to a real model's prompt (ΔE alone is n·m·d = 10·128·4096 values on a 7B model)
ZERO3 = {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_gather_16bit_weights_on_model_save": True}


def method_config(method: str):
    import peft_superpos

    name, kwargs = METHODS[method]
    return getattr(peft_superpos, name)(task_type="CAUSAL_LM", **kwargs)


def rank_batch(rank: int) -> torch.Tensor:
    """The input ids (and labels) ``(BATCH, LENGTH)`` rank ``rank`` trains on."""
    from tiny_models import VOCAB

    return torch.randint(3, VOCAB, (BATCH, LENGTH), generator=torch.Generator().manual_seed(100 + rank))


def optimizer_for(model) -> torch.optim.Optimizer:
    from peft_superpos import make_param_groups

    return torch.optim.AdamW(make_param_groups(model, weight_decay=1e-5), lr=LR)


def reference_run(base_dir: Path, adapter_dir: Path):
    """The adapter in ``adapter_dir`` trained ``STEPS`` steps in one process on the mean loss of every rank's batch."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir, is_trainable=True)
    model.eval()  # no dropout anywhere (the base's and Residual's MLP dropout), as on the ranks
    optimizer = optimizer_for(model)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = sum(model(input_ids=ids, labels=ids).loss for ids in map(rank_batch, range(WORLD))) / WORLD
        loss.backward()
        optimizer.step()
    return model


def initial_state(model) -> dict[str, torch.Tensor]:
    """What a freshly created adapter starts from: its encoder's state and table (SuperPos: the sampled ids and
    E_freeze; Residual and DePT: the vocabulary-initialised prompt)."""
    encoder = model.prompt_encoder["default"]
    return {"table": encoder.final_table(), **{k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}}


# -- on the ranks -------------------------------------------------------------------------------------------
def _init(engine: str) -> int:
    if engine.startswith("zero3"):
        from peft_superpos.distributed import start_deepspeed_on_cpu

        start_deepspeed_on_cpu()
    else:
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    return torch.distributed.get_rank()


def _shard(engine: str, model):
    """``model`` wrapped by FSDP1 with peft's auto-wrap policy (``fsdp1``) or sharded by FSDP2 on every decoder
    layer and the root (``fsdp2``)."""
    if engine == "fsdp1":
        from peft.utils.other import fsdp_auto_wrap_policy
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(
            model, auto_wrap_policy=fsdp_auto_wrap_policy(model), device_id=torch.device("cpu"), use_orig_params=True
        )
    from torch.distributed.fsdp import fully_shard

    for layer in model.get_base_model().model.layers:
        fully_shard(layer)
    return fully_shard(model)


def _wrap(engine: str, model):
    """``(backward(ids) -> loss, step())``: one forward and backward of ``model`` wrapped by ``engine``, and one
    optimizer step."""
    if engine == "zero3":
        import deepspeed

        wrapped, optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer_for(model), config=_ds_config()
        )

        def backward(ids):
            loss = wrapped(input_ids=ids, labels=ids).loss
            wrapped.backward(loss)
            return loss

        return backward, wrapped.step
    wrapped = _shard(engine, model)
    optimizer = optimizer_for(model)  # after wrapping: FSDP replaces the parameters

    def backward(ids):
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    def step():
        optimizer.step()
        optimizer.zero_grad()

    return backward, step


def _ds_config() -> dict:
    return {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1, "zero_optimization": ZERO3}


def run_engine(engine: str, base_dir: Path, adapters: Path, out: Path) -> None:
    from peft import PeftModel, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from peft_superpos import export_prompt_tuning
    from peft_superpos.distributed import inner_module

    rank = _init(engine)
    keep_alive = None
    if engine == "zero3":
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(_ds_config())  # noqa: F841  (from_pretrained builds inside zero.Init)
    for method in METHODS:
        folder = out / method
        folder.mkdir(parents=True, exist_ok=True)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        created = get_peft_model(base, method_config(method))
        torch.save(
            {"embedding_shape": tuple(base.get_input_embeddings().weight.shape), **initial_state(created)},
            folder / f"created-rank{rank}.pt",
        )
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir), adapters / method, is_trainable=True
        )
        model.eval()
        backward, step = _wrap(engine, model)
        for _ in range(STEPS):
            backward(rank_batch(rank))
            step()
        trained = {
            "table": get_peft_model_state_dict(model)["prompt_embeddings"],
            "split": inner_module(model.prompt_encoder["default"]).is_split(),  # the engine really split the prompt
        }
        torch.save(trained, folder / f"trained-rank{rank}.pt")
        model.save_pretrained(folder / "saved", is_main_process=rank == 0)
        if rank == 0:  # as the Trainer does: a state dict without the split prompt, on one rank only
            try:
                model.save_pretrained(folder / "partial", state_dict={})
            except ValueError as error:
                (folder / "partial-error.txt").write_text(str(error))
        if method != "dept":  # DePT does not export to prompt tuning
            export_prompt_tuning(model, folder / "exported", is_main_process=rank == 0)
    del keep_alive


def run_trainer(base_dir: Path, adapters: Path, out: Path) -> None:
    """SuperPos through ``transformers.Trainer`` under ZeRO-3: a checkpoint at step 2, ``save_model`` at the end."""
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    rank = _init("zero3")
    config = {**_ds_config(), "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        save_steps=2,
        save_only_model=True,
        learning_rate=LR,
        lr_scheduler_type="constant",
        use_cpu=True,
        deepspeed=config,
        report_to=[],
        disable_tqdm=True,
    )
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), adapters / "superpos", is_trainable=True
    )
    examples = [{"input_ids": ids, "labels": ids} for rank in range(WORLD) for ids in rank_batch(rank)]
    trainer = Trainer(model=model, args=args, train_dataset=examples * STEPS)
    trainer.train()
    table = get_peft_model_state_dict(model)["prompt_embeddings"]
    torch.save({"table": table}, out / f"trained-rank{rank}.pt")
    trainer.save_model(str(out / "final"))


def evaluation_records(model_dir: Path, shard=None) -> dict[str, list[dict]]:
    """The records of the harness's evaluation (generate and rank) of a SuperPos adapter on the tiny harness model
    in ``model_dir``, over the 5 CB fixture eval examples in batches of 2 (``shard`` wraps the model first)."""
    from tiny_models import FIXTURE_DATA, adapted, harness_config

    from peft_superpos.data import get_task, load_task_split
    from peft_superpos.harness import TextToTextFeatures, evaluate

    model, tokenizer = adapted(harness_config(model_dir, model_dir / "unused"))
    model = shard(model) if shard else model
    task = get_task("cb")
    data = load_task_split(task, "validation", FIXTURE_DATA)
    features = TextToTextFeatures(tokenizer, False, 256)
    return {mode: evaluate(model, features, task, data, mode, batch_size=2).records for mode in ("generate", "rank")}


def run_evaluation(model_dir: Path, out: Path) -> None:
    """The harness's evaluation in one process (``evaluation-single.json``), then on 2 ranks under FSDP1 and FSDP2
    (``<engine>-rank<r>.json``): the ranks split the examples 3 and 2, so they only finish together if they run
    in lockstep. FSDP2's ``generate`` is registered as a forward method of the root, as the Trainer does."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    single = evaluation_records(model_dir)  # before the process group: one process evaluates everything
    rank = _init("fsdp")
    if rank == 0:
        (out / "evaluation-single.json").write_text(json.dumps(single))
    for engine in ("fsdp1", "fsdp2"):

        def shard(model, engine=engine):
            sharded = _shard(engine, model)
            if engine == "fsdp2":
                register_fsdp_forward_method(sharded, "generate")
            return sharded

        (out / f"{engine}-rank{rank}.json").write_text(json.dumps(evaluation_records(model_dir, shard)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    engine, paths = sys.argv[1], [Path(p) for p in sys.argv[2:5]]
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import peft_superpos  # noqa: F401  (registers the methods with peft)

    if engine == "zero3-trainer":
        run_trainer(*paths)
    elif engine == "fsdp-evaluation":
        run_evaluation(paths[0], paths[2])
    else:
        run_engine(engine, *paths)
    torch.distributed.destroy_process_group()
