"""The data phase of a run: the train and eval splits of the task, checked, with the development split set aside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import Task, check_data_file, find_split_file, first_examples, load_task_split, split_off_dev
from .config import DEV_SPLIT, RunConfig
from .errors import DataError

__all__ = ["RunData", "load_run_data"]


@dataclass(frozen=True)
class RunData:
    """The examples of a run (``datasets.Dataset`` of source/target/label(/group))."""

    train: Any
    evaluation: Any


def load_run_data(config: RunConfig, task: Task) -> RunData:
    """The train and eval examples: the development split (``--dev-size``) is set aside from train first, and
    is the eval set with ``--eval-split dev``; then the ``--max-train-samples`` / ``--max-eval-samples`` cuts."""
    train = _load_split(task, "train", config.data_dir)
    if config.dev_size is not None:
        try:
            train, dev = split_off_dev(train, config.dev_size, config.dev_seed)
        except ValueError as error:
            raise DataError(f"{task.display_name}: {error}") from None
    if config.eval_split == DEV_SPLIT:
        evaluation = dev
    else:
        evaluation = _load_split(task, config.eval_split, config.data_dir)
    if config.max_train_samples is not None and config.max_train_samples < len(train):
        train = train.shuffle(seed=config.seed).select(range(config.max_train_samples))
    if config.max_eval_samples is not None:
        evaluation = first_examples(evaluation, config.max_eval_samples)  # the first N, for comparable runs
    if len(train) == 0 or len(evaluation) == 0:
        raise DataError(f"{task.display_name}: empty train or {config.eval_split} split")
    return RunData(train, evaluation)


def _load_split(task: Task, split: str, data_dir: str | None) -> Any:
    """One split through :func:`peft_superpos.data.load_task_split`, its local file checked first; problems
    with the files become :class:`DataError`."""
    try:
        if data_dir is not None:
            check_data_file(find_split_file(task, split, data_dir)[0])
        return load_task_split(task, split, data_dir)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from error
    except RuntimeError as error:  # no data_dir: the Hub could not be reached (the message says what to do)
        if data_dir is not None:
            raise
        raise DataError(str(error)) from error
