"""The fit loop and its parts: tuner (ask -> score -> tell -> dev check -> checkpoint), the
population scheduler every score goes through, the budget ledger, progress events, evaluation of
a fixed prompt, the few-shot split, and the jobs the CLI runs (:mod:`.workflows`, :mod:`.predict`)."""
