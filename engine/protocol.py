"""OpenAI's wire protocol for the engine: request bodies, prompt shapes, the error shape and
the two ``logprobs`` layouts (legacy completions and chat). No HTTP framework here."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

_ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}

# Every integer field is bounded to int64 at parse time (a 400 ``invalid_value``, never a
# torch overflow): ``seed`` reaches ``torch.Generator.manual_seed`` as ``seed + choice``.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int64(default: int | None = None) -> Any:
    return Field(default=default, ge=INT64_MIN, le=INT64_MAX)


class OpenAIError(Exception):
    """An error the API reports in OpenAI's shape with ``status``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """``{"error": {...}}`` with OpenAI's fields, at HTTP ``status``."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


# Fields the engine does not read, whatever their value: they change nothing about the
# output (an end-user id, tags, storage and tier hints meant for OpenAI's platform). The
# end-user id (``user``) is only the sticky key of an alias's pick (``routes_completions``).
HARMLESS_FIELDS = frozenset(
    {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
)
# Fields the engine does not implement, accepted only at the value that means "off".
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "best_of": (1,),
    "suffix": ("",),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none",),
    "function_call": ("none",),
}
CHAT_ROLES = ("system", "user", "assistant")


class CommonRequest(BaseModel):
    """Fields completions and chat share (OpenAI names and defaults). Other fields are
    kept (``model_extra``) so that ``refuse_unsupported`` can name them."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = _int64()
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = _int64(1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = _int64()
    ignore_eos: bool = False

    def refuse_unsupported(self) -> None:
        """``OpenAIError`` 400 ``unsupported_parameter`` naming the first field this engine
        would otherwise ignore (``tools``, ``response_format`` other than text, penalties,
        vendor extensions...). ``null`` counts as absent; ``HARMLESS_FIELDS`` pass."""
        for name, value in sorted((self.model_extra or {}).items()):
            if value is None or name in HARMLESS_FIELDS or value in NEUTRAL_VALUES.get(name, ()):
                continue
            raise OpenAIError(
                400,
                f"Unsupported parameter: '{name}' is not supported by this engine.",
                param=name,
                code="unsupported_parameter",
            )


class CompletionRequest(CommonRequest):
    """``POST /v1/completions``; ``prompt`` is checked by ``normalize_prompts``."""

    prompt: Any
    logprobs: int | None = _int64()
    echo: bool = False


class ChatRequest(CommonRequest):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = _int64()
    logprobs: bool = False
    top_logprobs: int | None = _int64()


def normalize_prompts(prompt: Any, encode: Any) -> list[list[int]]:
    """OpenAI's four prompt shapes (str, [str], [int], [[int]]) as token-id lists."""
    if isinstance(prompt, str):
        return [encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [encode(p) for p in prompt]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(
            isinstance(p, list)
            and p
            and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
            for p in prompt
        ):
            return [list(p) for p in prompt]
    raise OpenAIError(
        400,
        "prompt must be a string, a list of strings, a list of token ids or a list of "
        "token-id lists (non-empty)",
        param="prompt",
    )


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``messages`` as ``{"role", "content"}`` text pairs; 400 for a role other than
    ``CHAT_ROLES`` (``tool`` included: tools are not supported) or a message field other
    than ``role``, ``content`` and ``name``."""
    if not messages:
        raise OpenAIError(400, "messages must not be empty", param="messages")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise OpenAIError(
                400,
                f"Unsupported role {role!r} in messages[{i}]: expected one of "
                f"{', '.join(CHAT_ROLES)}.",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        for key in sorted(set(message) - {"role", "content", "name"}):
            if message[key] is not None:
                raise OpenAIError(
                    400,
                    f"Unsupported parameter: 'messages[{i}].{key}' is not supported by this "
                    "engine.",
                    param=f"messages[{i}].{key}",
                    code="unsupported_parameter",
                )
        out.append({"role": role, "content": message_text(message.get("content"))})
    return out


def message_text(content: Any) -> str:
    """A chat message's content as text (a string, or a list of text parts)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise OpenAIError(400, "only text content parts are supported", param="messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise OpenAIError(400, "message content must be a string or a list of parts", param="messages")


def completion_logprobs(tokens: list[Any], text_of: Any) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object for ``SampledToken`` values."""
    out: dict[str, Any] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    offset = 0
    for t in tokens:
        text = text_of(t.token_id)
        out["tokens"].append(text)
        out["token_logprobs"].append(t.logprob)
        top: dict[str, float] = {}
        for i, lp in t.top:  # most likely first; tokens rendering alike keep the best
            top.setdefault(text_of(i), lp)
        out["top_logprobs"].append(top if t.top else None)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def chat_logprobs(tokens: list[Any], text_of: Any) -> dict[str, Any]:
    """The chat ``logprobs`` object (``content``: one entry per token with top alternatives)."""
    content = []
    for t in tokens:
        text = text_of(t.token_id)
        top = [
            {"token": text_of(i), "logprob": lp, "bytes": list(text_of(i).encode())}
            for i, lp in t.top
        ]
        content.append(
            {"token": text, "logprob": t.logprob, "bytes": list(text.encode()), "top_logprobs": top}
        )
    return {"content": content}
