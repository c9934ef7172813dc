import pytest

import towtruck


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("Node-1.Example.com:1", "node-1.example.com", 1),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:9000", "::1", 9000),
    ],
)
def test_parse(text: str, host: str, port: int) -> None:
    address = towtruck.Address.parse(text)
    assert address == (host, port)
    assert towtruck.Address.parse(str(address)) == address


@pytest.mark.parametrize(
    "text",
    [
        "not-a-host",
        "host:",
        ":80",
        "host:http",
        "host:0",
        "host:65536",
        "-bad:80",
        "a b:80",
        "[nope]:80",
        "[::1:80",
        "host:-1",
        "1.2.3.4.5.6:80x",
    ],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(towtruck.InvalidAddress):
        towtruck.Address.parse(text)


def test_url() -> None:
    assert towtruck.Address.parse("[::1]:80").url == "http://[::1]:80"
