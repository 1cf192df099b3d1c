from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitRequest(_message.Message):
    __slots__ = ("envelope", "signature")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    envelope: bytes
    signature: bytes
    def __init__(self, envelope: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("job_id", "wait_seconds", "updated_after", "until_finished")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FINISHED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    wait_seconds: float
    updated_after: float
    until_finished: bool
    def __init__(self, job_id: _Optional[str] = ..., wait_seconds: _Optional[float] = ..., updated_after: _Optional[float] = ..., until_finished: _Optional[bool] = ...) -> None: ...

class NodeState(_message.Message):
    __slots__ = ("node", "state", "reason")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node: str
    state: str
    reason: str
    def __init__(self, node: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "state", "reason", "nodes", "submitted_at", "updated_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    reason: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeState]
    submitted_at: float
    updated_at: float
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeState, _Mapping]]] = ..., submitted_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class PlanRequest(_message.Message):
    __slots__ = ("job_json",)
    JOB_JSON_FIELD_NUMBER: _ClassVar[int]
    job_json: bytes
    def __init__(self, job_json: _Optional[bytes] = ...) -> None: ...

class PlanReply(_message.Message):
    __slots__ = ("parties", "data_parties")
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    DATA_PARTIES_FIELD_NUMBER: _ClassVar[int]
    parties: _containers.RepeatedScalarFieldContainer[str]
    data_parties: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, parties: _Optional[_Iterable[str]] = ..., data_parties: _Optional[_Iterable[str]] = ...) -> None: ...

class ResultRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResultReply(_message.Message):
    __slots__ = ("job_id", "result_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    result_json: bytes
    def __init__(self, job_id: _Optional[str] = ..., result_json: _Optional[bytes] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("name", "role", "online", "datasets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    online: bool
    datasets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., online: _Optional[bool] = ..., datasets: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class NodeMessage(_message.Message):
    __slots__ = ("hello", "decision", "report")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    decision: JobDecision
    report: SessionReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., decision: _Optional[_Union[JobDecision, _Mapping]] = ..., report: _Optional[_Union[SessionReport, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, datasets: _Optional[_Iterable[str]] = ...) -> None: ...

class JobDecision(_message.Message):
    __slots__ = ("job_id", "accept", "reason", "min_cell_floor", "protection_floor")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MIN_CELL_FLOOR_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_FLOOR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    accept: bool
    reason: str
    min_cell_floor: int
    protection_floor: int
    def __init__(self, job_id: _Optional[str] = ..., accept: _Optional[bool] = ..., reason: _Optional[str] = ..., min_cell_floor: _Optional[int] = ..., protection_floor: _Optional[int] = ...) -> None: ...

class SessionReport(_message.Message):
    __slots__ = ("job_id", "state", "reason", "result_json", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    reason: str
    result_json: bytes
    signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., result_json: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("offer", "start", "abort")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    offer: JobOffer
    start: SessionStart
    abort: SessionAbort
    def __init__(self, offer: _Optional[_Union[JobOffer, _Mapping]] = ..., start: _Optional[_Union[SessionStart, _Mapping]] = ..., abort: _Optional[_Union[SessionAbort, _Mapping]] = ...) -> None: ...

class JobOffer(_message.Message):
    __slots__ = ("job_id", "envelope", "signature", "parties", "data_parties")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    DATA_PARTIES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    envelope: bytes
    signature: bytes
    parties: _containers.RepeatedScalarFieldContainer[str]
    data_parties: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., envelope: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., parties: _Optional[_Iterable[str]] = ..., data_parties: _Optional[_Iterable[str]] = ...) -> None: ...

class SessionStart(_message.Message):
    __slots__ = ("job_id", "session_id", "parties", "min_cell", "data_parties", "protection")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    MIN_CELL_FIELD_NUMBER: _ClassVar[int]
    DATA_PARTIES_FIELD_NUMBER: _ClassVar[int]
    PROTECTION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    session_id: str
    parties: _containers.RepeatedScalarFieldContainer[str]
    min_cell: int
    data_parties: _containers.RepeatedScalarFieldContainer[str]
    protection: int
    def __init__(self, job_id: _Optional[str] = ..., session_id: _Optional[str] = ..., parties: _Optional[_Iterable[str]] = ..., min_cell: _Optional[int] = ..., data_parties: _Optional[_Iterable[str]] = ..., protection: _Optional[int] = ...) -> None: ...

class SessionAbort(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RelayFrame(_message.Message):
    __slots__ = ("session_id", "from_pid", "to_pid", "data", "final")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_PID_FIELD_NUMBER: _ClassVar[int]
    TO_PID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    from_pid: int
    to_pid: int
    data: bytes
    final: bool
    def __init__(self, session_id: _Optional[str] = ..., from_pid: _Optional[int] = ..., to_pid: _Optional[int] = ..., data: _Optional[bytes] = ..., final: _Optional[bool] = ...) -> None: ...
