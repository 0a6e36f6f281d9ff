from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper

DESCRIPTOR: _descriptor.FileDescriptor

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_EOS: _ClassVar[StopReason]
    STOP_REASON_LENGTH: _ClassVar[StopReason]
    STOP_REASON_CONTEXT: _ClassVar[StopReason]
    STOP_REASON_ABORTED: _ClassVar[StopReason]
    STOP_REASON_ERROR: _ClassVar[StopReason]

STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_EOS: StopReason
STOP_REASON_LENGTH: StopReason
STOP_REASON_CONTEXT: StopReason
STOP_REASON_ABORTED: StopReason
STOP_REASON_ERROR: StopReason

class SamplingParams(_message.Message):
    __slots__ = (
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "seed",
        "stop_token_ids",
        "temperature",
        "top_k",
        "top_p",
    )
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    max_tokens: int
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    ignore_eos: bool
    min_tokens: int
    def __init__(
        self,
        temperature: float | None = ...,
        top_p: float | None = ...,
        top_k: int | None = ...,
        seed: int | None = ...,
        max_tokens: int | None = ...,
        stop_token_ids: _Iterable[int] | None = ...,
        ignore_eos: bool | None = ...,
        min_tokens: int | None = ...,
    ) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("abort", "hello", "submit")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    hello: SessionHello
    submit: Submit
    abort: Abort
    def __init__(
        self,
        hello: SessionHello | _Mapping | None = ...,
        submit: Submit | _Mapping | None = ...,
        abort: Abort | _Mapping | None = ...,
    ) -> None: ...

class SessionHello(_message.Message):
    __slots__ = ("gateway_id",)
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    def __init__(self, gateway_id: str | None = ...) -> None: ...

class Submit(_message.Message):
    __slots__ = ("prompt_token_ids", "request_id", "sampling")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    def __init__(
        self,
        request_id: str | None = ...,
        prompt_token_ids: _Iterable[int] | None = ...,
        sampling: SamplingParams | _Mapping | None = ...,
    ) -> None: ...

class Abort(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: str | None = ...) -> None: ...

class SessionEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RequestEvent]
    def __init__(self, events: _Iterable[RequestEvent | _Mapping] | None = ...) -> None: ...

class RequestEvent(_message.Message):
    __slots__ = ("error_code", "error_message", "request_id", "stop_reason", "token_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    stop_reason: StopReason
    error_code: str
    error_message: str
    def __init__(
        self,
        request_id: str | None = ...,
        token_ids: _Iterable[int] | None = ...,
        stop_reason: StopReason | str | None = ...,
        error_code: str | None = ...,
        error_message: str | None = ...,
    ) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    result: StepResult
    def __init__(
        self,
        hello: WorkerHello | _Mapping | None = ...,
        result: StepResult | _Mapping | None = ...,
    ) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = (
        "block_size",
        "eos_token_id",
        "max_model_len",
        "model",
        "num_kv_blocks",
        "worker_id",
    )
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    model: str
    num_kv_blocks: int
    block_size: int
    max_model_len: int
    eos_token_id: int
    def __init__(
        self,
        worker_id: str | None = ...,
        model: str | None = ...,
        num_kv_blocks: int | None = ...,
        block_size: int | None = ...,
        max_model_len: int | None = ...,
        eos_token_id: int | None = ...,
    ) -> None: ...

class NewRequest(_message.Message):
    __slots__ = ("num_output_tokens", "request_id", "sampling", "token_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NUM_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    num_output_tokens: int
    sampling: SamplingParams
    def __init__(
        self,
        request_id: str | None = ...,
        token_ids: _Iterable[int] | None = ...,
        num_output_tokens: int | None = ...,
        sampling: SamplingParams | _Mapping | None = ...,
    ) -> None: ...

class ScheduledChunk(_message.Message):
    __slots__ = ("new_block_ids", "num_tokens", "request_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEW_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    num_tokens: int
    new_block_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(
        self,
        request_id: str | None = ...,
        num_tokens: int | None = ...,
        new_block_ids: _Iterable[int] | None = ...,
    ) -> None: ...

class StepPlan(_message.Message):
    __slots__ = ("chunks", "freed_request_ids", "new_requests", "step_id")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    FREED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    new_requests: _containers.RepeatedCompositeFieldContainer[NewRequest]
    chunks: _containers.RepeatedCompositeFieldContainer[ScheduledChunk]
    freed_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(
        self,
        step_id: int | None = ...,
        new_requests: _Iterable[NewRequest | _Mapping] | None = ...,
        chunks: _Iterable[ScheduledChunk | _Mapping] | None = ...,
        freed_request_ids: _Iterable[str] | None = ...,
    ) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("error", "execution_ms", "request_ids", "step_id", "token_ids")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    execution_ms: float
    error: str
    def __init__(
        self,
        step_id: int | None = ...,
        request_ids: _Iterable[str] | None = ...,
        token_ids: _Iterable[int] | None = ...,
        execution_ms: float | None = ...,
        error: str | None = ...,
    ) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("max_iterations",)
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    max_iterations: int
    def __init__(self, max_iterations: int | None = ...) -> None: ...

class IterationStats(_message.Message):
    __slots__ = (
        "batch_size",
        "execution_ms",
        "inter_batch_delay_ms",
        "num_decode_tokens",
        "num_prefill_tokens",
        "persist_ms",
        "policy",
        "scheduling_ms",
        "start_time",
        "step_id",
        "token_budget",
    )
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_DECODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_MS_FIELD_NUMBER: _ClassVar[int]
    PERSIST_MS_FIELD_NUMBER: _ClassVar[int]
    INTER_BATCH_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    batch_size: int
    num_prefill_tokens: int
    num_decode_tokens: int
    execution_ms: float
    scheduling_ms: float
    persist_ms: float
    inter_batch_delay_ms: float
    policy: str
    token_budget: int
    start_time: float
    def __init__(
        self,
        step_id: int | None = ...,
        batch_size: int | None = ...,
        num_prefill_tokens: int | None = ...,
        num_decode_tokens: int | None = ...,
        execution_ms: float | None = ...,
        scheduling_ms: float | None = ...,
        persist_ms: float | None = ...,
        inter_batch_delay_ms: float | None = ...,
        policy: str | None = ...,
        token_budget: int | None = ...,
        start_time: float | None = ...,
    ) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = (
        "iterations",
        "num_finished",
        "num_free_kv_blocks",
        "num_running",
        "num_total_kv_blocks",
        "num_waiting",
        "num_workers",
        "policy",
        "token_budget",
    )
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_FREE_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOTAL_KV_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    NUM_FINISHED_FIELD_NUMBER: _ClassVar[int]
    iterations: _containers.RepeatedCompositeFieldContainer[IterationStats]
    num_waiting: int
    num_running: int
    num_free_kv_blocks: int
    num_total_kv_blocks: int
    num_workers: int
    policy: str
    token_budget: int
    num_finished: int
    def __init__(
        self,
        iterations: _Iterable[IterationStats | _Mapping] | None = ...,
        num_waiting: int | None = ...,
        num_running: int | None = ...,
        num_free_kv_blocks: int | None = ...,
        num_total_kv_blocks: int | None = ...,
        num_workers: int | None = ...,
        policy: str | None = ...,
        token_budget: int | None = ...,
        num_finished: int | None = ...,
    ) -> None: ...
