"""The run directory: its files (:mod:`.directory`), its typed record (:mod:`.record`, the only
reader and writer of the run's record), checkpoints, results, saved runs and reports."""

from .directory import RunDirectory, atomic_write

__all__ = ["RunDirectory", "atomic_write"]
