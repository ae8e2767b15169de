from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_ALIVE: _ClassVar[NodeState]
    NODE_STATE_SUSPECT: _ClassVar[NodeState]
    NODE_STATE_DEAD: _ClassVar[NodeState]
    NODE_STATE_LEFT: _ClassVar[NodeState]
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_ALIVE: NodeState
NODE_STATE_SUSPECT: NodeState
NODE_STATE_DEAD: NodeState
NODE_STATE_LEFT: NodeState

class ResourceMap(_message.Message):
    __slots__ = ("amounts",)
    class AmountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AMOUNTS_FIELD_NUMBER: _ClassVar[int]
    amounts: _containers.ScalarMap[str, float]
    def __init__(self, amounts: _Optional[_Mapping[str, float]] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "hostname", "pid", "state", "total", "available", "incarnation", "registered_at", "last_heartbeat_at", "silent_for_s", "is_head", "objects", "object_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    SILENT_FOR_S_FIELD_NUMBER: _ClassVar[int]
    IS_HEAD_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    hostname: str
    pid: int
    state: NodeState
    total: ResourceMap
    available: ResourceMap
    incarnation: int
    registered_at: float
    last_heartbeat_at: float
    silent_for_s: float
    is_head: bool
    objects: int
    object_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[NodeState, str]] = ..., total: _Optional[_Union[ResourceMap, _Mapping]] = ..., available: _Optional[_Union[ResourceMap, _Mapping]] = ..., incarnation: _Optional[int] = ..., registered_at: _Optional[float] = ..., last_heartbeat_at: _Optional[float] = ..., silent_for_s: _Optional[float] = ..., is_head: _Optional[bool] = ..., objects: _Optional[int] = ..., object_bytes: _Optional[int] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "address", "hostname", "pid", "total", "available", "is_head")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    IS_HEAD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    hostname: str
    pid: int
    total: ResourceMap
    available: ResourceMap
    is_head: bool
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., total: _Optional[_Union[ResourceMap, _Mapping]] = ..., available: _Optional[_Union[ResourceMap, _Mapping]] = ..., is_head: _Optional[bool] = ...) -> None: ...

class RegisterNodeReply(_message.Message):
    __slots__ = ("cluster_id", "incarnation", "heartbeat_interval_s", "dead_after_s")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    DEAD_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    incarnation: int
    heartbeat_interval_s: float
    dead_after_s: float
    def __init__(self, cluster_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., dead_after_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "available", "incarnation", "objects_added", "objects_removed", "objects_full")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_ADDED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FULL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    available: ResourceMap
    incarnation: int
    objects_added: _containers.RepeatedCompositeFieldContainer[StoredObject]
    objects_removed: _containers.RepeatedScalarFieldContainer[bytes]
    objects_full: bool
    def __init__(self, node_id: _Optional[str] = ..., available: _Optional[_Union[ResourceMap, _Mapping]] = ..., incarnation: _Optional[int] = ..., objects_added: _Optional[_Iterable[_Union[StoredObject, _Mapping]]] = ..., objects_removed: _Optional[_Iterable[bytes]] = ..., objects_full: _Optional[bool] = ...) -> None: ...

class StoredObject(_message.Message):
    __slots__ = ("object_id", "size")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    size: int
    def __init__(self, object_id: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("incarnation", "objects_wanted")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_WANTED_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    objects_wanted: bool
    def __init__(self, incarnation: _Optional[int] = ..., objects_wanted: _Optional[bool] = ...) -> None: ...

class DeregisterNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class DeregisterNodeReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class GetClusterResourcesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterResourcesReply(_message.Message):
    __slots__ = ("total", "available")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    total: ResourceMap
    available: ResourceMap
    def __init__(self, total: _Optional[_Union[ResourceMap, _Mapping]] = ..., available: _Optional[_Union[ResourceMap, _Mapping]] = ...) -> None: ...

class GetClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterInfoReply(_message.Message):
    __slots__ = ("cluster_id", "version", "started_at", "nodes_alive")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    NODES_ALIVE_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    version: str
    started_at: float
    nodes_alive: int
    def __init__(self, cluster_id: _Optional[str] = ..., version: _Optional[str] = ..., started_at: _Optional[float] = ..., nodes_alive: _Optional[int] = ...) -> None: ...

class GetWorkflowStoresRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetWorkflowStoresReply(_message.Message):
    __slots__ = ("db_url", "storage_url", "storage_configured", "signing_key", "head_machine")
    DB_URL_FIELD_NUMBER: _ClassVar[int]
    STORAGE_URL_FIELD_NUMBER: _ClassVar[int]
    STORAGE_CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    HEAD_MACHINE_FIELD_NUMBER: _ClassVar[int]
    db_url: str
    storage_url: str
    storage_configured: bool
    signing_key: bytes
    head_machine: str
    def __init__(self, db_url: _Optional[str] = ..., storage_url: _Optional[str] = ..., storage_configured: _Optional[bool] = ..., signing_key: _Optional[bytes] = ..., head_machine: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "entrypoint", "hostname", "pid", "started_at", "finished_at")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    entrypoint: str
    hostname: str
    pid: int
    started_at: float
    finished_at: float
    def __init__(self, job_id: _Optional[str] = ..., entrypoint: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ...) -> None: ...

class RegisterJobRequest(_message.Message):
    __slots__ = ("entrypoint", "hostname", "pid")
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    entrypoint: str
    hostname: str
    pid: int
    def __init__(self, entrypoint: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class RegisterJobReply(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class FinishJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class FinishJobReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class HasPackageRequest(_message.Message):
    __slots__ = ("uri",)
    URI_FIELD_NUMBER: _ClassVar[int]
    uri: str
    def __init__(self, uri: _Optional[str] = ...) -> None: ...

class HasPackageReply(_message.Message):
    __slots__ = ("present", "size")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    present: bool
    size: int
    def __init__(self, present: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class PackageChunk(_message.Message):
    __slots__ = ("uri", "total_size", "data")
    URI_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    uri: str
    total_size: int
    data: bytes
    def __init__(self, uri: _Optional[str] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadPackageReply(_message.Message):
    __slots__ = ("stored", "size")
    STORED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    size: int
    def __init__(self, stored: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class DownloadPackageRequest(_message.Message):
    __slots__ = ("uri",)
    URI_FIELD_NUMBER: _ClassVar[int]
    uri: str
    def __init__(self, uri: _Optional[str] = ...) -> None: ...

class NamedActor(_message.Message):
    __slots__ = ("namespace", "name", "actor_id", "owner_node_id", "class_name", "methods", "detached")
    class MethodsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    actor_id: bytes
    owner_node_id: str
    class_name: str
    methods: _containers.ScalarMap[str, int]
    detached: bool
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., actor_id: _Optional[bytes] = ..., owner_node_id: _Optional[str] = ..., class_name: _Optional[str] = ..., methods: _Optional[_Mapping[str, int]] = ..., detached: _Optional[bool] = ...) -> None: ...

class ClaimNameRequest(_message.Message):
    __slots__ = ("actor",)
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    actor: NamedActor
    def __init__(self, actor: _Optional[_Union[NamedActor, _Mapping]] = ...) -> None: ...

class ClaimNameReply(_message.Message):
    __slots__ = ("claimed", "holder")
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    claimed: bool
    holder: NamedActor
    def __init__(self, claimed: _Optional[bool] = ..., holder: _Optional[_Union[NamedActor, _Mapping]] = ...) -> None: ...

class LookupNameRequest(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class LookupNameReply(_message.Message):
    __slots__ = ("found", "actor")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    found: bool
    actor: NamedActor
    def __init__(self, found: _Optional[bool] = ..., actor: _Optional[_Union[NamedActor, _Mapping]] = ...) -> None: ...

class ReleaseNameRequest(_message.Message):
    __slots__ = ("namespace", "name", "actor_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    actor_id: bytes
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., actor_id: _Optional[bytes] = ...) -> None: ...

class ReleaseNameReply(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class ListNamesRequest(_message.Message):
    __slots__ = ("all_namespaces", "namespace")
    ALL_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    all_namespaces: bool
    namespace: str
    def __init__(self, all_namespaces: _Optional[bool] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListNamesReply(_message.Message):
    __slots__ = ("actors",)
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    actors: _containers.RepeatedCompositeFieldContainer[NamedActor]
    def __init__(self, actors: _Optional[_Iterable[_Union[NamedActor, _Mapping]]] = ...) -> None: ...

class LocateObjectsRequest(_message.Message):
    __slots__ = ("object_ids", "limit")
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[bytes]
    limit: int
    def __init__(self, object_ids: _Optional[_Iterable[bytes]] = ..., limit: _Optional[int] = ...) -> None: ...

class ObjectPlace(_message.Message):
    __slots__ = ("object_id", "size", "node_ids")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    size: int
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, object_id: _Optional[bytes] = ..., size: _Optional[int] = ..., node_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LocateObjectsReply(_message.Message):
    __slots__ = ("places", "total")
    PLACES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    places: _containers.RepeatedCompositeFieldContainer[ObjectPlace]
    total: int
    def __init__(self, places: _Optional[_Iterable[_Union[ObjectPlace, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...
