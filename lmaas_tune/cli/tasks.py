"""``lmaas-tune tasks``: the registered tasks with their templates and label words."""

from __future__ import annotations

import json
from typing import TypedDict

from rich.table import Table

from lmaas_tune.tasks.catalog import TASKS

from .app import app, handled, out
from .options import JsonOpt


class _TaskRow(TypedDict):
    task: str
    kind: str
    template: str
    label_words: list[str]
    metric: str
    description: str


@app.command("tasks")
@handled
def tasks_cmd(json_out: JsonOpt = False) -> None:
    """List the registered tasks with their templates and label words."""
    rows: list[_TaskRow] = []
    for name, task in TASKS.items():
        for kind, fmt in (("masked", task.masked), ("causal", task.causal)):
            if fmt is not None:
                rows.append({"task": name, "kind": kind, "template": fmt.template.text,
                             "label_words": list(fmt.label_words), "metric": task.metric,
                             "description": task.description})
    if json_out:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="tasks", show_lines=True)
    for col in ("task", "model kind", "template", "label words", "metric"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], r["kind"], repr(r["template"])[1:-1], ", ".join(r["label_words"]), r["metric"])
    out.print(table)
