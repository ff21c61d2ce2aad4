"""The OpenAI-compatible HTTP API of one engine (NIM's shape).

``model`` in a request selects the base model or any servable adapter. Errors come back in
OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``: 404 unknown model,
400 bad parameters, 429 when the CPU LoRA cache cannot take one more active adapter.
The server only translates HTTP <-> ``GenerationRequest``; residency is the cache's job and
batching the scheduler's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.protocol import (
    ChatRequest,
    CommonRequest,
    CompletionRequest,
    OpenAIError,
    chat_logprobs,
    completion_logprobs,
    error_response,
    message_text,
    normalize_prompts,
)
from engine.sampling import InvalidSamplingParams, SamplingParams
from engine.scheduler import GenerationRequest, InvalidPrompt, TokenDelta, check_token_ids
from store.errors import LorafleetError

if TYPE_CHECKING:
    from engine.cli import EngineRuntime

log = structlog.get_logger(__name__)


def create_app(runtime: EngineRuntime, *, manage_runtime: bool = True) -> FastAPI:
    """The FastAPI app over ``runtime``. With ``manage_runtime`` the app's lifespan starts
    and stops the runtime (model thread, refresh subscriber, periodic reconciliation)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            await asyncio.get_running_loop().run_in_executor(None, runtime.start)
        try:
            yield
        finally:
            if manage_runtime:
                runtime.stop()

    app = FastAPI(title="lorafleet engine", lifespan=lifespan)
    tok = runtime.tokenizer

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(LorafleetError)
    async def _domain_error(_: Request, exc: LorafleetError) -> JSONResponse:
        status = 400 if exc.http_status == 422 else exc.http_status  # an unservable adapter
        param = "model" if status in (400, 404) else None
        return error_response(status, exc.message, param, exc.code)

    @app.exception_handler(InvalidSamplingParams)
    async def _bad_params(_: Request, exc: InvalidSamplingParams) -> JSONResponse:
        return error_response(400, exc.message, exc.param, "invalid_value")

    @app.exception_handler(InvalidPrompt)
    async def _bad_prompt(_: Request, exc: InvalidPrompt) -> JSONResponse:
        return error_response(400, str(exc), "prompt", "invalid_value")

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", []) if p != "body"]
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
        return error_response(400, message, loc[0] if loc else None, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (a body that is not JSON, an unknown route, a wrong
        # method) answer in OpenAI's shape too, so clients parse one error format.
        return error_response(exc.status_code, str(exc.detail), None, None)

    @app.get("/v1/health/live")
    async def live() -> dict[str, str]:
        return {"object": "health.response", "message": "live"}

    @app.get("/v1/health/ready")
    async def ready() -> JSONResponse:
        # 503 with the reason until a reconciliation succeeded; adapters the source offers
        # but this engine cannot serve are listed with their reason either way.
        body = {"object": "health.response", "message": "ready" if runtime.ready else "not ready"}
        if not runtime.ready:
            body["reason"] = runtime.not_ready_reason
        body["unservable"] = [
            {"model": name, "code": r.code, "reason": r.message}
            for name, r in sorted(runtime.catalog.refusals().items())
        ]
        return JSONResponse(body, status_code=200 if runtime.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        def card(model_id: str, parent: str | None) -> dict[str, Any]:
            return {
                "id": model_id,
                "object": "model",
                "created": runtime.created,
                "owned_by": "lorafleet",
                "root": runtime.model_name,
                "parent": parent,
                "permission": [],
            }

        data = [card(runtime.model_name, None)]
        data += [card(name, runtime.model_name) for name in runtime.catalog.names()]
        return {"object": "list", "data": data}

    def resolve(model: str) -> str | None:
        """None for the base model, else the adapter; 404 ``model_not_found`` for a name
        that is not served (saying why when this engine refused the adapter)."""
        if model == runtime.model_name:
            return None
        return runtime.catalog.get(model).name

    def check_prompts(prompts: list[list[int]], param: str) -> None:
        """400 for a token id outside the vocabulary, before anything reaches the model."""
        for ids in prompts:
            try:
                check_token_ids(ids, runtime.scheduler.vocab_size)
            except InvalidPrompt as exc:
                raise OpenAIError(400, str(exc), param=param, code="invalid_value") from exc

    def sampling(
        body: CommonRequest, max_tokens: int | None, logprobs: int | None, prompt_len: int
    ) -> SamplingParams:
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

    async def generate(
        request: Request,
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

        def sink_for(index: int) -> Any:
            return lambda delta: loop.call_soon_threadsafe(queue.put_nowait, (index, delta))

        try:
            for i, ids in enumerate(prompts):
                for j in range(n):
                    p = params if params.seed is None else replace(params, seed=params.seed + j)
                    req = GenerationRequest(ids, p, sink_for(i * n + j), adapter=adapter)
                    await loop.run_in_executor(None, runtime.scheduler.submit, req)
                    reqs.append(req)
            remaining = len(reqs)
            while remaining:
                try:
                    index, delta = await asyncio.wait_for(queue.get(), timeout=1.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        log.info("client_disconnected", requests=len(reqs))
                        return
                    continue
                if delta.finish_reason is not None:
                    remaining -= 1
                yield index, delta
        finally:
            for req in reqs:
                if not req.finished:
                    req.cancel()

    def token_text(token_id: int) -> str:
        return tok.decode([token_id], skip_special_tokens=False)

    async def respond(
        request: Request,
        body: CommonRequest,
        adapter: str | None,
        prompts: list[list[int]],
        params: SamplingParams,
        *,
        chat: bool,
        want_logprobs: bool,
    ) -> Any:
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        endpoint = "chat" if chat else "completions"
        n_choices = len(prompts) * body.n
        started = time.perf_counter()
        stream = generate(request, adapter, prompts, params, body.n)
        if body.stream:
            first = await anext(stream, None)  # surfaces 404/429 before the 200 is sent
            return StreamingResponse(
                sse(rid, created, obj, body, first, stream, chat, want_logprobs, n_choices),
                media_type="text/event-stream",
            )
        texts = [""] * n_choices
        tokens: list[list[Any]] = [[] for _ in range(n_choices)]
        finish: list[str | None] = [None] * n_choices
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        async for index, delta in stream:
            texts[index] += delta.text
            tokens[index] += delta.tokens
            if delta.finish_reason is not None:
                if delta.finish_reason == "error":
                    raise OpenAIError(500, delta.error or "generation failed", code="engine_error")
                finish[index] = delta.finish_reason
                usage["prompt_tokens"] += delta.prompt_tokens
                usage["completion_tokens"] += delta.completion_tokens
        if any(f is None for f in finish):
            return Response(status_code=499)  # the client went away
        runtime.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choices = []
        for i in range(n_choices):
            if chat:
                lp = chat_logprobs(tokens[i], token_text) if want_logprobs else None
                message = {"role": "assistant", "content": texts[i]}
                choices.append(
                    {"index": i, "message": message, "logprobs": lp, "finish_reason": finish[i]}
                )
            else:
                lp = completion_logprobs(tokens[i], token_text) if want_logprobs else None
                choices.append(
                    {"index": i, "text": texts[i], "logprobs": lp, "finish_reason": finish[i]}
                )
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": usage,
        }

    async def sse(
        rid: str,
        created: int,
        obj: str,
        body: CommonRequest,
        first: tuple[int, TokenDelta] | None,
        rest: AsyncIterator[tuple[int, TokenDelta]],
        chat: bool,
        want_logprobs: bool,
        n_choices: int,
    ) -> AsyncIterator[str]:
        chunk_obj = obj + ".chunk" if chat else obj
        usage = {"prompt_tokens": 0, "completion_tokens": 0}

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            payload = {
                "id": rid,
                "object": chunk_obj,
                "created": created,
                "model": body.model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n"

        if chat:
            yield chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    for i in range(n_choices)
                ]
            )
        try:
            items = [first] if first else []
            async for item in _chain(items, rest):
                index, delta = item
                if delta.finish_reason == "error":
                    err = {
                        "message": delta.error,
                        "type": "server_error",
                        "param": None,
                        "code": "engine_error",
                    }
                    yield f"data: {json.dumps({'error': err})}\n\n"
                    continue
                if delta.finish_reason is not None:
                    usage["prompt_tokens"] += delta.prompt_tokens
                    usage["completion_tokens"] += delta.completion_tokens
                if not delta.text and delta.finish_reason is None:
                    continue
                if chat:
                    lp = chat_logprobs(delta.tokens, token_text) if want_logprobs else None
                    delta_body = {"content": delta.text} if delta.text else {}
                    choice = {"index": index, "delta": delta_body, "logprobs": lp}
                else:
                    lp = completion_logprobs(delta.tokens, token_text) if want_logprobs else None
                    choice = {"index": index, "text": delta.text, "logprobs": lp}
                choice["finish_reason"] = delta.finish_reason
                yield chunk([choice])
            if (body.stream_options or {}).get("include_usage"):
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                yield chunk([], usage=usage)
            yield "data: [DONE]\n\n"
        finally:
            await rest.aclose()  # cancels unfinished requests when the client disconnects

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        adapter = resolve(body.model)
        if body.echo:
            raise OpenAIError(400, "echo is not supported", param="echo")
        prompts = normalize_prompts(body.prompt, tok.encode)
        check_prompts(prompts, "prompt")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        params = sampling(body, max_tokens, body.logprobs, max(len(p) for p in prompts))
        runtime.metrics.requests.labels("completions", "accepted").inc()
        return await respond(
            request,
            body,
            adapter,
            prompts,
            params,
            chat=False,
            want_logprobs=body.logprobs is not None,
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        adapter = resolve(body.model)
        if not body.messages:
            raise OpenAIError(400, "messages must not be empty", param="messages")
        messages = [
            {"role": str(m.get("role", "user")), "content": message_text(m.get("content"))}
            for m in body.messages
        ]
        try:
            ids = tok.encode_chat(messages, add_generation_prompt=True)
        except ValueError as exc:
            raise OpenAIError(400, str(exc), param="messages") from exc
        check_prompts([ids], "messages")
        max_tokens = body.max_completion_tokens or body.max_tokens
        top = body.top_logprobs or 0
        params = sampling(body, max_tokens, top if body.logprobs else None, len(ids))
        runtime.metrics.requests.labels("chat", "accepted").inc()
        return await respond(
            request, body, adapter, [ids], params, chat=True, want_logprobs=body.logprobs
        )

    return app


async def _chain(first: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in first:
        yield item
    async for item in rest:
        yield item
