"""ORCA (Open Request Cost Aggregation) load reports: what servers say about their load.

A server attaches an ``xds.data.orca.v3.OrcaLoadReport`` to each response in the
``endpoint-load-metrics-bin`` trailer, and/or streams it out of band from
``xds.service.orca.v3.OpenRcaService/StreamCoreMetrics``. weighted_round_robin turns a
report into a weight with gRFC A58's formula. The server side is
:mod:`grpc_balancer.server.load_reports`.
"""

from __future__ import annotations

from collections.abc import Sequence

from grpc_balancer._orca.orca_pb2 import Duration, OrcaLoadReport, OrcaLoadReportRequest

TRAILER_KEY = "endpoint-load-metrics-bin"
#: grpcio's C core consumes ``endpoint-load-metrics-bin`` (for its own
#: weighted_round_robin) and never shows it to Python code, so our server helper
#: sends the same bytes under this key too; from servers that send only the standard
#: key, per-call reports cannot be read in Python: use ``enableOobLoadReport``.
MIRROR_TRAILER_KEY = "x-endpoint-load-metrics-bin"
OOB_SERVICE = "xds.service.orca.v3.OpenRcaService"
OOB_METHOD = f"/{OOB_SERVICE}/StreamCoreMetrics"

__all__ = [
    "MIRROR_TRAILER_KEY",
    "OOB_METHOD",
    "OOB_SERVICE",
    "TRAILER_KEY",
    "Duration",
    "OrcaLoadReport",
    "OrcaLoadReportRequest",
    "report_from_trailers",
    "weight_from_report",
]


def report_from_trailers(
    trailers: Sequence[tuple[str, str | bytes]] | None,
) -> OrcaLoadReport | None:
    """The report in ``trailers``, or None if there is none or it does not parse."""
    if not trailers:
        return None
    for key, value in trailers:
        if key in (MIRROR_TRAILER_KEY, TRAILER_KEY) and isinstance(value, bytes):
            report = OrcaLoadReport()
            try:
                report.ParseFromString(value)
            except Exception:  # a malformed report is ignored, never fails the call
                return None
            return report
    return None


def weight_from_report(report: OrcaLoadReport, error_penalty: float) -> float | None:
    """gRFC A58: ``qps / (utilization + eps / qps * errorUtilizationPenalty)`` where
    utilization is application_utilization if set, else cpu_utilization; None when the
    report has no qps or no utilization (it says nothing about capacity)."""
    utilization = report.application_utilization or report.cpu_utilization
    qps = report.rps_fractional
    if utilization <= 0 or qps <= 0:
        return None
    utilization += report.eps / qps * error_penalty
    return qps / utilization
