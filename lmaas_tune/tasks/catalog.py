"""The seven tasks of the BBT paper, registered by name with its templates and label words.

The label words of each template are the paper's (the default). A task may also register other
label words by name, picked with ``--verbalizer NAME``: ``multi`` gives SST-2, Yelp and AG News
several words per label, each a single token in its leading-space form for the embedded model
(so the vLLM backend takes them too).
"""

from __future__ import annotations

from lmaas_tune.registry import Registry
from .data import HubSource, TableSource
from .task import Task
from .template import PromptFormat
from .verbalizer import Verbalizer

TASKS: Registry[Task] = Registry("task")

_SENTIMENT_WORDS = ("bad", "great")
# Causal form chosen on a dev sample from the SST-2 train pool with the embedded model
# (benchmarks/templates.py: 85.0% zero-shot vs 62.3% for "{sentence} . It was {mask}" bad/great).
_REVIEW = PromptFormat.of("Review: {sentence}\nSentiment:{mask}", ("negative", "positive"))
_PAIR_MASKED = "{sentence1} ? {mask} , {sentence2}"

#: several label words per label; each label's first word names it
_SENTIMENT_MULTI = {"multi": Verbalizer.of("negative|bad|terrible|awful,positive|good|great|excellent")}
_TOPIC_MULTI = {"multi": Verbalizer.of(
    "World|world|politics|international,Sports|sports|football|game,Business|business|economy|market,"
    "Tech|technology|science|computer"
)}


def _pair_causal(question: str) -> str:
    return "{sentence1}\nQuestion: {sentence2} " + question + "\nAnswer:{mask}"


TASKS.add(
    "sst2",
    Task(
        name="sst2",
        description="SST-2 movie-review sentiment (shipped; test = GLUE validation, 872)",
        source=TableSource(
            train="builtin:sst2/train.tsv",
            test="builtin:sst2/dev.tsv",
            columns={"sentence": "sentence"},
            label_values=("0", "1"),
        ),
        masked=PromptFormat.of("{sentence} . It was {mask} .", _SENTIMENT_WORDS),
        causal=_REVIEW,
        verbalizers=_SENTIMENT_MULTI,
    ),
    aliases=("sst", "sst-2"),
)

TASKS.add(
    "yelpp",
    Task(
        name="yelpp",
        description="Yelp review polarity (Hugging Face yelp_polarity)",
        source=HubSource("yelp_polarity", None, "train", "test", {"sentence": "text"}),
        masked=PromptFormat.of("{sentence} . It was {mask} .", _SENTIMENT_WORDS),
        causal=_REVIEW,
        verbalizers=_SENTIMENT_MULTI,
    ),
    aliases=("yelp", "yelp-p", "yelp_polarity"),
)

TASKS.add(
    "agnews",
    Task(
        name="agnews",
        description="AG News topics (shipped: few-shot pool = first 581 train rows; test, 7600)",
        source=TableSource(
            train="builtin:agnews/train_first581.tsv",
            test="builtin:agnews/test.tsv",
            columns={"sentence": "sentence"},
            label_values=("1", "2", "3", "4"),
        ),
        masked=PromptFormat.of("{mask} News: {sentence}", ("World", "Sports", "Business", "Tech")),
        causal=PromptFormat.of(
            "{sentence} The news above is about {mask}", ("World", "Sports", "Business", "Tech")
        ),
        verbalizers=_TOPIC_MULTI,
    ),
    aliases=("ag", "ag_news"),
)

_DBPEDIA_WORDS = (
    "Company", "Education", "Artist", "Athlete", "Office", "Transportation", "Building",
    "Natural", "Village", "Animal", "Plant", "Album", "Film", "Written",
)
TASKS.add(
    "dbpedia",
    Task(
        name="dbpedia",
        description="DBPedia ontology, 14 classes (Hugging Face dbpedia_14)",
        source=HubSource("dbpedia_14", None, "train", "test", {"sentence": "content"}),
        masked=PromptFormat.of("[ Category: {mask} ] {sentence}", _DBPEDIA_WORDS),
        causal=PromptFormat.of("{sentence}\nCategory:{mask}", _DBPEDIA_WORDS),
    ),
    aliases=("dbpedia14", "dbpedia_14"),
)

TASKS.add(
    "mrpc",
    Task(
        name="mrpc",
        description="MRPC paraphrase (Hugging Face glue/mrpc; test = validation; metric F1)",
        source=HubSource(
            "glue", "mrpc", "train", "validation", {"sentence1": "sentence1", "sentence2": "sentence2"}
        ),
        masked=PromptFormat.of(_PAIR_MASKED, ("No", "Yes")),
        causal=PromptFormat.of(_pair_causal("Same meaning? Yes or No?"), ("No", "Yes")),
        metric="f1",
    ),
)

TASKS.add(
    "rte",
    Task(
        name="rte",
        description="RTE entailment (shipped; test = GLUE validation, 277)",
        source=TableSource(
            train="builtin:rte/train.tsv",
            test="builtin:rte/dev.tsv",
            columns={"sentence1": "sentence1", "sentence2": "sentence2"},
            label_values=("entailment", "not_entailment"),
        ),
        masked=PromptFormat.of(_PAIR_MASKED, ("Yes", "No")),
        causal=PromptFormat.of(_pair_causal("True or false? Yes or No?"), ("Yes", "No")),
    ),
)

TASKS.add(
    "snli",
    Task(
        name="snli",
        description="SNLI entailment, 3 classes (Hugging Face snli)",
        source=HubSource("snli", None, "train", "test", {"sentence1": "premise", "sentence2": "hypothesis"}),
        masked=PromptFormat.of(_PAIR_MASKED, ("Yes", "Maybe", "No")),
        causal=PromptFormat.of(_pair_causal("Yes, Maybe or No?"), ("Yes", "Maybe", "No")),
    ),
)


def get_task(name: str) -> Task:
    return TASKS.get(name)
