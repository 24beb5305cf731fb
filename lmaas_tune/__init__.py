"""lmaas-tune: Black-Box Tuning of soft prompts for language models you can only query."""
__version__ = "0.1.0"
