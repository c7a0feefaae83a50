"""Streamed answers (Server-Sent Events, OpenAI style) back into one JSON answer.

An LLM server asked to ``stream`` answers ``text/event-stream``: ``data: {chunk}`` events,
each carrying a piece of every choice (``choices[i].delta.content`` for chat,
``choices[i].text`` for completions), then ``data: [DONE]``. To compare a streamed answer
with anything, the pieces are concatenated into the shape the same server returns
without streaming, so the ``openai-chat`` / ``openai-completions`` presets and ``raw``
read both alike::

    {"id", "object": "chat.completion", "created", "model",
     "choices": [{"index", "message": {"role", "content"}, "finish_reason"}], "usage"?}

A stream is complete when it ends with ``[DONE]`` or every choice has a
``finish_reason``; one that stops before that is incomparable (the answer is partial).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from shadowproxy.compare.verdict import Incomparable

_LINES = re.compile(r"\r\n|\r|\n")
_META = ("id", "created", "model", "system_fingerprint")


def is_event_stream(body: bytes, content_type: str | None) -> bool:
    """Trust the content type; without one, recognise the ``data:`` framing."""
    if content_type is not None:
        return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
    return body.lstrip().startswith(b"data:")


@dataclass(slots=True)
class _Choice:
    parts: list[str] = field(default_factory=list)
    role: str | None = None
    finish_reason: Any = None


@dataclass(slots=True)
class _Stream:
    chat: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    usage: Any = None
    choices: dict[int, _Choice] = field(default_factory=dict)


def reassemble(side: str, body: bytes) -> dict[str, Any]:
    """The non-streamed equivalent of a captured stream; ``Incomparable`` when partial."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Incomparable(f"{side} stream is not UTF-8") from None
    stream = _Stream()
    done = False
    for number, data in enumerate(_events(text), start=1):
        if data.strip() == "[DONE]":
            done = True
            break
        _add_chunk(stream, _chunk(side, number, data), side)
    if not done and not (stream.choices and _all_finished(stream)):
        raise Incomparable(f"{side} stream ended before [DONE]")
    return _answer(stream)


def _events(text: str) -> list[str]:
    """The ``data`` of each event, multi-line data joined with newlines (per the SSE spec)."""
    events: list[str] = []
    data: list[str] = []
    for line in _LINES.split(text):
        if not line:
            if data:
                events.append("\n".join(data))
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        events.append("\n".join(data))
    return events


def _chunk(side: str, number: int, data: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Incomparable(f"{side} stream event {number} is not JSON") from None
    if not isinstance(chunk, dict):
        raise Incomparable(f"{side} stream event {number} is not a JSON object")
    return chunk


def _add_chunk(stream: _Stream, chunk: dict[str, Any], side: str) -> None:
    if chunk.get("error") is not None:
        raise Incomparable(f"{side} stream carried an error event")
    for key in _META:
        if key in chunk and key not in stream.meta:
            stream.meta[key] = chunk[key]
    if chunk.get("usage") is not None:
        stream.usage = chunk["usage"]
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            _add_choice(stream, choice)


def _add_choice(stream: _Stream, choice: dict[str, Any]) -> None:
    index = choice.get("index", 0)
    state = stream.choices.setdefault(index if isinstance(index, int) else 0, _Choice())
    delta = choice.get("delta")
    if isinstance(delta, dict):
        stream.chat = True
        piece = delta.get("content")
        if isinstance(delta.get("role"), str):
            state.role = delta["role"]
    else:
        piece = choice.get("text")
    if isinstance(piece, str):
        state.parts.append(piece)
    if choice.get("finish_reason") is not None:
        state.finish_reason = choice["finish_reason"]


def _all_finished(stream: _Stream) -> bool:
    return all(choice.finish_reason is not None for choice in stream.choices.values())


def _answer(stream: _Stream) -> dict[str, Any]:
    choices: list[dict[str, Any]] = []
    for index in sorted(stream.choices):
        state = stream.choices[index]
        content = "".join(state.parts)
        if stream.chat:
            message = {"role": state.role or "assistant", "content": content}
            choices.append(
                {"index": index, "message": message, "finish_reason": state.finish_reason}
            )
        else:
            choices.append({"index": index, "text": content, "finish_reason": state.finish_reason})
    answer: dict[str, Any] = dict(stream.meta)
    answer["object"] = "chat.completion" if stream.chat else "text_completion"
    answer["choices"] = choices
    if stream.usage is not None:
        answer["usage"] = stream.usage
    return answer
