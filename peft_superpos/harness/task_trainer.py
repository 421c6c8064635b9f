"""``transformers.Trainer`` subclass: label-token loss with ``logits_to_keep``, and task evaluation.

* Optimizer: AdamW over :func:`peft_superpos.make_param_groups` at the arguments' learning rate and weight
  decay, made when the Trainer asks for it (after FSDP wrapped the model; under DeepSpeed in place of its own).
* Loss: the sum of the cross-entropies of the label tokens divided by the number of label tokens in the
  global batch (Trainer's ``num_items_in_batch``, gathered across processes), so a 2-process DDP run and a
  1-process run with the same global batch take the same step, and gradient accumulation is exact.
* Decoder-only models get ``logits_to_keep`` = the last ``K`` positions (batches are left-padded, so the label
  tokens sit in the last ``K`` columns; :func:`.features.last_positions`): the LM head runs on ``K`` positions,
  not on ``num_virtual_tokens + L``.
* Sequence-classification models (SEQ_CLS, e.g. MiniLM): cross-entropy of the class (MSE for regression)
  summed over the batch and divided by ``num_items_in_batch`` in the same way.
* Training batches come in length-grouped order (:class:`.sampling.LengthGroupedSampler`, seeded) unless
  ``group_by_length=False``; real and padded training tokens are counted in ``train_padding``.
* ``evaluate`` runs generation, rank classification or the classification head (see :mod:`.evaluation`)
  instead of Trainer's prediction loop; the metrics go through ``self.log`` and the callbacks'
  ``on_evaluate``, and the per-example predictions are written to ``predictions/step-<step>.jsonl``.
* Train loss across restarts: every checkpoint also holds ``loss_window.json``, the summed loss and the
  number of the steps since the last logged loss; a resumed run adds them back, so its first logged loss
  covers the same steps as in an uninterrupted run. A checkpoint without that file (written by an older
  version) makes the first loss after the resume cover fewer steps: that log is marked ``loss_partial``.
* Resuming stock PROMPT_TUNING: peft refuses ``load_adapter(..., is_trainable=True)`` only for a *new*
  adapter; Trainer reloads into the existing trainable adapter, and the saved ``prompt_embeddings`` table is
  the whole trainable state of stock prompt tuning, so resuming is exact. :meth:`_load_from_checkpoint`
  checks that the reload leaves every trainable parameter trainable and raises otherwise.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer_pt_utils import nested_gather

from ..atomic_files import atomic_write_text
from ..optim import make_param_groups
from .callbacks import PARTIAL_LOSS_KEY
from .evaluation import PaddingCount, evaluate
from .features import IGNORE_INDEX, ClassificationFeatures, TextToTextFeatures, label_logits
from .run_record import write_predictions
from .sampling import LengthGroupedSampler

__all__ = ["LOSS_WINDOW_FILE", "EndOfTrainingCallback", "TaskTrainer"]

LOSS_WINDOW_FILE = "loss_window.json"


class TaskTrainer(Trainer):
    """``Trainer`` for one task: label-token loss (language models) or class loss (classifiers), length-grouped
    batches, and evaluation with the task's metrics in ``eval_mode``."""

    def __init__(
        self,
        *args: Any,
        task: Any,
        features: TextToTextFeatures | ClassificationFeatures,
        eval_mode: str = "generate",
        raw_eval_dataset: Any = None,
        group_by_length: bool = True,
        lr_by_name: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lr_by_name = lr_by_name
        self.task = task
        self.features = features
        self.eval_mode = eval_mode
        self.raw_eval_dataset = raw_eval_dataset
        self.group_by_length = group_by_length
        self.is_encoder_decoder = features.is_encoder_decoder
        self.is_classifier = isinstance(features, ClassificationFeatures)
        self.train_padding = PaddingCount()
        # compute_loss normalises by num_items_in_batch itself: ask Trainer to count (and gather) label tokens.
        self.model_accepts_loss_kwargs = True
        self._carried_loss: tuple[float, int] | None = None  # (loss sum, steps) not yet logged at the checkpoint
        self._partial_loss_window = False

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any):
        self._carried_loss, self._partial_loss_window = None, False
        if resume_from_checkpoint:
            window = os.path.join(resume_from_checkpoint, LOSS_WINDOW_FILE)
            if os.path.isfile(window):
                saved = json.loads(open(window).read())
                self._carried_loss = (float(saved["loss_sum"]), int(saved["steps"]))
            else:
                state = TrainerState.load_from_json(os.path.join(resume_from_checkpoint, "trainer_state.json"))
                logged = [entry["step"] for entry in state.log_history if "loss" in entry]
                self._partial_loss_window = state.global_step > max(logged, default=0)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _maybe_log_save_evaluate(self, tr_loss, *args: Any, **kwargs: Any) -> None:
        if self._carried_loss is not None:  # the first step after a resume: count the checkpoint's window in
            loss_sum, steps = self._carried_loss
            self._carried_loss = None
            tr_loss += loss_sum
            self._globalstep_last_logged -= steps
        super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._partial_loss_window and "loss" in logs:
            logs[PARTIAL_LOSS_KEY] = True
            self._partial_loss_window = False
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Written before Trainer's files: a checkpoint is complete once trainer_state.json (written last) exists.
        loss_sum = nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            window = {"loss_sum": loss_sum, "steps": self.state.global_step - self._globalstep_last_logged}
            atomic_write_text(os.path.join(folder, LOSS_WINDOW_FILE), json.dumps(window))
        super()._save_checkpoint(model, trial)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """AdamW over :func:`peft_superpos.make_param_groups` of the trainable parameters (weight decay by name,
        the config's learning rates by name, e.g. DePT's), built when the Trainer asks: after FSDP wrapped the
        model, and in place of DeepSpeed's own."""
        if self.optimizer is None:
            groups = make_param_groups(model or self.model, self.args.weight_decay, lr_by_name=self.lr_by_name)
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return LengthGroupedSampler(lengths, global_batch, seed=self.args.data_seed or self.args.seed)

    def _classification_loss(self, model, inputs):
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits, labels = outputs.logits.float(), inputs["labels"].to(outputs.logits.device)
        if self.task.is_regression:
            loss_sum = torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
        else:
            loss_sum = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        return loss_sum, outputs, labels.numel()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.train_padding.add(inputs["attention_mask"])
        if self.is_classifier:
            loss_sum, outputs, count = self._classification_loss(model, inputs)
            return self._normalise(loss_sum, count, num_items_in_batch, outputs, return_outputs)
        outputs, logits, targets = label_logits(model, inputs, self.is_encoder_decoder)
        loss_sum = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1).to(logits.device),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        count = (targets != IGNORE_INDEX).sum().clamp_min(1)
        return self._normalise(loss_sum, count, num_items_in_batch, outputs, return_outputs)

    def _normalise(self, loss_sum, count, num_items_in_batch, outputs, return_outputs):
        """Divide the summed loss by the items of the global batch (or of this batch when not given)."""
        if num_items_in_batch is None:
            loss = loss_sum / count
        else:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.raw_eval_dataset
        result = evaluate(
            self.model,
            self.features,
            self.task,
            dataset,
            mode=self.eval_mode,
            batch_size=self.args.per_device_eval_batch_size,
        )
        if self.is_world_process_zero():
            write_predictions(self.args.output_dir, self.state.global_step, result.records)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in result.metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = model if model is not None else self.model
        trainable = [name for name, p in target.named_parameters() if p.requires_grad]
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        frozen = [name for name, p in target.named_parameters() if name in trainable and not p.requires_grad]
        if frozen:  # never resume with a frozen adapter: the run would go on without training it
            raise RuntimeError(
                f"loading {resume_from_checkpoint} froze {len(frozen)} trainable parameters ({frozen[0]}, ...)"
            )


class EndOfTrainingCallback(TrainerCallback):
    """Log the train loss at the last step too (Trainer already evaluates and saves there)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control
