"""Avro binary writers compiled from a schema: the bytes fastavro writes, for about half its CPU.

Why: fastavro's writer walks the parsed schema for every record and decides each field's type
again, about 0.4 µs a field; encoding was ~12% of the engine thread's CPU at 1,500 orders/s. A writer
compiled once from the schema does only the writes, in generated Python: measured on the events the
engine writes (``timeit``, one record each), 1.2-2.4x faster than fastavro's ``schemaless_writer``
with the write hint (RoutingDecision 13.6 -> 6.2 µs, HoldDecided 4.5 -> 2.1 µs; BENCHMARKS.md).

The output is fastavro's, byte for byte, with its record rules: a missing field takes the schema's
default; one with no default (and no ``null`` branch) is an error. One difference: a fractional number
for an int or long is refused (``ValueError``) where fastavro truncates it. A schema using anything this
module does not compile (``float``, ``fixed``, unions other than ``null`` and one type, recursive
types) raises ``Unsupported``, and the codec keeps fastavro for it.
``tests/unit/contract/test_avro_writer.py`` checks every schema, current and historic, against
fastavro on random records.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

Writer = Callable[[Mapping[str, Any], bytes], bytes]

_CHUNK = 1 << 14
_SEVEN_BITS = 127


def _varint(z: int) -> bytes:
    out = bytearray()
    while z > _SEVEN_BITS:
        out.append((z & _SEVEN_BITS) | 128)
        z >>= 7
    out.append(z)
    return bytes(out)


# Varints of zigzagged values below 2^14 (one or two bytes), and every 14-bit chunk of a larger one
# with both continuation bits set: a millisecond timestamp is three lookups instead of six shifts.
_VARINT = [_varint(z) for z in range(_CHUNK)]
_VARINT_MORE = [bytes(((c & 127) | 128, (c >> 7) | 128)) for c in range(_CHUNK)]
_MAX_ZIGZAG = 1 << 64
_MAX_RECORD_DEPTH = 16  # deeper is a recursive type, which is not compiled
_PRIMITIVES = {"null", "boolean", "int", "long", "double", "string", "bytes"}
_COMPLEX = {"record", "enum", "array", "map", "fixed", "error"}
_MISSING = object()  # a field the record does not have (None is a value)


def write_long(n: int) -> bytes:
    """Avro's zigzag varint of a 64-bit ``n``. A whole float is written as its integer; a fractional one is
    refused, where fastavro truncates it: 19.99 fen would silently be 19."""
    try:
        z = (n << 1) ^ (n >> 63)
    except TypeError:
        given: Any = n  # typed int; a producer's mistake may be anything
        if isinstance(given, float) and given.is_integer():
            return write_long(int(given))
        if isinstance(given, float):
            raise ValueError(f"{n} is not a whole number: an int or long field takes whole fen, ms or units") from None
        raise
    if z < _CHUNK:
        return _VARINT[z]
    if z >= _MAX_ZIGZAG or z < 0:
        raise OverflowError(f"{n} does not fit a 64-bit long")
    out = _VARINT_MORE[z & (_CHUNK - 1)]
    z >>= 14
    while z >= _CHUNK:
        out += _VARINT_MORE[z & (_CHUNK - 1)]
        z >>= 14
    return out + _VARINT[z]


class Unsupported(ValueError):
    """The schema uses something this module does not compile; fastavro writes it instead."""


class _Compiler:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {"VARINT": _VARINT, "long_": write_long, "pack_double": struct.Struct("<d").pack,
                                       "MISSING": _MISSING}  # fmt: skip
        self.named: dict[str, Any] = {}
        self.counter = 0
        self.depth = 0

    def var(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, prefix: str, value: Any) -> str:
        name = self.var(prefix)
        self.consts[name] = value
        return name

    def emit(self, schema: Any, expr: str, indent: int, namespace: str = "") -> None:  # noqa: C901, PLR0912
        pad = " " * indent
        add = self.lines.append
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            named = self.named.get(schema) or self.named.get(f"{namespace}.{schema}")
            if named is None:
                raise Unsupported(f"unknown type {schema!r}")
            schema = named
        if isinstance(schema, list):
            self.union(schema, expr, indent, namespace)
            return
        kind = schema["type"] if isinstance(schema, dict) else schema
        if isinstance(schema, dict) and kind not in _COMPLEX:  # {"type": "long", ...}, {"type": [..]}: the type
            self.emit(kind, expr, indent, namespace)
        elif kind == "null":
            pass  # no bytes: fastavro does not look at the value either
        elif kind == "boolean":
            add(f"{pad}o += b'\\x01' if {expr} else b'\\x00'")
        elif kind in ("int", "long"):
            add(f"{pad}o += long_({expr})")
        elif kind == "double":
            add(f"{pad}o += pack_double(float({expr}))")
        elif kind in ("string", "bytes"):
            value = self.var("s")
            add(f"{pad}{value} = {expr}.encode()" if kind == "string" else f"{pad}{value} = {expr}")
            add(f"{pad}n = len({value}); o += VARINT[n << 1] if n < 8192 else long_(n); o += {value}")
        elif kind == "enum":
            self.remember(schema, namespace)
            symbols = self.const("symbols", {s: _VARINT[i << 1] for i, s in enumerate(schema["symbols"])})
            add(f"{pad}o += {symbols}[{expr}]")
        elif kind == "record":
            self.record(schema, expr, indent, namespace)
        elif kind in ("array", "map"):
            self.block(schema, expr, indent, namespace)
        else:
            raise Unsupported(f"type {kind!r}")

    def remember(self, schema: dict[str, Any], namespace: str) -> str:
        space = schema.get("namespace", namespace)
        name = schema["name"]
        full = name if "." in name else f"{space}.{name}" if space else name
        self.named[full] = schema
        self.named[full.rsplit(".", 1)[-1]] = schema
        return full.rsplit(".", 1)[0] if "." in full else ""

    def record(self, schema: dict[str, Any], expr: str, indent: int, namespace: str) -> None:
        self.depth += 1
        if self.depth > _MAX_RECORD_DEPTH:
            raise Unsupported("recursive record")
        space = self.remember(schema, namespace)
        pad = " " * indent
        rec = self.var("r")
        self.lines.append(f"{pad}{rec} = {expr}")
        for field in schema["fields"]:
            name = field["name"]
            value = self.var("f")
            if "default" in field:
                default = self.const("default", field["default"])
                self.lines.append(f"{pad}{value} = {rec}.get({name!r}, {default})")
            elif _nullable(field["type"]):
                self.lines.append(f"{pad}{value} = {rec}.get({name!r})")
            else:
                self.lines.append(f"{pad}{value} = {rec}.get({name!r}, MISSING)")
                self.lines.append(f"{pad}if {value} is MISSING: raise ValueError('no value and no default for {name}')")
            self.emit(field["type"], value, indent, space)
        self.depth -= 1

    def block(self, schema: dict[str, Any], expr: str, indent: int, namespace: str) -> None:
        pad = " " * indent
        items = self.var("a")
        self.lines.append(f"{pad}{items} = {expr}")
        self.lines.append(f"{pad}n = len({items})")  # None fails here, as in fastavro
        self.lines.append(f"{pad}if n:")
        self.lines.append(f"{pad}    o += long_(n)")
        if schema["type"] == "array":
            item = self.var("i")
            self.lines.append(f"{pad}    for {item} in {items}:")
            self.emit(schema["items"], item, indent + 8, namespace)
        else:
            key, item = self.var("k"), self.var("v")
            self.lines.append(f"{pad}    for {key}, {item} in {items}.items():")
            self.emit("string", key, indent + 8, namespace)
            self.emit(schema["values"], item, indent + 8, namespace)
        self.lines.append(f"{pad}o += b'\\x00'")

    def union(self, branches: list[Any], expr: str, indent: int, namespace: str) -> None:
        if len(branches) != 2 or "null" not in branches:  # noqa: PLR2004 - null and one type
            raise Unsupported(f"union {branches!r}")
        null_at = branches.index("null")
        other = branches[1 - null_at]
        pad = " " * indent
        self.lines.append(f"{pad}if {expr} is None:")
        self.lines.append(f"{pad}    o += {_VARINT[null_at << 1]!r}")
        self.lines.append(f"{pad}else:")
        self.lines.append(f"{pad}    o += {_VARINT[(1 - null_at) << 1]!r}")
        self.emit(other, expr, indent + 4, namespace)


def _nullable(schema: Any) -> bool:
    return schema == "null" or (isinstance(schema, list) and "null" in schema)


def compile_writer(schema: Any) -> Writer:
    """A function ``(record, header) -> header + Avro body of record`` for ``schema`` (its JSON, logical
    types allowed: they do not change the bytes). Raises ``Unsupported`` for what it does not compile."""
    compiler = _Compiler()
    compiler.emit(schema, "record", 4)
    body = "\n".join(compiler.lines)
    source = f"def write(record, header):\n    o = bytearray(header)\n{body}\n    return bytes(o)\n"
    namespace = dict(compiler.consts)
    # The source is built above from a schema file of the contract, never from a message.
    exec(compile(source, "<avro writer>", "exec"), namespace)
    writer: Writer = namespace["write"]
    return writer
