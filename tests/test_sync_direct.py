"""The sync channel's blocking unary calls run on grpcio's Cython channel directly
(grpc_balancer._sync.direct): what the application sees must be what grpcio's own
channel gives, outcome by outcome, against the same real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

import grpc_balancer

METHOD = "/direct.Echo/Echo"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    sent = dict(context.invocation_metadata())
    context.send_initial_metadata((("x-initial", "i"),))
    context.set_trailing_metadata((("x-trailing", "t"), ("x-seen", sent.get("x-sent", "-"))))
    if request == b"fail":
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused on purpose")
    if request == b"slow":
        time.sleep(1.0)
    return b"echo:" + request


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.method_handlers_generic_handler(
        "direct.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(params=["grpcio", "ours"])
def channel(request: pytest.FixtureRequest, address: str) -> Iterator[grpc.Channel]:
    if request.param == "grpcio":
        ch: grpc.Channel = grpc.insecure_channel(address)
    else:
        ch = grpc_balancer.insecure_channel(f"static:///{address}")
    yield ch
    ch.close()


def _outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What an application can read of one call, success or error."""
    try:
        response, rpc = call()
    except grpc.RpcError as err:
        assert isinstance(err, grpc.Call) and isinstance(err, grpc.Future)
        assert err.done() and err.exception() is err
        return ("error", err.code(), err.details(), err.initial_metadata(), err.trailing_metadata())
    assert rpc.done() and not rpc.is_active() and rpc.result() == response
    return ("ok", response, rpc.code(), rpc.initial_metadata(), rpc.trailing_metadata())


def _bad_serializer(request: bytes) -> bytes:
    raise ValueError("cannot serialize")


def _bad_deserializer(response: bytes) -> bytes:
    raise ValueError("cannot deserialize")


def _deadline_said(outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    kind, code, details = outcome[:3]
    return (kind, code, "Deadline Exceeded" in details)


# Each case: how to call, and what both channels must report.
CASES: dict[str, Callable[[grpc.Channel], tuple[Any, ...]]] = {
    "ok with metadata as a list": lambda ch: _outcome(
        lambda: ch.unary_unary(METHOD).with_call(b"hi", timeout=5, metadata=[("x-sent", "m")])
    ),
    "ok without metadata": lambda ch: _outcome(
        lambda: ch.unary_unary(METHOD).with_call(b"hi", timeout=5)
    ),
    "server error with trailers": lambda ch: _outcome(
        lambda: ch.unary_unary(METHOD).with_call(b"fail", timeout=5)
    ),
    # grpcio's own details vary from call to call here ("Deadline Exceeded", or "Stream
    # removed (Deadline Exceeded)" when the server's reset wins the race): both say it
    "deadline": lambda ch: _deadline_said(
        _outcome(lambda: ch.unary_unary(METHOD).with_call(b"slow", timeout=0.2))
    ),
    "request serializer fails": lambda ch: _outcome(
        lambda: ch.unary_unary(METHOD, request_serializer=_bad_serializer).with_call(
            b"hi", timeout=5
        )
    ),
    "response deserializer fails": lambda ch: _outcome(
        lambda: ch.unary_unary(METHOD, response_deserializer=_bad_deserializer).with_call(
            b"hi", timeout=5
        )
    )[:3],
}


@pytest.mark.parametrize("case", list(CASES))
def test_blocking_unary_reports_what_grpcio_reports(case: str, address: str) -> None:
    grpcio = grpc.insecure_channel(address)
    ours = grpc_balancer.insecure_channel(f"static:///{address}")
    try:
        assert CASES[case](ours) == CASES[case](grpcio)
    finally:
        ours.close()
        grpcio.close()


def test_expected_outcomes(channel: grpc.Channel) -> None:
    """The parity above compares like with like; this pins what 'like' is."""
    ok = CASES["ok with metadata as a list"](channel)
    assert ok[:3] == ("ok", b"echo:hi", grpc.StatusCode.OK)
    assert ("x-initial", "i") in ok[3] and ("x-seen", "m") in ok[4]
    failed = CASES["server error with trailers"](channel)
    assert failed[:3] == ("error", grpc.StatusCode.FAILED_PRECONDITION, "refused on purpose")
    assert ("x-trailing", "t") in failed[4]
    assert CASES["deadline"](channel)[1] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert CASES["request serializer fails"](channel)[1:3] == (
        grpc.StatusCode.INTERNAL,
        "Exception serializing request!",
    )
    assert CASES["response deserializer fails"](channel)[1:3] == (
        grpc.StatusCode.INTERNAL,
        "Exception deserializing response!",
    )


def test_plain_call_and_compression_and_error_text(channel: grpc.Channel) -> None:
    echo = channel.unary_unary(METHOD)
    assert echo(b"x", timeout=5) == b"echo:x"
    # compression takes grpcio's own path on our channel: same answer
    assert echo(b"z", timeout=5, compression=grpc.Compression.Gzip) == b"echo:z"
    with pytest.raises(grpc.RpcError) as caught:
        echo(b"fail", timeout=5)
    text = str(caught.value)
    assert "FAILED_PRECONDITION" in text and "refused on purpose" in text
    assert "debug_error_string" in text


def test_close_cancels_a_blocked_call(address: str) -> None:
    """close() ends a call blocked in grpcio's Cython call at once, with CANCELLED."""
    ours = grpc_balancer.insecure_channel(f"static:///{address}")
    echo = ours.unary_unary(METHOD)
    assert echo(b"warm", timeout=5) == b"echo:warm"
    outcome: list[Any] = []

    def call() -> None:
        try:
            outcome.append(echo(b"slow", timeout=30))
        except grpc.RpcError as err:
            outcome.append(err.code())

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the call is in flight on the server (it sleeps 1 s)
    ours.close()
    caller.join(10)
    assert outcome == [grpc.StatusCode.CANCELLED]
