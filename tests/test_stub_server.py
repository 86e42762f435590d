"""The loopback stub server the suite runs against: what it records as a request."""

import json
import socket

from fusion_dspy.testing import StubOpenAIServer


def test_a_request_whose_body_never_arrived_is_not_recorded():
    """A killed client (tests/test_optimize_cli.py kills one mid-study) may leave between its headers and its
    body: that is no request, and a test counting the server's requests by their messages must not find an empty
    one."""
    body = json.dumps({"model": "stub", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with StubOpenAIServer(respond=lambda call: {"answer": "a"}) as server:
        host, port = server.api_base.removeprefix("http://").removesuffix("/v1").split(":")
        with socket.create_connection((host, int(port))) as client:
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1024) == b""  # closed without an answer
        with socket.create_connection((host, int(port))) as client:  # a whole request is still served
            client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)  # fmt: skip
            assert client.makefile("rb").readline().startswith(b"HTTP/1.1 200")
        assert [request["messages"][0]["content"] for request in server.requests] == ["hi"]
