"""Open Inference Protocol gRPC messages -> the JSON form of the ``open-inference`` preset.

Triton, MLServer and KServe serve ``inference.GRPCInferenceService``. Its messages are
defined here with the ``protobuf`` library, from the protocol's published field numbers
(built with ``descriptor_pb2`` at import time: no generated code, no ``.proto`` file).
``decode_response`` turns a method's answer bytes into what the same server would have
answered over REST: ``ModelInferResponse`` becomes ``{"model_name", "id", "outputs":
[{"name", "datatype", "shape", "data"}]}`` with ``data`` flat in row-major order, read
from the typed ``contents`` or from ``raw_output_contents`` (little-endian, ``BYTES`` as
4-byte length-prefixed items). So the comparators, the ``open-inference`` extraction and
the report apply unchanged. Other methods of the service decode field by field.

Pure: protobuf only (no grpc, no I/O). Every failure is ``Incomparable``.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from shadowproxy.compare.spec import MAX_ELEMENTS, OPEN_INFERENCE_SERVICE
from shadowproxy.compare.verdict import Incomparable

SERVICE = OPEN_INFERENCE_SERVICE

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_TYPES = {
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

Field = tuple[str, int, str, bool]
"""(name, number, scalar type or ``.inference.Message`` name, repeated)"""


def _message(
    name: str,
    fields: list[Field],
    nested: Sequence[descriptor_pb2.DescriptorProto] = (),
    *,
    oneof: str | None = None,
    map_entry: bool = False,
) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto(name=name)
    if oneof is not None:
        proto.oneof_decl.add(name=oneof)
    for field_name, number, kind, repeated in fields:
        field = proto.field.add(
            name=field_name, number=number, label=_REPEATED if repeated else _OPTIONAL
        )
        if kind in _TYPES:
            field.type = _TYPES[kind]
        else:
            field.type = _F.TYPE_MESSAGE
            field.type_name = kind
        if oneof is not None:
            field.oneof_index = 0
    proto.nested_type.extend(nested)
    if map_entry:
        proto.options.map_entry = True
    return proto


def _parameters(owner: str, number: int) -> tuple[Field, descriptor_pb2.DescriptorProto]:
    """``map<string, InferParameter> parameters`` of message ``owner``: the field and
    the nested entry message a map is made of."""
    entry = _message(
        "ParametersEntry",
        [("key", 1, "string", False), ("value", 2, ".inference.InferParameter", False)],
        map_entry=True,
    )
    return ("parameters", number, f".inference.{owner}.ParametersEntry", True), entry


def _tensor(owner: str) -> descriptor_pb2.DescriptorProto:
    name = owner.rpartition(".")[2]
    params, entry = _parameters(owner, 4)
    return _message(
        name,
        [
            ("name", 1, "string", False),
            ("datatype", 2, "string", False),
            ("shape", 3, "int64", True),
            params,
            ("contents", 5, ".inference.InferTensorContents", False),
        ],
        [entry],
    )


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="shadowproxy/inference_grpc.proto", package="inference", syntax="proto3"
    )
    add = file.message_type.append
    add(
        _message(
            "InferParameter",
            [
                ("bool_param", 1, "bool", False),
                ("int64_param", 2, "int64", False),
                ("string_param", 3, "string", False),
                ("double_param", 4, "double", False),
                ("uint64_param", 5, "uint64", False),
            ],
            oneof="parameter_choice",
        )
    )
    add(
        _message(
            "InferTensorContents",
            [
                ("bool_contents", 1, "bool", True),
                ("int_contents", 2, "int32", True),
                ("int64_contents", 3, "int64", True),
                ("uint_contents", 4, "uint32", True),
                ("uint64_contents", 5, "uint64", True),
                ("fp32_contents", 6, "float", True),
                ("fp64_contents", 7, "double", True),
                ("bytes_contents", 8, "bytes", True),
            ],
        )
    )
    for empty in ("ServerLiveRequest", "ServerReadyRequest", "ServerMetadataRequest"):
        add(_message(empty, []))
    add(_message("ServerLiveResponse", [("live", 1, "bool", False)]))
    add(_message("ServerReadyResponse", [("ready", 1, "bool", False)]))
    named = [("name", 1, "string", False), ("version", 2, "string", False)]
    add(_message("ModelReadyRequest", named))
    add(_message("ModelReadyResponse", [("ready", 1, "bool", False)]))
    add(_message("ModelMetadataRequest", named))
    add(
        _message(
            "ServerMetadataResponse",
            [*named, ("extensions", 3, "string", True)],
        )
    )
    tensor_metadata = _message(
        "TensorMetadata",
        [
            ("name", 1, "string", False),
            ("datatype", 2, "string", False),
            ("shape", 3, "int64", True),
        ],
    )
    meta = ".inference.ModelMetadataResponse.TensorMetadata"
    add(
        _message(
            "ModelMetadataResponse",
            [
                ("name", 1, "string", False),
                ("versions", 2, "string", True),
                ("platform", 3, "string", False),
                ("inputs", 4, meta, True),
                ("outputs", 5, meta, True),
            ],
            [tensor_metadata],
        )
    )
    request_params, request_entry = _parameters("ModelInferRequest", 4)
    requested_name = "ModelInferRequest.InferRequestedOutputTensor"
    requested_params, requested_entry = _parameters(requested_name, 2)
    requested = _message(
        "InferRequestedOutputTensor",
        [("name", 1, "string", False), requested_params],
        [requested_entry],
    )
    add(
        _message(
            "ModelInferRequest",
            [
                ("model_name", 1, "string", False),
                ("model_version", 2, "string", False),
                ("id", 3, "string", False),
                request_params,
                ("inputs", 5, ".inference.ModelInferRequest.InferInputTensor", True),
                ("outputs", 6, ".inference.ModelInferRequest.InferRequestedOutputTensor", True),
                ("raw_input_contents", 7, "bytes", True),
            ],
            [_tensor("ModelInferRequest.InferInputTensor"), requested, request_entry],
        )
    )
    response_params, response_entry = _parameters("ModelInferResponse", 4)
    add(
        _message(
            "ModelInferResponse",
            [
                ("model_name", 1, "string", False),
                ("model_version", 2, "string", False),
                ("id", 3, "string", False),
                response_params,
                ("outputs", 5, ".inference.ModelInferResponse.InferOutputTensor", True),
                ("raw_output_contents", 6, "bytes", True),
            ],
            [_tensor("ModelInferResponse.InferOutputTensor"), response_entry],
        )
    )
    add(
        _message(
            "ModelStreamInferResponse",
            [
                ("error_message", 1, "string", False),
                ("infer_response", 2, ".inference.ModelInferResponse", False),
            ],
        )
    )
    return file


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def message_class(name: str) -> type[Message]:
    """The class of ``inference.<name>`` (e.g. ``ModelInferRequest``)."""
    cls: type[Message] = message_factory.GetMessageClass(
        _POOL.FindMessageTypeByName(f"inference.{name}")
    )
    return cls


METHODS: dict[str, tuple[str, str]] = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}
"""Unary methods of ``inference.GRPCInferenceService`` by name -> (request, response)."""

_RESPONSES = {method: message_class(names[1]) for method, names in METHODS.items()}


def decodes(path: str) -> bool:
    """Whether answers of ``/package.Service/Method`` decode here (else: raw bytes)."""
    service, _, method = path.lstrip("/").partition("/")
    return service == SERVICE and method in _RESPONSES


def is_infer(path: str) -> bool:
    return path == f"/{SERVICE}/ModelInfer"


def decode_response(side: str, path: str, body: bytes) -> Any:
    """The answer of method ``path`` as the REST form of the protocol (JSON-ready)."""
    method = path.rpartition("/")[2]
    cls = _RESPONSES.get(method) if decodes(path) else None
    if cls is None:
        raise Incomparable(f"no message type for {path}")
    message = cls()
    try:
        message.ParseFromString(body)
    except (DecodeError, RecursionError) as exc:
        raise Incomparable(f"{side} message is not a {cls.__name__}: {exc}") from None
    if method == "ModelInfer":
        return infer_response(side, message)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def raw_bytes(body: bytes) -> str:
    """A message the proxy cannot decode, as text an ``exact`` comparison can judge."""
    return base64.b64encode(body).decode("ascii")


# --- ModelInferResponse -> {"outputs": [{name, datatype, shape, data}]} ---------------


def infer_response(side: str, message: Any) -> dict[str, Any]:
    raw = list(message.raw_output_contents)
    if raw and len(raw) != len(message.outputs):
        raise Incomparable(
            f"{side} has {len(raw)} raw_output_contents for {len(message.outputs)} outputs"
        )
    outputs = []
    for index, tensor in enumerate(message.outputs):
        shape = list(tensor.shape)
        label = f"{side} output {tensor.name!r}"
        if raw:
            data = raw_tensor(label, tensor.datatype, raw[index])
        else:
            data = typed_contents(label, tensor.datatype, tensor.contents)
        if any(dim < 0 for dim in shape) or math.prod(shape) != len(data):
            raise Incomparable(f"{label} has {len(data)} values but shape {shape}")
        outputs.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": data}
        )
    answer: dict[str, Any] = {"model_name": message.model_name, "outputs": outputs}
    if message.model_version:
        answer["model_version"] = message.model_version
    if message.id:
        answer["id"] = message.id
    return answer


_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def typed_contents(label: str, datatype: str, contents: Any) -> list[Any]:
    """``data`` from ``InferTensorContents``: the field the datatype says."""
    field = _CONTENTS.get(datatype)
    if field is None:
        raise Incomparable(f"{label}: datatype {datatype!r} has no typed contents (raw only)")
    values = list(getattr(contents, field))
    if datatype == "BYTES":
        return [_text(value) for value in values]
    return values


_FIXED = {
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}


def raw_tensor(label: str, datatype: str, raw: bytes) -> list[Any]:
    """``data`` from one ``raw_output_contents`` entry (little-endian, row-major)."""
    if datatype == "BYTES":
        return _raw_bytes_items(label, raw)
    if datatype == "BF16":
        # bfloat16 is the top half of a float32: widen each and read it as one.
        halves = _unpack(label, "H", 2, raw)
        return list(struct.unpack(f"<{len(halves)}f", struct.pack(f"<{len(halves)}I", *(
            h << 16 for h in halves
        ))))  # fmt: skip
    code = _FIXED.get(datatype)
    if code is None:
        raise Incomparable(f"{label}: unknown datatype {datatype!r}")
    return _unpack(label, code, struct.calcsize(code), raw)


def _unpack(label: str, code: str, width: int, raw: bytes) -> list[Any]:
    count, rest = divmod(len(raw), width)
    if rest:
        raise Incomparable(f"{label}: {len(raw)} raw bytes is not a whole number of {width}")
    if count > MAX_ELEMENTS:
        raise Incomparable(f"{label} has {count} values, over the limit of {MAX_ELEMENTS}")
    return list(struct.unpack(f"<{count}{code}", raw))


def _raw_bytes_items(label: str, raw: bytes) -> list[Any]:
    items: list[Any] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw) or len(items) >= MAX_ELEMENTS:
            raise Incomparable(f"{label}: BYTES contents are cut or too many")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise Incomparable(f"{label}: BYTES item of {size} bytes runs past the end")
        items.append(_text(raw[offset : offset + size]))
        offset += size
    return items


def _text(value: bytes) -> str:
    """A BYTES element as the REST form shows it: text (bytes that are not UTF-8 escaped)."""
    return value.decode("utf-8", "backslashreplace")
