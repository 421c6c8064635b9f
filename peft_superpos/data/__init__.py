"""GLUE / SuperGLUE tasks of the SuperPos-Prompt paper as text-to-text tasks: registry and loaders (their metrics:
``peft_superpos.metrics``)."""

from .checks import check_data_file
from .loaders import DATA_DIR_ENV, find_split_file, first_examples, load_task_split, read_split_rows, split_off_dev
from .task import STSB_TARGETS, Task, TaskFiles
from .tasks import TASK_NAMES, TASKS, get_task

__all__ = [
    "DATA_DIR_ENV",
    "STSB_TARGETS",
    "TASKS",
    "TASK_NAMES",
    "Task",
    "TaskFiles",
    "check_data_file",
    "find_split_file",
    "first_examples",
    "get_task",
    "load_task_split",
    "read_split_rows",
    "split_off_dev",
]
