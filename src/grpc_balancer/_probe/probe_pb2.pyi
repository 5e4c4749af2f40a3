from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ProbeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("requests_in_flight", "latency_seconds")
    REQUESTS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    requests_in_flight: int
    latency_seconds: float
    def __init__(self, requests_in_flight: _Optional[int] = ..., latency_seconds: _Optional[float] = ...) -> None: ...
