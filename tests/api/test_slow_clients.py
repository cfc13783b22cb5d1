"""Slow clients against the real API process, over real sockets: a connection that does not send
a whole request within STALK_API_READ_TIMEOUT_SECONDS is answered 408 and closed, whether it sends
nothing, trickles its headers (slow-loris) or its body, and it stops counting against the
requests the API admits at once; a client that keeps sending whole requests is never cut
(issue 12: uvicorn alone held such connections for ever)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.api.live import live_api, sqlite_env

READ_TIMEOUT = 1.0
# The deadline plus the time a loaded machine may take to act on it.
CUT_WITHIN = READ_TIMEOUT + 4.0


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    # One API process for the module: each test leaves it as it found it (its connections cut).
    workdir = tmp_path_factory.mktemp("slow-clients")
    # A request beyond the 4 places waits 0.2 s at the door for one, then is refused: well
    # before the read deadline frees them.
    env = sqlite_env(redis_server, workdir, STALK_API_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
                     STALK_API_MAX_REQUESTS="4", STALK_API_DATABASE_WAIT_SECONDS="0.2")
    with live_api(env, workdir) as live:
        yield live


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=CUT_WITHIN + 5)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (raises on the socket timeout)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def trickle_until_closed(sock: socket.socket, data: bytes, every: float = 0.2) -> tuple[bytes, float]:
    """Send ``data`` a byte at a time, ``every`` seconds apart, until the server closes the
    connection; what it answered, and how long it took."""
    started = time.monotonic()
    sock.settimeout(every)
    answer = b""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        answer += chunk
        assert time.monotonic() - started < CUT_WITHIN + 5, f"still open after {time.monotonic() - started:.1f}s"
    else:
        pytest.fail(f"the server read all {len(data)} bytes, {every}s apart, without closing the connection")
    return answer, time.monotonic() - started


def test_a_connection_that_sends_nothing_is_answered_408_and_closed(api):
    with connect(api.url) as sock:
        started = time.monotonic()
        answer = read_until_closed(sock)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert READ_TIMEOUT * 0.9 <= took < CUT_WITHIN, took


def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_deadline(api):
    # 200 bytes at 5 bytes a second: 40 s to send, if the server waited.
    head = b"GET /v1/tasks?limit=1 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Pad-%d: y\r\n" % i for i in range(20))
    with connect(api.url) as sock:
        answer, took = trickle_until_closed(sock, head)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert took < CUT_WITHIN, took


def test_a_body_sent_a_byte_at_a_time_is_cut_off_and_frees_its_place(api):
    """Four slow bodies fill the API's four places (STALK_API_MAX_REQUESTS): meanwhile another
    submission is refused 503; once the deadline cuts them, submissions are accepted again."""
    body = b'{"task": "stalk.echo", "args": ["' + b"x" * 200 + b'"]}'
    head = (b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    slow = [connect(api.url) for _ in range(4)]
    try:
        for sock in slow:
            sock.sendall(head + body[:1])
        deadline = time.monotonic() + CUT_WITHIN
        while True:  # the four reach the app (and take its places) as soon as their headers are in
            refused = httpx.post(f"{api.url}/v1/tasks", json={"task": "stalk.echo"}, timeout=10)
            if refused.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert httpx.get(f"{api.url}/healthz", timeout=5).status_code == 200  # probes always get in
        for sock in slow:
            answer, took = trickle_until_closed(sock, body[1:])
            assert took < CUT_WITHIN, took
    finally:
        for sock in slow:
            sock.close()
    accepted = httpx.post(f"{api.url}/v1/tasks", json={"task": "stalk.echo"}, timeout=10)
    assert accepted.status_code == 202, accepted.text


def test_a_client_that_keeps_sending_whole_requests_is_never_cut(api):
    # Each request arrives whole at once; the connection lives well past the read deadline.
    with httpx.Client(base_url=api.url, timeout=10) as client:
        started = time.monotonic()
        ports = set()
        while time.monotonic() - started < READ_TIMEOUT * 3:
            response = client.get("/healthz")
            assert response.status_code == 200
            ports.add(response.extensions["network_stream"].get_extra_info("client_addr"))
            time.sleep(READ_TIMEOUT / 4)
    assert len(ports) == 1, f"the connection was replaced: {ports}"


def test_an_idle_keep_alive_connection_stays_usable_for_a_proxys_idle_time(api):
    # A proxy or a busy client reuses a connection after several seconds of quiet; uvicorn's own
    # 5 s closed it under them, and the request sent as it closed got no answer.
    request = b"GET /healthz HTTP/1.1\r\nhost: api\r\n\r\n"
    with connect(api.url) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def read_response(sock: socket.socket) -> bytes:
    """One whole response: its headers and Content-Length bytes of body, however the segments fall
    (a recv may return the headers alone, and the next one the body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        body += chunk
    assert len(body) == length, f"more than one response: {body!r}"
    return head + b"\r\n\r\n" + body

