"""The ``compare:`` block of a route: what to extract from each answer and how to judge it.

Parsed once at config load like the rest of ``shadowproxy.config``: paths are compiled
here so a malformed one is a config error that names ``compare.<field>``, and the
options are frozen values the comparators only read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shadowproxy.compare import jsonpath
from shadowproxy.validation import check_choice, did_you_mean

Kind = Literal["auto", "exact", "numeric", "label", "probabilities", "ranking", "text", "embedding"]
KINDS: tuple[Kind, ...] = get_args(Kind)

OPEN_INFERENCE = "open-inference"
OPEN_INFERENCE_SERVICE = "inference.GRPCInferenceService"
"""The Open Inference gRPC service, decoded built in (``compare.inference_grpc``)."""
OPENAI_EMBEDDINGS = "openai-embeddings"
RAW = "raw"

PRESETS: dict[str, str] = {
    RAW: "$",
    "kserve-v1": "$.predictions",
    "tfserving": "$.predictions",
    "mlflow": "$.predictions",
    OPEN_INFERENCE: "$.outputs",
    "openai-chat": "$.choices[*].message.content",
    "openai-completions": "$.choices[*].text",
    OPENAI_EMBEDDINGS: "$.data[*].embedding",
}
"""Serving protocols by name -> where their prediction lives (``open-inference`` then
picks one output by name and reshapes its ``data``, see ``extract``)."""

PRESET_KINDS: dict[str, Kind] = {OPENAI_EMBEDDINGS: "embedding"}
"""Presets whose predictions ``auto`` cannot tell by their JSON types: an embedding sent
as base64 is a string, and as floats looks like any batch of numbers."""

# Bounds: a comparison runs on every sampled pair, so its cost must not depend on how
# strange an answer is. Past these, a pair is incomparable with a reason that says so.
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Bodies bigger than this are not parsed (the capture cap usually stops them first)."""
MAX_DEPTH = 254
"""Deeper predictions are not compared. It is orjson's limit for serialising, and every
extracted prediction is serialised (for the record) before it is compared, so the check
costs nothing and every walk stays far from Python's recursion limit."""
MAX_ELEMENTS = 1_000_000
"""Most numbers, labels or batch items one side of a prediction may have."""
MAX_TEXT_CHARS = 1_000_000
"""Longest text the ``text`` comparator tokenises."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _check_ignore(value: str) -> str:
    path = jsonpath.parse(value)
    if not path.steps:
        raise ValueError("must name a field below the root '$', got '$'")
    return value


IgnorePath = Annotated[str, AfterValidator(_check_ignore)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Tolerance = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class CompareConfig(_Model):
    """How one route's production and shadow answers are compared (docs/comparison.md)."""

    prediction: str = RAW
    """A preset (``raw``, ``kserve-v1``, ``tfserving``, ``mlflow``, ``open-inference``,
    ``openai-chat``, ``openai-completions``, ``openai-embeddings``) or a JSON path into the
    body: ``$``, ``.key``, ``['any key']``, ``[N]``, ``[-N]``, ``[*]``. A path with ``[*]``
    yields the list of every match (a batch); a path that finds nothing makes the pair
    incomparable."""
    output: str | None = None
    """``open-inference`` only: the output to compare, by name (default: the first)."""
    kind: Kind = "auto"
    """The comparator; ``auto`` picks one from production's prediction and records it as
    ``auto:<kind>``."""
    ignore: tuple[IgnorePath, ...] = ()
    """JSON paths, written against the body like ``prediction``, deleted from both answers
    before extraction (request ids, timestamps, model versions)."""
    abs_tol: Tolerance = 1e-6
    """``numeric``: absolute tolerance, >= 0."""
    rel_tol: Tolerance = 1e-6
    """``numeric``: relative tolerance, >= 0; two numbers agree when ``|a - b| <= max(rel_tol *
    max(|a|, |b|), abs_tol)``."""
    max_js: Fraction | None = None
    """``probabilities``: also require Jensen-Shannon divergence ``<= max_js`` (0..1)."""
    min_similarity: Fraction = 0.8
    """``text``: agree when the token similarity is at least this (0..1)."""
    top_k: Annotated[int, Field(ge=1, le=1000)] = 10
    """``ranking``: compare the first k ids (1..1000)."""
    min_overlap: Fraction = 1.0
    """``ranking``: agree when the top-k overlap is at least this (0..1)."""
    rbo_p: Annotated[float, Field(gt=0, lt=1)] = 0.9
    """``ranking``: RBO persistence (0 < p < 1; higher weighs deeper ranks more)."""
    min_cosine: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] = 0.99
    """``embedding``: agree when the cosine similarity is at least this."""

    @field_validator("prediction")
    @classmethod
    def _prediction(cls, value: str) -> str:
        if value.startswith("$"):
            jsonpath.parse(value)
            return value
        if value in PRESETS:
            return value
        maybe = did_you_mean(value, list(PRESETS))
        raise ValueError(
            f"unknown preset {value!r}{maybe}; use a JSON path starting with '$' "
            f"(e.g. '$.predictions') or one of: {', '.join(PRESETS)}"
        )

    @field_validator("output")
    @classmethod
    def _output(cls, value: str | None, info: ValidationInfo) -> str | None:
        prediction = info.data.get("prediction")
        if value is not None and prediction != OPEN_INFERENCE:
            raise ValueError(
                f"only applies to prediction: {OPEN_INFERENCE}, but prediction is {prediction!r}"
            )
        return value

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_choice(value, KINDS, "comparator")
        return value

    @property
    def path(self) -> str:
        """The JSON path the prediction is read from (a preset resolved)."""
        return PRESETS.get(self.prediction, self.prediction)
