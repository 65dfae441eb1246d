"""JSON decoding and encoding that behave like Go's ``encoding/json`` as Toxiproxy uses it.

Clients of a Toxiproxy server see the quirks of Go's decoder: only the first JSON value of a body
is read, field names match case-insensitively, a wrongly typed field is reported with Go's exact
message and does not stop the other fields from being decoded, and error texts name Go types.
Python's ``json`` module differs on every one of these points, so this module parses JSON itself
and maps values onto small descriptions of the Go structs the real server decodes into.

Encoding follows Go too: compact output, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, and
float32 values in Go's shortest form.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "Float32",
    "GoField",
    "GoNumber",
    "GoStruct",
    "JsonObject",
    "JsonSyntaxError",
    "JsonValue",
    "StructDecoder",
    "decode_first",
    "encode",
    "format_float32",
    "to_float32",
]


class JsonSyntaxError(Exception):
    """A body that is not JSON; the message is the text Go's decoder would give."""


@dataclass(frozen=True, slots=True)
class GoNumber:
    """A JSON number kept as its literal, because Go reports the literal in type errors."""

    literal: str


@dataclass(slots=True)
class JsonObject:
    """A JSON object as its key/value pairs in order, duplicates kept, as Go walks them."""

    pairs: list[tuple[str, JsonValue]] = field(default_factory=list)


JsonValue: TypeAlias = bool | str | GoNumber | list["JsonValue"] | JsonObject | None

_WHITESPACE = " \t\r\n"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = "0123456789abcdefABCDEF"


def _quote_char(ch: str) -> str:
    """Go's ``quoteChar``: how its scanner names an unexpected byte."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    # Go's scanner works on bytes: a multi-byte character is reported by its first byte.
    byte = ch.encode("utf-8", "surrogatepass")[0]
    c = chr(byte)
    simple = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if c in simple:
        inner = simple[c]
    elif c == "\v":
        inner = "\\v"
    elif c == "\\":
        inner = "\\\\"
    elif c.isprintable():
        inner = c
    elif byte < 0x80:
        inner = f"\\x{byte:02x}"
    else:
        inner = f"\\u{byte:04x}"
    return f"'{inner}'"


class _Parser:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _eof(self) -> JsonSyntaxError:
        return JsonSyntaxError("unexpected EOF")

    def _bad(self, context: str) -> JsonSyntaxError:
        return JsonSyntaxError(f"invalid character {_quote_char(self.text[self.pos])} {context}")

    def skip_ws(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos

    def peek(self) -> str:
        if self.pos >= len(self.text):
            raise self._eof()
        return self.text[self.pos]

    def value(self) -> JsonValue:
        ch = self.peek()
        if ch == "{":
            return self._object()
        if ch == "[":
            return self._array()
        if ch == '"':
            return self._string()
        if ch == "-" or (ch.isdigit() and ch.isascii()):
            return self._number()
        if ch == "t":
            self._literal("true")
            return True
        if ch == "f":
            self._literal("false")
            return False
        if ch == "n":
            self._literal("null")
            return None
        raise self._bad("looking for beginning of value")

    def _literal(self, word: str) -> None:
        for expected in word:
            ch = self.peek()
            if ch != expected:
                raise self._bad(f"in literal {word} (expecting {_quote_char(expected)})")
            self.pos += 1

    def _object(self) -> JsonObject:
        self.pos += 1
        obj = JsonObject()
        self.skip_ws()
        if self.peek() == "}":
            self.pos += 1
            return obj
        while True:
            if self.peek() != '"':
                raise self._bad("looking for beginning of object key string")
            key = self._string()
            self.skip_ws()
            if self.peek() != ":":
                raise self._bad("after object key")
            self.pos += 1
            self.skip_ws()
            obj.pairs.append((key, self.value()))
            self.skip_ws()
            ch = self.peek()
            if ch == ",":
                self.pos += 1
                self.skip_ws()
                continue
            if ch == "}":
                self.pos += 1
                return obj
            raise self._bad("after object key:value pair")

    def _array(self) -> list[JsonValue]:
        self.pos += 1
        items: list[JsonValue] = []
        self.skip_ws()
        if self.peek() == "]":
            self.pos += 1
            return items
        while True:
            self.skip_ws()
            items.append(self.value())
            self.skip_ws()
            ch = self.peek()
            if ch == ",":
                self.pos += 1
                continue
            if ch == "]":
                self.pos += 1
                return items
            raise self._bad("after array element")

    def _hex4(self) -> int:
        digits = ""
        for _ in range(4):
            ch = self.peek()
            if ch not in _HEX:
                raise self._bad("in \\u hexadecimal character escape")
            digits += ch
            self.pos += 1
        return int(digits, 16)

    def _string(self) -> str:
        self.pos += 1
        out: list[str] = []
        text = self.text
        while True:
            start = self.pos
            while self.pos < len(text) and text[self.pos] not in '"\\' and text[self.pos] >= " ":
                self.pos += 1
            out.append(text[start : self.pos])
            ch = self.peek()
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch != "\\":
                raise self._bad("in string literal")
            self.pos += 1
            esc = self.peek()
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
                self.pos += 1
                continue
            if esc != "u":
                raise self._bad("in string escape code")
            self.pos += 1
            code = self._hex4()
            if 0xD800 <= code < 0xDC00 and text.startswith("\\u", self.pos):
                mark = self.pos
                self.pos += 2
                low = self._hex4()
                if 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    continue
                self.pos = mark
            # A lone surrogate cannot be represented; Go substitutes U+FFFD as well.
            out.append("\ufffd" if 0xD800 <= code < 0xE000 else chr(code))

    def _digits(self) -> None:
        text = self.text
        while self.pos < len(text) and "0" <= text[self.pos] <= "9":
            self.pos += 1

    def _number(self) -> GoNumber:
        start = self.pos
        if self.peek() == "-":
            self.pos += 1
            if not ("0" <= self.peek() <= "9"):
                raise self._bad("in numeric literal")
        if self.peek() == "0":
            self.pos += 1
        else:
            self._digits()
        text = self.text
        if self.pos < len(text) and text[self.pos] == ".":
            self.pos += 1
            if not ("0" <= self.peek() <= "9"):
                raise self._bad("after decimal point in numeric literal")
            self._digits()
        if self.pos < len(text) and text[self.pos] in "eE":
            self.pos += 1
            if self.peek() in "+-":
                self.pos += 1
            if not ("0" <= self.peek() <= "9"):
                raise self._bad("in exponent of numeric literal")
            self._digits()
        return GoNumber(text[start : self.pos])


def decode_first(body: bytes) -> JsonValue:
    """The first JSON value of ``body``; whatever follows it is ignored, as in Go's Decoder."""
    parser = _Parser(body.decode("utf-8", "replace"))
    parser.skip_ws()
    if parser.pos >= len(parser.text):
        raise JsonSyntaxError("EOF")
    return parser.value()


# --- mapping values onto Go struct descriptions -------------------------------------------------


@dataclass(frozen=True)
class GoField:
    """One exported field of a Go struct.

    ``kind`` is one of ``string``, ``bool``, ``float32``, ``int64``, ``int`` (scalars: JSON null
    leaves them unchanged), ``struct`` (a value struct), ``ptr`` (a pointer to a struct or bool:
    null sets it to nil) and ``iface`` (an interface holding a struct pointer: null sets it to nil).
    """

    name: str
    kind: str
    go_type: str
    struct: GoStruct | None = None


@dataclass(frozen=True)
class GoStruct:
    """A Go struct type: ``name`` as ``reflect.Type.Name()``, ``type_string`` as ``String()``."""

    name: str
    type_string: str
    fields: tuple[GoField, ...]

    def lookup(self, key: str) -> GoField | None:
        for f in self.fields:
            if f.name == key:
                return f
        folded = key.casefold()
        for f in self.fields:
            if f.name.casefold() == folded:
                return f
        return None


_INT_LITERAL = re.compile(r"-?[0-9]+\Z")
_INT_RANGE = (-(2**63), 2**63 - 1)


def _json_kind(value: JsonValue) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, GoNumber):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def to_float32(value: float) -> float:
    """Round to the nearest float32; raises OverflowError outside the float32 range."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


class StructDecoder:
    """Decodes JSON values into plain dicts shaped like Go structs.

    Like Go, decoding continues after a type error and keeps every field that did decode; only the
    first error is kept, in ``error``.
    """

    def __init__(self) -> None:
        self.error: str | None = None

    def _fail(self, value: str, go_type: str, struct_name: str | None, path: list[str]) -> None:
        if self.error is not None:
            return
        if struct_name is None:
            self.error = f"json: cannot unmarshal {value} into Go value of type {go_type}"
        else:
            self.error = (
                f"json: cannot unmarshal {value} into Go struct field "
                f"{struct_name}.{'.'.join(path)} of type {go_type}"
            )

    def decode(self, value: JsonValue, spec: GoStruct) -> dict[str, object]:
        """Decode a top-level value into ``spec``; null decodes to nothing."""
        if value is None:
            return {}
        if not isinstance(value, JsonObject):
            self._fail(_json_kind(value), spec.type_string, None, [])
            return {}
        return self._object(value, spec, [])

    def decode_slice(
        self, value: JsonValue, elem: GoStruct, type_string: str
    ) -> list[dict[str, object]]:
        """Decode a top-level array of structs (``type_string`` names the slice type)."""
        if value is None:
            return []
        if not isinstance(value, list):
            self._fail(_json_kind(value), type_string, None, [])
            return []
        out: list[dict[str, object]] = []
        for item in value:
            if item is None:
                out.append({})
            elif isinstance(item, JsonObject):
                out.append(self._object(item, elem, []))
            else:
                self._fail(_json_kind(item), elem.type_string, None, [])
                out.append({})
        return out

    def _object(self, obj: JsonObject, spec: GoStruct, stack: list[str]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, val in obj.pairs:
            f = spec.lookup(key)
            if f is not None:
                self._field(val, f, spec, [*stack, f.name], out)
        return out

    def _field(
        self,
        val: JsonValue,
        f: GoField,
        owner: GoStruct,
        path: list[str],
        out: dict[str, object],
    ) -> None:
        if val is None:
            if f.kind in ("ptr", "iface"):
                out[f.name] = None
            return
        kind = f.kind
        if kind == "string":
            if isinstance(val, str):
                out[f.name] = val
            else:
                self._fail(_json_kind(val), f.go_type, owner.name, path)
        elif kind == "bool" or (kind == "ptr" and f.struct is None):
            if isinstance(val, bool):
                out[f.name] = val
            else:
                self._fail(_json_kind(val), f.go_type, owner.name, path)
        elif kind == "float32":
            self._float32(val, f, owner, path, out)
        elif kind in ("int64", "int"):
            self._int(val, f, owner, path, out)
        else:
            assert f.struct is not None
            if isinstance(val, JsonObject):
                previous = out.get(f.name)
                merged = dict(previous) if isinstance(previous, dict) else {}
                merged.update(self._object(val, f.struct, path))
                out[f.name] = merged
            else:
                self._fail(_json_kind(val), f.go_type, owner.name, path)

    def _float32(
        self, val: JsonValue, f: GoField, owner: GoStruct, path: list[str], out: dict[str, object]
    ) -> None:
        if not isinstance(val, GoNumber):
            self._fail(_json_kind(val), f.go_type, owner.name, path)
            return
        try:
            number = to_float32(float(val.literal))
        except OverflowError:
            number = math.inf
        if math.isinf(number):
            self._fail(f"number {val.literal}", f.go_type, owner.name, path)
            return
        out[f.name] = number

    def _int(
        self, val: JsonValue, f: GoField, owner: GoStruct, path: list[str], out: dict[str, object]
    ) -> None:
        if not isinstance(val, GoNumber):
            self._fail(_json_kind(val), f.go_type, owner.name, path)
            return
        if _INT_LITERAL.match(val.literal):
            number = int(val.literal)
            if _INT_RANGE[0] <= number <= _INT_RANGE[1]:
                out[f.name] = number
                return
        self._fail(f"number {val.literal}", f.go_type, owner.name, path)


# --- encoding -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Float32:
    """A float32 value to be written in Go's shortest float32 form."""

    value: float


def _shortest_digits(value: float) -> tuple[str, int]:
    """Digits and decimal exponent of the shortest decimal that reads back as ``value``."""
    for precision in range(1, 10):
        text = f"{value:.{precision - 1}e}"
        if to_float32(float(text)) == value:
            break
    mantissa, exponent = text.split("e")
    digits = mantissa.replace(".", "").lstrip("-").rstrip("0") or "0"
    return digits, int(exponent)


def format_float32(value: float) -> str:
    """Go's ``encoding/json`` text for a float32 (``1``, ``0.5``, ``1e-7``, ``1e+21``)."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    digits, exp = _shortest_digits(magnitude)
    if magnitude < to_float32(1e-6) or magnitude >= to_float32(1e21):
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        exp_sign = "-" if exp < 0 else "+"
        # Go prints at least two exponent digits, then trims "e-07" to "e-7" (not "e+07").
        exp_text = f"{abs(exp):02d}"
        if exp_sign == "-" and exp_text.startswith("0"):
            exp_text = exp_text[1:]
        return f"{sign}{mantissa}e{exp_sign}{exp_text}"
    if exp >= 0:
        whole = digits[: exp + 1].ljust(exp + 1, "0")
        frac = digits[exp + 1 :]
    else:
        whole = "0"
        frac = "0" * (-exp - 1) + digits
    return sign + whole + ("." + frac if frac else "")


_STRING_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\ud800-\udfff]')


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch in _STRING_ESCAPES:
        return _STRING_ESCAPES[ch]
    if "\ud800" <= ch <= "\udfff":
        return "\ufffd"
    return f"\\u{ord(ch):04x}"


def _encode_string(text: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


def _encode_into(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Float32):
        out.append(format_float32(value.value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_encode_string(str(key)))
            out.append(":")
            _encode_into(item, out)
        out.append("}")
    elif isinstance(value, Iterable):
        out.append("[")
        first = True
        for item in value:
            if not first:
                out.append(",")
            first = False
            _encode_into(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def encode(value: object) -> bytes:
    """Compact JSON with keys in the dict's order (callers order them as Go's structs do)."""
    out: list[str] = []
    _encode_into(value, out)
    return "".join(out).encode("utf-8")
