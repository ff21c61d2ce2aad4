"""``POST /v1/completions`` and ``POST /v1/chat/completions``: OpenAI bodies in, one
``GenerationRequest`` per choice to the scheduler, OpenAI responses (or SSE chunks) out.

Each route takes the engine through ``RuntimeDep``; nothing here knows about residency or
batching.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.aliases import ROUTE_KEY_HEADER, SERVED_MODEL_HEADER, Resolution
from engine.dependencies import CallerDep, RuntimeDep
from engine.metering import metered
from engine.protocol import (
    ChatRequest,
    CommonRequest,
    CompletionRequest,
    OpenAIError,
    chat_logprobs,
    chat_messages,
    completion_logprobs,
    error_response,
    normalize_prompts,
)
from engine.runtime import EngineRuntime
from engine.sampling import SamplingParams
from engine.scheduler import (
    GenerationRequest,
    InvalidPrompt,
    Overloaded,
    RequestTooLarge,
    TokenDelta,
    check_token_ids,
)
from engine.tenancy import Caller
from engine.threads import serial

log = structlog.get_logger(__name__)

router = APIRouter()

# How often a running request checks that its client is still there (tokens flowing or not).
DISCONNECT_POLL_SECONDS = 0.1


@router.post("/v1/completions")
async def completions(
    body: CompletionRequest, request: Request, runtime: RuntimeDep, caller: CallerDep
) -> Any:
    target = resolve(runtime, caller, body.model, route_key(request, body))
    adapter = target.served
    body.refuse_unsupported()
    if body.echo:
        raise OpenAIError(400, "echo is not supported", param="echo")
    prompts = normalize_prompts(body.prompt, runtime.tokenizer.encode)  # type: ignore[attr-defined]
    check_prompts(runtime, prompts, "prompt")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    params = sampling(runtime, body, max_tokens, body.logprobs, max(len(p) for p in prompts))
    if (refused := admit(runtime, prompts, params, body.n)) is not None:
        return refused
    reply = Reply.start(runtime, body, len(prompts), chat=False, logprobs=body.logprobs is not None)
    stream = generate(request, runtime, adapter, prompts, params, body.n)
    metered_stream = _metered(runtime, caller, target, stream, reply)
    return served_as(runtime, target, await respond(runtime, reply, metered_stream))


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatRequest, request: Request, runtime: RuntimeDep, caller: CallerDep
) -> Any:
    target = resolve(runtime, caller, body.model, route_key(request, body))
    adapter = target.served
    body.refuse_unsupported()
    messages = chat_messages(body.messages)
    try:
        ids = runtime.tokenizer.encode_chat(messages, add_generation_prompt=True)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise OpenAIError(400, str(exc), param="messages") from exc
    check_prompts(runtime, [ids], "messages")
    max_tokens = body.max_completion_tokens or body.max_tokens
    top = body.top_logprobs or 0
    params = sampling(runtime, body, max_tokens, top if body.logprobs else None, len(ids))
    if (refused := admit(runtime, [ids], params, body.n)) is not None:
        return refused
    reply = Reply.start(runtime, body, 1, chat=True, logprobs=body.logprobs)
    stream = generate(request, runtime, adapter, [ids], params, body.n)
    metered_stream = _metered(runtime, caller, target, stream, reply)
    return served_as(runtime, target, await respond(runtime, reply, metered_stream))


def _metered(
    runtime: EngineRuntime,
    caller: Caller,
    target: Resolution,
    stream: AsyncIterator[tuple[int, TokenDelta]],
    reply: Reply,
) -> AsyncIterator[tuple[int, TokenDelta]]:
    """``stream`` counted for the caller's tenant and the adapter's (and alias arm's)
    metrics as it finishes."""
    return metered(
        runtime.meter,
        caller,
        target.served,
        stream,
        reply.n_choices,
        runtime.adapter_metrics,
        runtime.model_name,
        alias=target.alias,
    )


def served_as(runtime: EngineRuntime, target: Resolution, result: Any) -> Any:
    """``result`` with the ``x-lorafleet-served-model`` header: the coordinates served (the
    alias's pick, exact coordinates as asked, or the base model's name)."""
    response = result if isinstance(result, Response) else JSONResponse(result)
    response.headers[SERVED_MODEL_HEADER] = target.served or runtime.model_name
    return response


# -- admission -------------------------------------------------------------------------------


def resolve(
    runtime: EngineRuntime, caller: Caller, model: str, key: str | None = None
) -> Resolution:
    """What ``model`` serves: the base model (``served`` None), an adapter, or one target of
    an alias (``ns/name@alias``, the bare ``ns/name`` = ``@latest``; sticky by ``key``);
    404 ``model_not_found`` for a name that is not served (saying why when this engine
    refused the adapter) or that belongs to a namespace ``caller`` may not read (the same
    answer as a missing one, aliases included)."""
    caller.require_model(model, runtime.model_name)
    if model == runtime.model_name:
        return Resolution(None)
    return runtime.catalog.resolve(model, key)


def route_key(request: Request, body: CommonRequest) -> str | None:
    """The sticky-routing key: the ``x-lorafleet-route-key`` header, else OpenAI's ``user``."""
    header = request.headers.get(ROUTE_KEY_HEADER)
    if header:
        return header
    user = (body.model_extra or {}).get("user")
    return user if isinstance(user, str) and user else None


def check_prompts(runtime: EngineRuntime, prompts: list[list[int]], param: str) -> None:
    """400 for a token id outside the vocabulary, before anything reaches the model."""
    for ids in prompts:
        try:
            check_token_ids(ids, runtime.scheduler.vocab_size)
        except InvalidPrompt as exc:
            raise OpenAIError(400, str(exc), param=param, code="invalid_value") from exc


def sampling(
    runtime: EngineRuntime,
    body: CommonRequest,
    max_tokens: int | None,
    logprobs: int | None,
    prompt_len: int,
) -> SamplingParams:
    """The request's ``SamplingParams``; 400 when ``n`` or the token budget is out of range
    (``context_length_exceeded`` when prompt plus completion exceed ``max_seq_len``)."""
    if body.n < 1 or body.n > 16:
        raise OpenAIError(400, "n must be between 1 and 16", param="n")
    budget = runtime.max_seq_len - prompt_len
    if budget <= 0 or (max_tokens is not None and max_tokens > budget):
        asked = prompt_len + (max_tokens or 0)
        raise OpenAIError(
            400,
            f"This model's maximum context length is {runtime.max_seq_len} tokens. However, "
            f"you requested {asked} tokens ({prompt_len} in the prompt, {max_tokens or 0} "
            f"in the completion).",
            param="max_tokens",
            code="context_length_exceeded",
        )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    params = SamplingParams(
        max_tokens=budget if max_tokens is None else max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop,
        logprobs=logprobs,
        ignore_eos=body.ignore_eos,
    )
    params.validate()
    return params


def admit(
    runtime: EngineRuntime, prompts: list[list[int]], params: SamplingParams, n: int
) -> Response | None:
    """The scheduler's admission for ``prompts x n`` sequences: 400 ``request_too_large``
    above its per-request token limit (``RequestTooLarge``), or this 429 ``overloaded``
    with ``Retry-After`` when its waiting queue is full; None to go ahead."""
    tokens = n * sum(len(p) + params.max_tokens for p in prompts)
    try:
        runtime.scheduler.check_request(len(prompts) * n, tokens)
    except RequestTooLarge as exc:
        raise OpenAIError(400, str(exc), code="request_too_large") from exc
    except Overloaded as exc:
        headers = {"Retry-After": str(exc.retry_after)}
        return error_response(429, str(exc), None, "overloaded", headers=headers)
    return None


# -- generation ------------------------------------------------------------------------------


async def generate(
    request: Request,
    runtime: EngineRuntime,
    adapter: str | None,
    prompts: list[list[int]],
    params: SamplingParams,
    n: int,
) -> AsyncIterator[tuple[int, TokenDelta]]:
    """Submit ``len(prompts) * n`` sequences; yield ``(choice index, delta)`` until all are
    finished. Leaving early (client gone) cancels whatever is still running."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, TokenDelta]] = asyncio.Queue()
    reqs: list[GenerationRequest] = []
    group = uuid.uuid4().hex  # the scheduler shares rows fairly between groups

    def sink_for(index: int) -> Callable[[TokenDelta], None]:
        return lambda delta: loop.call_soon_threadsafe(queue.put_nowait, (index, delta))

    try:
        for i, ids in enumerate(prompts):
            for j in range(n):
                p = params if params.seed is None else replace(params, seed=params.seed + j)
                req = GenerationRequest(ids, p, sink_for(i * n + j), adapter=adapter, group=group)
                # The executor thread runs torch on one thread: loading an adapter there
                # must not start a second OpenMP team (engine.threads).
                await loop.run_in_executor(None, serial(runtime.scheduler.submit), req)
                reqs.append(req)
        remaining = len(reqs)
        next_poll = loop.time() + DISCONNECT_POLL_SECONDS
        while remaining:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_SECONDS)
            except TimeoutError:
                item = None
            if loop.time() >= next_poll:  # whether or not tokens flow
                next_poll = loop.time() + DISCONNECT_POLL_SECONDS
                if await request.is_disconnected():
                    log.info("client_disconnected", requests=len(reqs))
                    return
            if item is None:
                continue
            index, delta = item
            if delta.finish_reason is not None:
                remaining -= 1
            yield index, delta
    finally:
        for req in reqs:
            if not req.finished:
                req.cancel()


# -- responses -------------------------------------------------------------------------------


@dataclass
class Reply:
    """What one response (or SSE stream) is built from: its id, object type and shape."""

    body: CommonRequest
    rid: str
    created: int
    chat: bool
    want_logprobs: bool
    n_choices: int
    token_text: Callable[[int], str]
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(
        cls,
        runtime: EngineRuntime,
        body: CommonRequest,
        n_prompts: int,
        *,
        chat: bool,
        logprobs: bool,
    ) -> Reply:
        """A reply for ``n_prompts * body.n`` choices, timed from now."""
        decode = runtime.tokenizer.decode  # type: ignore[attr-defined]
        return cls(
            body=body,
            rid=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
            created=int(time.time()),
            chat=chat,
            want_logprobs=logprobs,
            n_choices=n_prompts * body.n,
            token_text=lambda token_id: decode([token_id], skip_special_tokens=False),
        )

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def envelope(self, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """The fields every response and chunk carries around its ``choices``."""
        return {
            "id": self.rid,
            "object": obj,
            "created": self.created,
            "model": self.body.model,
            "choices": choices,
            **extra,
        }

    def choice(
        self, index: int, text: str, tokens: list[Any], finish: str | None, *, delta: bool
    ) -> dict[str, Any]:
        """One choice (a final one, or a streamed ``delta``) in the endpoint's layout."""
        if self.chat:
            lp = chat_logprobs(tokens, self.token_text) if self.want_logprobs else None
            if delta:
                content = {"content": text} if text else {}
                return {"index": index, "delta": content, "logprobs": lp, "finish_reason": finish}
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "logprobs": lp, "finish_reason": finish}
        lp = completion_logprobs(tokens, self.token_text) if self.want_logprobs else None
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}


async def respond(
    runtime: EngineRuntime, reply: Reply, stream: AsyncIterator[tuple[int, TokenDelta]]
) -> Any:
    """The whole response, or (``stream: true``) an SSE response whose first delta has
    already arrived, so a 404/429 surfaces before the 200 is sent."""
    stream = first_token_timed(runtime, reply, stream)
    if reply.body.stream:
        first = await anext(stream, None)
        return StreamingResponse(sse(reply, first, stream), media_type="text/event-stream")
    n = reply.n_choices
    texts = [""] * n
    tokens: list[list[Any]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    async for index, delta in stream:
        texts[index] += delta.text
        tokens[index] += delta.tokens
        if delta.finish_reason is not None:
            if delta.finish_reason == "error":
                raise OpenAIError(500, delta.error or "generation failed", code="engine_error")
            finish[index] = delta.finish_reason
            _count(usage, delta)
    if any(f is None for f in finish):
        return Response(status_code=499)  # the client went away
    endpoint = "chat" if reply.chat else "completions"
    runtime.metrics.latency.labels(endpoint).observe(time.perf_counter() - reply.started)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    choices = [reply.choice(i, texts[i], tokens[i], finish[i], delta=False) for i in range(n)]
    return reply.envelope(reply.object, choices, usage=usage)


async def first_token_timed(
    runtime: EngineRuntime, reply: Reply, stream: AsyncIterator[tuple[int, TokenDelta]]
) -> AsyncIterator[tuple[int, TokenDelta]]:
    """``stream`` unchanged; observes time-to-first-token when the first delta carrying a
    token arrives (any choice; never for a request that produced none)."""
    endpoint = "chat" if reply.chat else "completions"
    timed = False
    try:
        async for item in stream:
            if not timed and item[1].tokens:
                timed = True
                elapsed = time.perf_counter() - reply.started
                runtime.metrics.time_to_first_token.labels(endpoint).observe(elapsed)
            yield item
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def sse(
    reply: Reply,
    first: tuple[int, TokenDelta] | None,
    rest: AsyncIterator[tuple[int, TokenDelta]],
) -> AsyncIterator[str]:
    """The SSE body: a role chunk (chat), one chunk per delta with text or a finish reason,
    an error event for a failed choice, the usage chunk when asked, then ``[DONE]``."""
    chunk_obj = reply.object + ".chunk" if reply.chat else reply.object
    usage = {"prompt_tokens": 0, "completion_tokens": 0}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps(reply.envelope(chunk_obj, choices, **extra))}\n\n"

    if reply.chat:
        role = {"delta": {"role": "assistant", "content": ""}, "logprobs": None}
        yield chunk([{"index": i, **role, "finish_reason": None} for i in range(reply.n_choices)])
    try:
        async for index, delta in _chain([first] if first else [], rest):
            if delta.finish_reason == "error":
                err = {"message": delta.error, "type": "server_error", "param": None}
                yield f"data: {json.dumps({'error': {**err, 'code': 'engine_error'}})}\n\n"
                continue
            if delta.finish_reason is not None:
                _count(usage, delta)
            if not delta.text and delta.finish_reason is None:
                continue
            yield chunk(
                [reply.choice(index, delta.text, delta.tokens, delta.finish_reason, delta=True)]
            )
        if (reply.body.stream_options or {}).get("include_usage"):
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            yield chunk([], usage=usage)
        yield "data: [DONE]\n\n"
    finally:
        await rest.aclose()  # cancels unfinished requests when the client disconnects


def _count(usage: dict[str, int], delta: TokenDelta) -> None:
    usage["prompt_tokens"] += delta.prompt_tokens
    usage["completion_tokens"] += delta.completion_tokens


async def _chain(first: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in first:
        yield item
    async for item in rest:
        yield item
