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
    verbalizers: dict[str, list[str]]
    metric: str
    description: str


@app.command("tasks")
@handled
def tasks_cmd(json_out: JsonOpt = False) -> None:
    """List the registered tasks with their templates and label words (and other label words, by --verbalizer name)."""
    rows: list[_TaskRow] = []
    for name, task in TASKS.items():
        others = {v: list(words.entries()) for v, words in task.verbalizers.items()}
        for kind, fmt in (("masked", task.masked), ("causal", task.causal)):
            if fmt is not None:
                rows.append({"task": name, "kind": kind, "template": fmt.template.text,
                             "label_words": list(fmt.verbalizer.entries()), "verbalizers": others,
                             "metric": task.metric, "description": task.description})
    if json_out:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="tasks", show_lines=True)
    for col in ("task", "model kind", "template", "label words (--verbalizer NAME: others)", "metric"):
        table.add_column(col, overflow="fold" if col.startswith("label") else "ellipsis")
    for r in rows:
        words = "\n".join([", ".join(r["label_words"]), *(f"{v}: {', '.join(w)}" for v, w in r["verbalizers"].items())])
        table.add_row(r["task"], r["kind"], repr(r["template"])[1:-1], words, r["metric"])
    out.print(table)
