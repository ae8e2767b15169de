from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PullRequest(_message.Message):
    __slots__ = ("object_id", "offset", "length", "chunk_size")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    offset: int
    length: int
    chunk_size: int
    def __init__(self, object_id: _Optional[bytes] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ObjectChunk(_message.Message):
    __slots__ = ("total_size", "offset", "data", "is_error")
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    offset: int
    data: bytes
    is_error: bool
    def __init__(self, total_size: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., is_error: _Optional[bool] = ...) -> None: ...

class OpenRequest(_message.Message):
    __slots__ = ("object_id",)
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    object_id: bytes
    def __init__(self, object_id: _Optional[bytes] = ...) -> None: ...

class OpenReply(_message.Message):
    __slots__ = ("total_size", "is_error", "address", "ticket")
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TICKET_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    is_error: bool
    address: str
    ticket: bytes
    def __init__(self, total_size: _Optional[int] = ..., is_error: _Optional[bool] = ..., address: _Optional[str] = ..., ticket: _Optional[bytes] = ...) -> None: ...
