"""Request lines → typed requests, with karma 1.0's error for the first problem found.

The fast path is one typed msgspec decode of the whole union; it succeeds only for requests
that are entirely well typed. On any failure the slow path re-reads the line generically and
checks in karma 1.0's order — JSON, object, `v`, `op`, auth, then each field in declaration
order — so the error a client sees is the one karma 1.0 would send.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from msgspec import UNSET, UnsetType
from msgspec import inspect as mi

from karma.errors import ErrorCode, KarmaError
from karma.protocol import fields, optable
from karma.protocol import requests as r
from karma.protocol.gate import Gate
from karma.protocol.requests import AnyRequest

_TYPED: Final[msgspec.json.Decoder[AnyRequest]] = msgspec.json.Decoder(AnyRequest)
_GENERIC: Final = msgspec.json.Decoder()
_UNSUPPORTED: Final = "Karma 1.0 accepts only protocol v2 requests with field v=2"
#: Fields the slow path does not type-check: the envelope, and `tree`/`series` (SeriesRequest).
_SKIPPED: Final = frozenset({"v", "token", "tree", "series"})


def decode(line: bytes, gate: Gate) -> r.Request:
    """Decode, admit and check one request line (without its newline). Raises KarmaError."""
    try:
        request = _TYPED.decode(line)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return _decode_slow(line, gate)
    spec = optable.SPEC_BY_CLASS[type(request)]
    if spec.internal and not gate.internal_ops:
        raise KarmaError(ErrorCode.UNKNOWN_COMMAND, f"Unknown op {r.op_tag(type(request))}")
    if not gate.open:
        scope = gate.admit(spec, request.token)
        _check(request, spec)
        if scope is not None:
            gate.check_series(scope, spec, request)
        return request
    _check(request, spec)
    return request


def _check(request: r.Request, spec: optable.OpSpec) -> None:
    request.check()
    if spec.idempotent and (
        request.idempotency_key is not UNSET or request.fingerprint is not UNSET
    ):
        fingerprint = request.fingerprint
        fields.check_idempotency_fields(
            request.key_text, None if isinstance(fingerprint, UnsetType) else str(fingerprint)
        )


def _decode_slow(line: bytes, gate: Gate) -> r.Request:
    try:
        obj = _GENERIC.decode(line)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise KarmaError(ErrorCode.INVALID_JSON, f"Invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise KarmaError.validation("Request must be a JSON object")
    version = obj.get("v")
    if type(version) is not int or version != 2:
        raise KarmaError(ErrorCode.UNSUPPORTED_PROTOCOL, _UNSUPPORTED)
    op = obj.get("op")
    if not isinstance(op, str):
        raise KarmaError.required("op")
    cls = optable.CLASS_BY_TAG.get(op)
    if cls is None or (optable.SPEC_BY_CLASS[cls].internal and not gate.internal_ops):
        raise KarmaError(ErrorCode.UNKNOWN_COMMAND, f"Unknown op {op}")
    spec = optable.SPEC_BY_CLASS[cls]
    scope = gate.admit(spec, obj.get("token"))
    cleaned = {k: v for k, v in obj.items() if not (k in _SKIPPED and not isinstance(v, str))}
    cleaned["v"] = 2
    if issubclass(cls, r.SeriesRequest) and "tree" not in cleaned and "series" not in cleaned:
        raise KarmaError.validation("Field tree or series is required")
    _explain(cleaned, cls)
    try:
        request = msgspec.convert(cleaned, cls)
    except msgspec.ValidationError as exc:
        # the field walk found nothing, yet msgspec refused: still a client error, worded by msgspec
        raise KarmaError.validation(f"Invalid request: {exc}") from None
    _check(request, spec)
    if scope is not None:
        gate.check_series(scope, spec, request)
    return request


def _explain(obj: dict[str, Any], cls: type[r.Request]) -> None:
    """Raise the first parse-phase problem of `obj` as `cls`, walking fields in order."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        if field.encode_name in _SKIPPED:
            continue
        if field.encode_name not in obj:
            if field.required:
                raise KarmaError.required(field.encode_name)
            continue
        _check_value(field.encode_name, obj[field.encode_name], field.type)


def _check_value(path: str, value: object, kind: mi.Type) -> None:
    if isinstance(kind, mi.UnionType):
        if value is None and any(isinstance(t, mi.NoneType) for t in kind.types):
            return
        options = [t for t in kind.types if not isinstance(t, mi.NoneType)]
        if isinstance(value, str) and any(isinstance(t, mi.StrType) for t in options):
            return
        names = {type(t) for t in options}
        if names == {mi.IntType, mi.StrType} and type(value) is not int:
            raise KarmaError.validation(f"Field {path} must be a string or integer")
        kind = next((t for t in options if not isinstance(t, mi.StrType)), options[0])
    if isinstance(kind, mi.IntType):
        if type(value) is not int:
            raise KarmaError.validation(f"Field {path} must be an integer")
        if kind.ge is not None and value < kind.ge:
            raise KarmaError.validation(f"Field {path} must be greater than or equal to {kind.ge}")
    elif isinstance(kind, mi.StrType):
        if not isinstance(value, str):
            raise KarmaError.validation(f"Field {path} must be a string")
    elif isinstance(kind, mi.ListType):
        if not isinstance(value, list):
            raise KarmaError.validation(f"Field {path} must be an array")
        for item in value:
            _check_value(f"{path}[]", item, kind.item_type)
    elif isinstance(kind, mi.TupleType):
        if not isinstance(value, list) or len(value) != len(kind.item_types):
            raise KarmaError.validation("Each item must be [key, bucket, value]")
        for index, (item, item_kind) in enumerate(zip(value, kind.item_types, strict=True)):
            _check_value(f"{path}[{index}]", item, item_kind)
    elif isinstance(kind, mi.StructType):
        _check_struct(path, value, kind)


def _check_struct(path: str, value: object, kind: mi.StructType) -> None:
    if not isinstance(value, dict):
        raise KarmaError.validation(f"Field {path} must be an object")
    prefix = path + "."
    for field in kind.fields:
        if field.encode_name not in value:
            if field.required:
                raise KarmaError.required(prefix + field.encode_name)
            continue
        _check_value(prefix + field.encode_name, value[field.encode_name], field.type)
