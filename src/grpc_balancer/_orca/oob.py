"""Out-of-band ORCA: one ``StreamCoreMetrics`` stream per subchannel, reports handed to
a callback; restarted with backoff while the subchannel lives."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
import grpc.aio

from grpc_balancer._orca import OOB_METHOD, Duration, OrcaLoadReport, OrcaLoadReportRequest
from grpc_balancer.subchannel import Subchannel

log = logging.getLogger("grpc_balancer._orca")

_MAX_BACKOFF_S = 30.0


def start_oob_stream(
    sc: Subchannel, interval_s: float, on_report: Callable[[Subchannel, OrcaLoadReport], None]
) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(
        _run(sc, interval_s, on_report), name=f"grpc_balancer._orca[{sc.address}]"
    )


async def _run(
    sc: Subchannel, interval_s: float, on_report: Callable[[Subchannel, OrcaLoadReport], None]
) -> None:
    seconds = int(interval_s)
    request = OrcaLoadReportRequest(
        report_interval=Duration(seconds=seconds, nanos=int((interval_s - seconds) * 1e9))
    )
    stream = sc.channel.unary_stream(
        OOB_METHOD,
        request_serializer=OrcaLoadReportRequest.SerializeToString,
        response_deserializer=OrcaLoadReport.FromString,
    )
    backoff = 1.0
    while True:
        call = stream(request, wait_for_ready=True)
        try:
            async for report in call:
                backoff = 1.0
                on_report(sc, report)
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNIMPLEMENTED:
                backoff = _MAX_BACKOFF_S  # this server does not report; ask rarely
            log.debug("%s: ORCA stream ended: %s", sc.address, err.code().name)
        except asyncio.CancelledError:
            call.cancel()
            raise
        with contextlib.suppress(Exception):
            call.cancel()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _MAX_BACKOFF_S)
