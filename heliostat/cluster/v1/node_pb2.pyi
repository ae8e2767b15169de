from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WireValue(_message.Message):
    __slots__ = ("object_id", "kind", "payload", "size", "contained", "at")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTAINED_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    kind: int
    payload: bytes
    size: int
    contained: _containers.RepeatedScalarFieldContainer[bytes]
    at: int
    def __init__(self, object_id: _Optional[bytes] = ..., kind: _Optional[int] = ..., payload: _Optional[bytes] = ..., size: _Optional[int] = ..., contained: _Optional[_Iterable[bytes]] = ..., at: _Optional[int] = ...) -> None: ...

class ForwardTask(_message.Message):
    __slots__ = ("spec", "function", "values", "pending", "code", "actor_options", "env_vars")
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    spec: bytes
    function: bytes
    values: _containers.RepeatedCompositeFieldContainer[WireValue]
    pending: _containers.RepeatedScalarFieldContainer[bytes]
    code: _containers.RepeatedScalarFieldContainer[str]
    actor_options: bytes
    env_vars: _containers.ScalarMap[str, str]
    def __init__(self, spec: _Optional[bytes] = ..., function: _Optional[bytes] = ..., values: _Optional[_Iterable[_Union[WireValue, _Mapping]]] = ..., pending: _Optional[_Iterable[bytes]] = ..., code: _Optional[_Iterable[str]] = ..., actor_options: _Optional[bytes] = ..., env_vars: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("task_id", "outcome", "started_at", "finished_at", "values", "pending")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    outcome: str
    started_at: float
    finished_at: float
    values: _containers.RepeatedCompositeFieldContainer[WireValue]
    pending: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, task_id: _Optional[bytes] = ..., outcome: _Optional[str] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., values: _Optional[_Iterable[_Union[WireValue, _Mapping]]] = ..., pending: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StreamItem(_message.Message):
    __slots__ = ("stream_id", "index", "values", "pending")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    stream_id: bytes
    index: int
    values: _containers.RepeatedCompositeFieldContainer[WireValue]
    pending: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, stream_id: _Optional[bytes] = ..., index: _Optional[int] = ..., values: _Optional[_Iterable[_Union[WireValue, _Mapping]]] = ..., pending: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LogLines(_message.Message):
    __slots__ = ("task_id", "actor_id", "stream", "task_name", "pid", "text", "origin")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    actor_id: bytes
    stream: str
    task_name: str
    pid: int
    text: str
    origin: str
    def __init__(self, task_id: _Optional[bytes] = ..., actor_id: _Optional[bytes] = ..., stream: _Optional[str] = ..., task_name: _Optional[str] = ..., pid: _Optional[int] = ..., text: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class PushValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[WireValue]
    def __init__(self, values: _Optional[_Iterable[_Union[WireValue, _Mapping]]] = ...) -> None: ...

class ReleaseObjects(_message.Message):
    __slots__ = ("object_ids",)
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class CancelTask(_message.Message):
    __slots__ = ("task_id", "force")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    task_id: bytes
    force: bool
    def __init__(self, task_id: _Optional[bytes] = ..., force: _Optional[bool] = ...) -> None: ...

class ActorStarted(_message.Message):
    __slots__ = ("actor_id", "error", "died")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DIED_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    error: bytes
    died: str
    def __init__(self, actor_id: _Optional[bytes] = ..., error: _Optional[bytes] = ..., died: _Optional[str] = ...) -> None: ...

class ActorControl(_message.Message):
    __slots__ = ("actor_id", "kill", "no_restart")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    NO_RESTART_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    kill: bool
    no_restart: bool
    def __init__(self, actor_id: _Optional[bytes] = ..., kill: _Optional[bool] = ..., no_restart: _Optional[bool] = ...) -> None: ...

class ActorRefs(_message.Message):
    __slots__ = ("actor_ids", "owners")
    ACTOR_IDS_FIELD_NUMBER: _ClassVar[int]
    OWNERS_FIELD_NUMBER: _ClassVar[int]
    actor_ids: _containers.RepeatedScalarFieldContainer[bytes]
    owners: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, actor_ids: _Optional[_Iterable[bytes]] = ..., owners: _Optional[_Iterable[int]] = ...) -> None: ...

class ActorBorrow(_message.Message):
    __slots__ = ("actor_id", "borrower", "delta")
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    BORROWER_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    actor_id: bytes
    borrower: int
    delta: int
    def __init__(self, actor_id: _Optional[bytes] = ..., borrower: _Optional[int] = ..., delta: _Optional[int] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("forward", "report", "push", "release", "cancel", "actor_started", "actor_control", "actor_refs", "actor_borrow", "item", "log")
    FORWARD_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_STARTED_FIELD_NUMBER: _ClassVar[int]
    ACTOR_CONTROL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_REFS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_BORROW_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    forward: ForwardTask
    report: TaskReport
    push: PushValues
    release: ReleaseObjects
    cancel: CancelTask
    actor_started: ActorStarted
    actor_control: ActorControl
    actor_refs: ActorRefs
    actor_borrow: ActorBorrow
    item: StreamItem
    log: LogLines
    def __init__(self, forward: _Optional[_Union[ForwardTask, _Mapping]] = ..., report: _Optional[_Union[TaskReport, _Mapping]] = ..., push: _Optional[_Union[PushValues, _Mapping]] = ..., release: _Optional[_Union[ReleaseObjects, _Mapping]] = ..., cancel: _Optional[_Union[CancelTask, _Mapping]] = ..., actor_started: _Optional[_Union[ActorStarted, _Mapping]] = ..., actor_control: _Optional[_Union[ActorControl, _Mapping]] = ..., actor_refs: _Optional[_Union[ActorRefs, _Mapping]] = ..., actor_borrow: _Optional[_Union[ActorBorrow, _Mapping]] = ..., item: _Optional[_Union[StreamItem, _Mapping]] = ..., log: _Optional[_Union[LogLines, _Mapping]] = ...) -> None: ...

class DeliverRequest(_message.Message):
    __slots__ = ("from_node", "messages", "epoch", "seq")
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    from_node: str
    messages: _containers.RepeatedCompositeFieldContainer[Envelope]
    epoch: int
    seq: int
    def __init__(self, from_node: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class DeliverReply(_message.Message):
    __slots__ = ("applied",)
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    applied: int
    def __init__(self, applied: _Optional[int] = ...) -> None: ...

class LeaseDeadlineRequest(_message.Message):
    __slots__ = ("beacon",)
    BEACON_FIELD_NUMBER: _ClassVar[int]
    beacon: str
    def __init__(self, beacon: _Optional[str] = ...) -> None: ...

class LeaseDeadlineReply(_message.Message):
    __slots__ = ("found", "remaining")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    found: bool
    remaining: float
    def __init__(self, found: _Optional[bool] = ..., remaining: _Optional[float] = ...) -> None: ...
