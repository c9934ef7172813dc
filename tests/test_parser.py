"""The HTTP parser, on both backends: requests whole and in order, and its limits."""

from __future__ import annotations

import pytest

from towtruck.errors import BadRequest, HeadersTooLarge, PayloadTooLarge
from towtruck.server import parser as http

MAX_BODY = 1000


@pytest.fixture(params=["httptools", "h11"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def feed(parser: http.Parser, *chunks: bytes) -> list[http.Request]:
    """Feed ``chunks``; return the requests they complete, each "answered" in turn."""
    for chunk in chunks:
        parser.feed(chunk)
    requests = []
    while parser.requests:
        requests.append(parser.requests.popleft())
        parser.answered()
    return requests


def test_a_request_is_read_whole(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    (request,) = feed(
        parser,
        b"POST /invoke/1/hello?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}",
    )
    assert request.method == b"POST"
    assert request.target == b"/invoke/1/hello?x=1"
    assert request.path == b"/invoke/1/hello"
    assert request.query == b"x=1"
    assert (b"host", b"t") in request.headers
    assert request.body == b"{}"
    assert request.keep_alive
    assert not parser.receiving


def test_pipelined_requests_come_out_in_order(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    two = b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nPOST /b HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\n\r\nx"
    assert [(r.method, r.target, r.body) for r in feed(parser, two)] == [
        (b"GET", b"/a", b""),
        (b"POST", b"/b", b"x"),
    ]


def test_a_request_in_pieces_is_one_request(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    data = b"PUT /p HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello"
    requests = feed(parser, *(data[i : i + 1] for i in range(len(data))))
    assert [(r.method, r.body) for r in requests] == [(b"PUT", b"hello")]


def test_a_chunked_body_is_gathered(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    data = b"POST /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    (request,) = feed(parser, data)
    assert request.body == b"abcde"


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nhost: t\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection(
    backend: str, head: bytes, keep_alive: bool
) -> None:
    (request,) = feed(http.open_parser(MAX_BODY, backend), head)
    assert request.keep_alive is keep_alive


def test_a_head_over_the_limit_is_431_once_whole(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    head = b"GET /big HTTP/1.1\r\nhost: t\r\nx-big: " + b"x" * http.MAX_HEAD + b"\r\n\r\n"
    with pytest.raises(http.Unreadable) as refused:
        parser.feed(head)
    assert isinstance(refused.value.error, HeadersTooLarge)


def test_a_head_growing_past_the_limit_is_431_before_it_ends(backend: str) -> None:
    """Memory stays bounded: the head is refused while it still arrives."""
    parser = http.open_parser(MAX_BODY, backend)
    parser.feed(b"GET /big HTTP/1.1\r\nx-big: ")
    with pytest.raises(http.Unreadable) as refused:
        feed(parser, *[b"x" * 4096] * 100)
    assert isinstance(refused.value.error, HeadersTooLarge)


def test_a_body_over_max_body_is_refused_by_its_length_before_it_comes(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    with pytest.raises(http.Unreadable) as refused:
        parser.feed(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 1001\r\n\r\n")
    assert isinstance(refused.value.error, PayloadTooLarge)
    assert refused.value.request is not None
    assert refused.value.request.path == b"/x"


def test_a_chunked_body_over_max_body_is_refused_as_it_comes(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    parser.feed(b"POST /x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
    with pytest.raises(http.Unreadable) as refused:
        feed(parser, *[b"200\r\n" + b"y" * 512 + b"\r\n"] * 3)
    assert isinstance(refused.value.error, PayloadTooLarge)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"\x00\x01\x02 nothing\r\n\r\n",
        b"GET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
    ],
)
def test_what_is_not_http_is_400(backend: str, data: bytes) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    with pytest.raises(http.Unreadable) as refused:
        parser.feed(data)
    assert isinstance(refused.value.error, BadRequest)


def test_a_close_in_the_middle_of_a_request_is_400(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    parser.feed(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nabc")
    assert parser.receiving
    with pytest.raises(http.Unreadable):
        parser.feed(b"")


def test_a_request_waiting_for_its_body_says_if_it_expects_continue(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    parser.feed(b"POST /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n")
    waiting = parser.waiting
    assert waiting is not None
    assert waiting.expects_continue
    (request,) = feed(parser, b"abc")
    assert request is waiting
    assert request.body == b"abc"
    assert parser.waiting is None


def test_an_upgrade_hands_over_the_bytes_past_its_head(backend: str) -> None:
    parser = http.open_parser(MAX_BODY, backend)
    with pytest.raises(http.Upgraded) as upgraded:
        parser.feed(
            b"GET /cluster/lane HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\n"
            b"upgrade: Towtruck-Lane\r\n\r\nFRAMES"
        )
    assert upgraded.value.request.upgrade == b"towtruck-lane"
    assert upgraded.value.request.path == b"/cluster/lane"
    assert upgraded.value.rest == b"FRAMES"
