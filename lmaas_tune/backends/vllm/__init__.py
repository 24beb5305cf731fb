"""The vLLM backend: a client of vLLM's OpenAI-compatible server, with prompt embeddings.

:mod:`.client` is the Backend (requests, answers, the checks made on connecting);
:mod:`.embedder` is the client's half of the model (tokenizer and input embedding table).
Endpoints, limits, retries and typed HTTP errors come from :mod:`lmaas_tune.backends.http`.
"""

from .client import NO_DEEP_PROMPTS, RequestLimits, VllmBackend, encode_embeds
from .embedder import ClientModel, single_token_labels

__all__ = ["NO_DEEP_PROMPTS", "ClientModel", "RequestLimits", "VllmBackend", "encode_embeds", "single_token_labels"]
