"""GLUE / SuperGLUE tasks of the SuperPos-Prompt paper as text-to-text tasks: registry, loaders, metrics."""

from .loaders import DATA_DIR_ENV, find_split_file, first_examples, load_task_split, read_split_rows
from .metrics import compute_metrics, fill_invalid
from .tasks import STSB_TARGETS, TASK_NAMES, TASKS, Task, TaskFiles, get_task

__all__ = [
    "DATA_DIR_ENV",
    "STSB_TARGETS",
    "TASKS",
    "TASK_NAMES",
    "Task",
    "TaskFiles",
    "compute_metrics",
    "fill_invalid",
    "find_split_file",
    "first_examples",
    "get_task",
    "load_task_split",
    "read_split_rows",
]
