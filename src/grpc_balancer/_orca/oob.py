"""Out-of-band ORCA: one ``StreamCoreMetrics`` stream per subchannel, reports handed to
a callback; restarted with backoff while the subchannel lives. Opened on the
subchannel's own connection (either channel kind) through its transport seam."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from grpc_balancer._orca import OOB_METHOD, Duration, OrcaLoadReport, OrcaLoadReportRequest
from grpc_balancer.subchannel import StreamError, Subchannel

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
    backoff = 1.0
    while True:
        stream = sc.open_server_stream(
            OOB_METHOD,
            request,
            request_serializer=OrcaLoadReportRequest.SerializeToString,
            response_deserializer=OrcaLoadReport.FromString,
            wait_for_ready=True,
        )
        try:
            async for report in stream:
                backoff = 1.0
                on_report(sc, report)
        except StreamError as err:
            if err.code is grpc.StatusCode.UNIMPLEMENTED:
                backoff = _MAX_BACKOFF_S  # this server does not report; ask rarely
            log.debug("%s: ORCA stream ended: %s", sc.address, err.code.name)
        finally:
            stream.cancel()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _MAX_BACKOFF_S)
