"""The message types of a gRPC service the proxy has no table for, from a descriptor set.

A route of any service but Open Inference may name ``grpc_descriptor_set``: the file
``protoc --include_imports --descriptor_set_out=FILE`` writes (a ``FileDescriptorSet``).
The service the route matches is looked up in it, and each method's answer type is its
``output_type``: the user names one file, not a type per method (requests are forwarded
and recorded as bytes; nothing reads them decoded). An answer then decodes
(``google.protobuf``, no generated code) to the proto3 JSON form, field names as the
``.proto`` spells them, so ``compare:`` paths, tolerances and the report apply as to an
HTTP body. Three departures from that form,
all so a number compares as a number: 64-bit integers stay numbers and ``NaN`` and the
infinities are floats (proto3 JSON writes both as strings), and fields at their default
value are present (proto3 omits them, and a score of ``0.0`` must not read as a missing
field).

``load`` checks everything a config can get wrong (not a set, a missing import, an
unknown service or method) and says what, as ``ValueError``; the config loader adds the
file and field. Decoding failures at run time are ``Incomparable``.

Pure: protobuf only (no grpc, no I/O); loaded sets are cached by their bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from shadowproxy.compare.verdict import Incomparable
from shadowproxy.validation import did_you_mean

INCLUDE_IMPORTS = "protoc --include_imports --descriptor_set_out=FILE ..."
"""How a usable descriptor set is made (quoted in errors)."""

_INT64 = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})
_FLOATS = frozenset({FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE})
_INT64_WRAPPERS = frozenset({"google.protobuf.Int64Value", "google.protobuf.UInt64Value"})


@dataclass(frozen=True, slots=True)
class MessageTypes:
    """The response class of each method of one route, by path
    (``/package.Service/Method``)."""

    pool: descriptor_pool.DescriptorPool
    responses: Mapping[str, type[Message]]

    def knows(self, path: str) -> bool:
        return path in self.responses

    def response(self, side: str, path: str, body: bytes) -> Any:
        """``side``'s answer to ``path`` as JSON-ready values; ``Incomparable`` when
        the bytes are not that message."""
        cls = self.responses[path]
        message = cls()
        try:
            message.ParseFromString(body)
        except (DecodeError, RecursionError) as exc:
            name = cls.DESCRIPTOR.full_name
            raise Incomparable(f"{side} message is not a {name}: {exc}") from None
        try:
            return as_json(message, self.pool)
        except (TypeError, ValueError, RecursionError) as exc:  # e.g. an Any of a type
            # the set does not hold: the message parsed, its JSON form cannot be made
            name = cls.DESCRIPTOR.full_name
            raise Incomparable(f"{side} {name} has no JSON form: {exc}") from None


def as_json(message: Message, pool: descriptor_pool.DescriptorPool) -> Any:
    """Proto3 JSON, with every number a number and default-valued fields present."""
    value = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        descriptor_pool=pool,
    )
    return _numbers(value, cast(Descriptor, message.DESCRIPTOR))


def _numbers(value: Any, descriptor: Descriptor) -> Any:
    """``value`` (``descriptor``'s JSON) with the strings proto3 JSON makes of 64-bit
    integers and of non-finite floats turned back into numbers. Well-known types keep
    their own JSON form (a ``Timestamp`` is a string by design), but for the 64-bit
    wrappers."""
    if descriptor.full_name in _INT64_WRAPPERS:
        return _int(value)
    if not isinstance(value, dict) or descriptor.file.package == "google.protobuf":
        return value
    for field in descriptor.fields:
        if field.name in value:
            value[field.name] = _field(value[field.name], field)
    return value


def _field(value: Any, field: FieldDescriptor) -> Any:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        inner = message.fields_by_name["value"]
        if isinstance(value, dict):
            return {key: _single(item, inner) for key, item in value.items()}
        return value
    if isinstance(value, list):  # only a repeated field's JSON is a list
        return [_single(item, field) for item in value]
    return _single(value, field)


def _single(value: Any, field: FieldDescriptor) -> Any:
    if field.message_type is not None:
        return _numbers(value, field.message_type)
    if field.cpp_type in _INT64:
        return _int(value)
    if field.cpp_type in _FLOATS and isinstance(value, str):
        return float(value)  # "NaN", "Infinity", "-Infinity": read as an HTTP body's are
    return value


def _int(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


# --- loading a set: every problem a ValueError that says what to do ---------------


@functools.lru_cache(maxsize=64)
def load(data: bytes, match: str) -> MessageTypes:
    """The methods ``match`` (``package.Service`` or ``package.Service/Method``) covers,
    typed from the descriptor set ``data``."""
    files = _parse(data)
    pool = _pool(files)
    service_name, _, method_name = match.partition("/")
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        known = sorted(_services(files))
        listed = ", ".join(known) or "none"
        raise ValueError(
            f"defines no service {service_name!r}{did_you_mean(service_name, known)} "
            f"(services: {listed})"
        ) from None
    names = [method.name for method in service.methods]
    if method_name and method_name not in names:
        raise ValueError(
            f"service {service_name} has no method {method_name!r}"
            f"{did_you_mean(method_name, names)} (methods: {', '.join(names) or 'none'})"
        )
    responses = {
        f"/{service_name}/{method.name}": message_factory.GetMessageClass(method.output_type)
        for method in service.methods
        if not method_name or method.name == method_name
    }
    return MessageTypes(pool, responses)


def _parse(data: bytes) -> descriptor_pb2.FileDescriptorSet:
    files = descriptor_pb2.FileDescriptorSet()
    try:
        files.ParseFromString(data)
    except (DecodeError, RecursionError) as exc:
        raise ValueError(f"is not a protobuf descriptor set ({INCLUDE_IMPORTS}): {exc}") from None
    if not files.file:
        raise ValueError(f"holds no .proto files; make it with {INCLUDE_IMPORTS}")
    return files


def _pool(files: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    """Every file of the set in a pool of its own, each after the files it imports."""
    by_name = {file.name: file for file in files.file}
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, importer: str) -> None:
        if name in added:
            return
        file = by_name.get(name)
        if file is None:
            raise ValueError(
                f"{importer} imports {name}, which the set does not hold: make it with "
                f"{INCLUDE_IMPORTS}"
            )
        added.add(name)  # before its imports: an import cycle then ends here
        for dependency in file.dependency:
            add(dependency, name)
        try:
            pool.Add(file)
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"{name} does not build: {exc}") from None

    for file in files.file:
        add(file.name, "")
    return pool


def _services(files: descriptor_pb2.FileDescriptorSet) -> list[str]:
    return [
        f"{file.package}.{service.name}" if file.package else service.name
        for file in files.file
        for service in file.service
    ]
