"""A blocking unary-unary attempt on grpcio's Cython channel, without grpcio's sync
call state around it.

grpcio's ``_UnaryUnaryMultiCallable.__call__`` builds, per call, an ``_RPCState``
(with a ``threading.Condition``), a flags object, a rendezvous and observability
bookkeeping: about 60 Python calls that a balanced call does not need, as the plan
keeps its state. :func:`blocking_unary` does what grpcio's ``_blocking`` does with
the same Cython objects (the same six operations, census context, registered-call
handle, a propagating parent's deadline) and returns the outcome as plain values.

Only the plain case comes here (:func:`direct_ok`): no per-call credentials, no
compression, no grpcio observability plugin; everything else goes through grpcio's
own multicallable. grpcio's internals read here are the ones its own sync path uses
(grpcio 1.5x to 1.8x), all in this module.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import _common, _observability
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from grpc_balancer._attempts.errors import CODE_OF_INT

#: grpcio's own (de)serializing: the failure logged, None returned
_serialize = _common.serialize
_deserialize = _common.deserialize
_OK = grpc.StatusCode.OK
_INTERNAL = grpc.StatusCode.INTERNAL
_PROPAGATE = cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS
_parent_deadline = cygrpc.get_deadline_from_context
_SendInitialMetadata = cygrpc.SendInitialMetadataOperation
_SendMessage = cygrpc.SendMessageOperation
_SendClose = cygrpc.SendCloseFromClientOperation
_ReceiveInitialMetadata = cygrpc.ReceiveInitialMetadataOperation
_ReceiveMessage = cygrpc.ReceiveMessageOperation
_ReceiveStatus = cygrpc.ReceiveStatusOnClientOperation

#: (code, response, details, initial metadata, trailing metadata, debug string)
Outcome = tuple[grpc.StatusCode, Any, str, Any, Any, "str | None"]


def direct_ok(inner: Any) -> bool:
    """Whether ``inner`` (grpcio's sync unary-unary multicallable) can be bypassed."""
    return _observability._OBSERVABILITY_PLUGIN is None and hasattr(
        inner, "_registered_call_handle"
    )


def blocking_unary(inner: Any, request: Any, deadline: float | None, metadata: Any) -> Outcome:
    """One unary-unary call on ``inner``'s Cython channel, in the caller's thread.

    ``deadline`` is absolute (``time.time()``); ``ValueError`` if the channel closed."""
    request = _serialize(request, inner._request_serializer)  # grpcio's: logs, None
    if request is None:
        return _INTERNAL, None, "Exception serializing request!", (), (), None
    parent = _parent_deadline()
    if parent is not None:
        deadline = parent if deadline is None else min(parent, deadline)
    initial_op = _ReceiveInitialMetadata(0)
    message_op = _ReceiveMessage(0)
    status_op = _ReceiveStatus(0)
    call = inner._channel.segregated_call(
        _PROPAGATE,
        inner._method,
        None,
        deadline,
        metadata,
        None,
        (
            (
                (
                    _SendInitialMetadata(metadata, 0),
                    _SendMessage(request, 0),
                    _SendClose(0),
                    initial_op,
                    message_op,
                    status_op,
                ),
                None,
            ),
        ),
        inner._context,
        inner._registered_call_handle,
    )
    call.next_event()  # fills the operations above (grpcio reads the same objects back)
    code = CODE_OF_INT.get(status_op.code())
    if code is None:
        code = grpc.StatusCode.UNKNOWN
        details = f'Server sent unknown code {status_op.code()} and details "{status_op.details()}"'
    else:
        details = status_op.details()
    response = message_op.message()
    if response is not None:
        response = _deserialize(response, inner._response_deserializer)
        if response is None:  # as grpcio's _handle_event
            code, details = _INTERNAL, "Exception deserializing response!"
    return (
        code,
        response,
        details,
        initial_op.initial_metadata(),
        status_op.trailing_metadata(),
        None if code is _OK else status_op.error_string(),
    )
