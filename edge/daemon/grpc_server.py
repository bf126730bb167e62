"""The KServe v2 gRPC endpoint, as Triton serves it (`inference.GRPCInferenceService`), so
`tritonclient.grpc` works unchanged: health, metadata, infer, the system shared-memory
extension and model load. The messages are tritonclient's own generated classes.

Requests go through the same App as HTTP's (queue, batching, shared memory); failures
carry HTTP's status mapped to the gRPC code a Triton client expects. The bearer token is
read from the `authorization` metadata. One connection (peer) is one client for the
queue's per-client share.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from edge.daemon.protocol import DTYPES, NAMES, InferRequest, ProtocolError, ShmInput, input_header, output_region, point_request, positive, region_ref
from edge.daemon.service import EXTENSIONS, SERVER_NAME, SERVER_VERSION, App, Reply, error_status
from edge.daemon.serving import Job, RequestTimeout
from edge.daemon.shm import RegionRef

log = logging.getLogger(__name__)

GRPC_CODES = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}
TYPED_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents", "INT8": "int_contents", "UINT8": "uint_contents"}


def parameters_of(message_parameters: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter as plain values."""
    values = {}
    for key, parameter in message_parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        values[key] = None if which is None else getattr(parameter, which)
    return values


def set_parameter(target: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        target[key].bool_param = value
    elif isinstance(value, int):
        target[key].int64_param = value
    elif isinstance(value, float):
        target[key].double_param = value
    else:
        target[key].string_param = str(value)


def infer_request(message: Any) -> InferRequest:
    """A ModelInferRequest in the protocol's terms: the same checks as an HTTP body."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs: give one per input, or none")
    if not message.inputs:
        raise ProtocolError("request needs 'inputs', a non-empty list")
    tensors: dict[str, np.ndarray] = {}
    shared: dict[str, ShmInput] = {}
    for k, tensor in enumerate(message.inputs):
        name, shape, dtype, count = input_header(tensor.name, list(tensor.shape), tensor.datatype)
        if name in tensors or name in shared:
            raise ProtocolError(f"input {name!r} given twice")
        ref = region_ref(parameters_of(tensor.parameters), f"input {name!r}")
        if ref is not None:
            shared[name] = ShmInput(ref, dtype.newbyteorder("="), shape)
        elif raw:
            tensors[name] = _raw_tensor(name, raw[k], shape, dtype, count)
        else:
            tensors[name] = _typed_tensor(name, tensor, shape, count)
    parameters = parameters_of(message.parameters)
    names, shm_outputs = _requested(message.outputs)
    point, budget = point_request(parameters)
    timeout = parameters.get("timeout")
    timeout_s = float(timeout) / 1e6 if positive(timeout) else None  # as over HTTP: a bool or a string is no timeout
    return InferRequest(message.id or None, tensors, parameters, names, set(), point, budget, timeout_s, shared, shm_outputs)


def _raw_tensor(name: str, data: bytes, shape: list[int], dtype: np.dtype[Any], count: int) -> np.ndarray:
    if len(data) != count * dtype.itemsize:
        raise ProtocolError(f"input {name!r}: {len(data)} raw bytes but shape {shape} of {NAMES[dtype.newbyteorder('=')]} needs {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def _typed_tensor(name: str, tensor: Any, shape: list[int], count: int) -> np.ndarray:
    field = TYPED_CONTENTS.get(tensor.datatype)
    values = getattr(tensor.contents, field) if field else []
    if len(values) != count:
        raise ProtocolError(f"input {name!r}: {len(values)} values in contents.{field or 'fp32_contents'} for shape {shape} ({count} needed)")
    try:
        return np.asarray(values, dtype=DTYPES[tensor.datatype]).reshape(shape)
    except (OverflowError, ValueError):
        raise ProtocolError(f"input {name!r}: its values do not fit {tensor.datatype}") from None


def _requested(outputs: Any) -> tuple[list[str] | None, dict[str, RegionRef]]:
    if not outputs:
        return None, {}
    names, shared = [], {}
    for output in outputs:
        names.append(output.name)
        ref = output_region(output.name, parameters_of(output.parameters))
        if ref is not None:
            shared[output.name] = ref
    return names, shared


def infer_response(model: str, request_id: str | None, reply: Reply) -> Any:
    """Raw bytes for every output not in shared memory, in order; those in shared memory
    come last (tritonclient pairs raw contents with outputs by position)."""
    response = pb.ModelInferResponse(model_name=model, model_version="1", id=request_id or "")
    for key, value in reply.parameters.items():
        set_parameter(response.parameters, key, value)
    ordered = sorted(reply.outputs, key=lambda n: n in reply.shared)
    for name in ordered:
        array = reply.outputs[name]
        output = response.outputs.add(name=name, datatype=NAMES[array.dtype], shape=list(array.shape))
        ref = reply.shared.get(name)
        if ref is None:
            response.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        else:
            set_parameter(output.parameters, "shared_memory_region", ref.region)
            set_parameter(output.parameters, "shared_memory_byte_size", int(array.nbytes))
            set_parameter(output.parameters, "shared_memory_offset", ref.offset)
    return response


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The service on grpc.aio: a request waiting for its batch holds no thread, so a
    refusal (a full queue, a client past its share) is answered at once however many
    calls are waiting."""

    def __init__(self, app: App) -> None:
        self.app = app

    # --- helpers -----------------------------------------------------------------------------

    async def _abort(self, context: Any, exc: Exception) -> None:
        status, message, _ = error_status(exc)
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            log.error("gRPC request failed", exc_info=exc)
        await context.abort(GRPC_CODES.get(status, grpc.StatusCode.INTERNAL), message)

    async def _authorize(self, context: Any) -> None:
        token = self.app.token
        if token is None:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, value = given.partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required (metadata authorization: Bearer <token>)")

    async def _guarded(self, context: Any, action: Callable[[], Any]) -> Any:
        """Run an action; an error it raises becomes the RPC's status."""
        try:
            return action()
        except Exception as exc:
            await self._abort(context, exc)

    # --- health and metadata -------------------------------------------------------------------

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.app.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        model = await self._guarded(context, lambda: self.app.model(request.name, request.version))
        return pb.ModelReadyResponse(ready=model.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        model = await self._guarded(context, lambda: self.app.model(request.name, request.version))
        doc = model.metadata()
        if "inputs" not in doc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {model.name!r} is not ready: {model.reason}")
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=doc["name"], versions=doc["versions"], platform=doc["platform"],
            inputs=[tensors(**t) for t in doc["inputs"]], outputs=[tensors(**t) for t in doc["outputs"]],
        )

    # --- inference ---------------------------------------------------------------------------

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        await self._authorize(context)
        started, status, name, reply = time.perf_counter(), HTTPStatus.OK, request.model_name, None
        self.app.begin()
        try:
            model = self.app.model(request.model_name, request.model_version)
            name = model.name
            parsed = infer_request(request)
            remaining = context.time_remaining()
            if remaining is not None and parsed.timeout_s is None:
                parsed.timeout_s = max(remaining, 1e-3)  # the client's deadline bounds the wait in the queue
            pending = self.app.submit(model, parsed, f"grpc:{context.peer()}", started)
            await answered(pending.job)
            reply = self.app.reply(pending)
            return infer_response(model.name, parsed.id, reply)
        except Exception as exc:
            status = error_status(exc)[0]
            await self._abort(context, exc)
        finally:
            self.app.end()
            if name in self.app.models:
                self.app.record(name, int(status), time.perf_counter() - started, reply)

    # --- the extensions ----------------------------------------------------------------------

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:
        await self._authorize(context)
        regions = await self._guarded(context, lambda: self.app.shm.status(request.name))
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(regions={r["name"]: status(**r) for r in regions})

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:
        await self._authorize(context)
        await self._guarded(context, lambda: self.app.shm.register(request.name, request.key, request.offset, request.byte_size))
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:
        await self._authorize(context)
        self.app.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._authorize(context)
        loop = asyncio.get_running_loop()  # loading engines takes a while: not on the loop's thread
        try:
            await loop.run_in_executor(None, self.app.reload, request.model_name)
        except Exception as exc:
            await self._abort(context, exc)
        return pb.RepositoryModelLoadResponse()


async def answered(job: Job) -> None:
    """Until the batcher answers the job (the answer stays on it), or its deadline passes."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)
    job.when_done(lambda: loop.call_soon_threadsafe(wake))
    try:
        await asyncio.wait_for(future, job.seconds_left())
    except asyncio.TimeoutError:
        raise RequestTimeout("no answer before the request's timeout") from None


class GrpcServer:
    """The gRPC endpoint on its own port and its own event-loop thread. Beyond `max_rpcs`
    calls in flight, new ones are refused at once (RESOURCE_EXHAUSTED)."""

    def __init__(self, app: App, host: str, port: int, max_rpcs: int) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc", daemon=True)
        self._thread.start()
        try:
            self.server, self.port = self._run(self._bind(app, host, port, max_rpcs))
        except BaseException:
            self._close_loop()
            raise

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def _bind(self, app: App, host: str, port: int, max_rpcs: int) -> tuple[Any, int]:
        limit = app.config.max_body_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit), ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_rpcs)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(app), server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return server, server.add_insecure_port(target)  # raises when the address is taken

    def start(self) -> None:
        self._run(self.server.start())

    def stop(self, grace_s: float) -> None:
        """Refuse new calls now; those running get `grace_s`; then the loop ends."""
        try:
            self._run(self.server.stop(grace_s))
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()
