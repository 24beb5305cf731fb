"""Tasks: templates, label words, data and metrics."""

from .catalog import TASKS, get_task
from .data import Example, HubSource, TableSource, read_rows
from .metrics import METRICS
from .spec import TaskSpec
from .task import Task, custom_task
from .template import PromptFormat, Template
from .verbalizer import Verbalizer

__all__ = [
    "METRICS", "TASKS", "Example", "HubSource", "PromptFormat", "TableSource", "Task", "Template",
    "TaskSpec", "Verbalizer", "custom_task", "get_task", "read_rows",
]
