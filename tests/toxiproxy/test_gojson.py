"""Go-compatible JSON and address handling, the parts clients can see in error texts."""

from __future__ import annotations

import pytest

from chaos.toxiproxy.api import clean_path
from chaos.toxiproxy.gojson import (
    Float32,
    GoField,
    GoStruct,
    JsonSyntaxError,
    StructDecoder,
    decode_first,
    encode,
    format_float32,
    to_float32,
)
from chaos.toxiproxy.netaddr import AddrError, lookup_port, resolve_tcp_addr, split_host_port


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "EOF"),
        (b" \n\t", "EOF"),
        (b"{", "unexpected EOF"),
        (b'{"a":1', "unexpected EOF"),
        (b'"abc', "unexpected EOF"),
        (b"tru", "unexpected EOF"),
        (b"-", "unexpected EOF"),
        (b"?", "invalid character '?' looking for beginning of value"),
        (b"{1:2}", "invalid character '1' looking for beginning of object key string"),
        (b'{"a" 1}', "invalid character '1' after object key"),
        (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        (b"[1 2]", "invalid character '2' after array element"),
        (b"[01]", "invalid character '1' after array element"),
        (b"-x", "invalid character 'x' in numeric literal"),
        (b"[1.x]", "invalid character 'x' after decimal point in numeric literal"),
        (b"[1ex]", "invalid character 'x' in exponent of numeric literal"),
        (b'"a\\x"', "invalid character 'x' in string escape code"),
        (b'"\\u12g4"', "invalid character 'g' in \\u hexadecimal character escape"),
        (b'"a\nb"', "invalid character '\\n' in string literal"),
        (b"trux", "invalid character 'x' in literal true (expecting 'e')"),
        (b"nul!", "invalid character '!' in literal null (expecting 'l')"),
        (b"'", "invalid character '\\'' looking for beginning of value"),
    ],
)
def test_syntax_errors_read_like_go(body: bytes, message: str) -> None:
    with pytest.raises(JsonSyntaxError) as caught:
        decode_first(body)
    assert str(caught.value) == message


def test_only_the_first_value_is_read() -> None:
    assert decode_first(b'{"a":"b"} {garbage') is not None
    assert decode_first(b"123abc") is not None
    assert decode_first(b'"\\ud83d\\ude00\\ud800"') == "\U0001f600\ufffd"


POINT = GoStruct(
    "Point",
    "geo.Point",
    (
        GoField("x", "int64", "int64"),
        GoField("label", "string", "string"),
        GoField("ratio", "float32", "float32"),
        GoField("on", "ptr", "bool"),
        GoField("Logger", "ptr", "zerolog.Logger", GoStruct("Logger", "zerolog.Logger", ())),
    ),
)


def decode(body: bytes) -> tuple[dict[str, object], str | None]:
    decoder = StructDecoder()
    fields = decoder.decode(decode_first(body), POINT)
    return fields, decoder.error


def test_fields_match_case_insensitively_and_in_order() -> None:
    fields, error = decode(b'{"X":1,"x":2,"LABEL":"a","unknown":[1,{}],"on":null}')
    assert error is None
    assert fields == {"x": 2, "label": "a", "on": None}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            b'{"x":1.5}',
            "json: cannot unmarshal number 1.5 into Go struct field Point.x of type int64",
        ),
        (
            b'{"x":1e3}',
            "json: cannot unmarshal number 1e3 into Go struct field Point.x of type int64",
        ),
        (
            b'{"x":9223372036854775808}',
            "json: cannot unmarshal number 9223372036854775808 into Go struct field Point.x "
            "of type int64",
        ),
        (b'{"x":"1"}', "json: cannot unmarshal string into Go struct field Point.x of type int64"),
        (
            b'{"label":true}',
            "json: cannot unmarshal bool into Go struct field Point.label of type string",
        ),
        (
            b'{"label":{}}',
            "json: cannot unmarshal object into Go struct field Point.label of type string",
        ),
        (b'{"on":[1]}', "json: cannot unmarshal array into Go struct field Point.on of type bool"),
        (
            b'{"ratio":1e39}',
            "json: cannot unmarshal number 1e39 into Go struct field Point.ratio of type float32",
        ),
        (
            b'{"Logger":5}',
            "json: cannot unmarshal number into Go struct field Point.Logger "
            "of type zerolog.Logger",
        ),
        (b"true", "json: cannot unmarshal bool into Go value of type geo.Point"),
    ],
)
def test_type_errors_read_like_go(body: bytes, error: str) -> None:
    assert decode(body)[1] == error


def test_decoding_continues_after_a_type_error() -> None:
    fields, error = decode(b'{"x":"bad","label":"kept","x":"worse","ratio":0.5}')
    assert error == "json: cannot unmarshal string into Go struct field Point.x of type int64"
    assert fields == {"label": "kept", "ratio": 0.5}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (0.5, "0.5"),
        (0.25, "0.25"),
        (0.1, "0.1"),
        (-1.0, "-1"),
        (5.0, "5"),
        (0.0, "0"),
        (123456789.0, "123456790"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (3.4e38, "3.4e+38"),
    ],
)
def test_float32_shortest_form(value: float, text: str) -> None:
    assert format_float32(to_float32(value)) == text


def test_encoding_escapes_like_go() -> None:
    assert encode({"a": '<&>\u2028\x01"\\\n', "b": [1, True, None, Float32(0.5)]}) == (
        b'{"a":"\\u003c\\u0026\\u003e\\u2028\\u0001\\"\\\\\\n","b":[1,true,null,0.5]}'
    )
    assert encode({"name": "caf\u00e9"}) == '{"name":"caf\u00e9"}'.encode()


@pytest.mark.parametrize(
    ("address", "result"),
    [
        ("127.0.0.1:80", ("127.0.0.1", "80")),
        ("[::1]:80", ("::1", "80")),
        (":80", ("", "80")),
        ("host:", ("host", "")),
    ],
)
def test_split_host_port(address: str, result: tuple[str, str]) -> None:
    assert split_host_port(address) == result


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("foo", "address foo: missing port in address"),
        ("a:b:c", "address a:b:c: too many colons in address"),
        ("[::1", "address [::1: missing ']' in address"),
        ("[::1]", "address [::1]: missing port in address"),
        ("[::1]x:1", "address [::1]x:1: missing port in address"),
        ("a]:1", "address a]:1: unexpected ']' in address"),
    ],
)
def test_split_host_port_errors(address: str, message: str) -> None:
    with pytest.raises(AddrError) as caught:
        split_host_port(address)
    assert str(caught.value) == message


def test_ports() -> None:
    assert lookup_port("") == 0
    assert lookup_port("+80") == 80
    assert lookup_port("65535") == 65535
    for bad in ("65536", "-1", "99999999999999"):
        with pytest.raises(AddrError, match=f"address {bad}: invalid port"):
            lookup_port(bad)


async def test_resolution_follows_go() -> None:
    assert str(await resolve_tcp_addr("")) == ":0"
    assert str(await resolve_tcp_addr(":5")) == ":5"
    assert str(await resolve_tcp_addr("localhost:7")) == "127.0.0.1:7"
    assert str(await resolve_tcp_addr("[::1]:7")) == "[::1]:7"
    assert str(await resolve_tcp_addr("[::ffff:127.0.0.1]:7")) == "127.0.0.1:7"
    assert str(await resolve_tcp_addr("0.0.0.0:9")) == "0.0.0.0:9"


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("/proxies", "/proxies"),
        ("/proxies/", "/proxies/"),
        ("//proxies", "/proxies"),
        ("/a/./b/../c", "/a/c"),
        ("/..", "/"),
        ("", "/"),
    ],
)
def test_clean_path(path: str, cleaned: str) -> None:
    assert clean_path(path) == cleaned
