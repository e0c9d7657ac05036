"""The Anthropic Messages wire format, translated to and from llm_call's OpenAI-shaped model.

No I/O here: :mod:`._messages` serves the endpoints with these functions.

Request (``POST /v1/messages``) to :func:`llm_call.acall` arguments:

====================================  ==================================================
Anthropic                             llm_call (OpenAI-shaped)
====================================  ==================================================
``system`` (string or text blocks)    a leading ``system`` message (blocks joined by
                                      a blank line; ``cache_control`` dropped)
``role: "system"`` messages (Claude   ``system`` messages in place
Code sends them mid-conversation)
text block                            ``{"type": "text"}`` part
image block, base64 or url source     ``{"type": "image_url"}`` part (a ``data:`` URL
                                      for base64)
document block, text source           a text part
assistant ``tool_use`` blocks         the message's ``tool_calls`` (``input`` as JSON text)
user ``tool_result`` blocks           ``role: "tool"`` messages (before the user's other
                                      content); ``is_error`` prefixes ``[tool error]``;
                                      images in a result follow as a user message
``thinking``/``redacted_thinking``    dropped (no route produces them)
tools (``name``, ``description``,     function tools (``strict`` kept: the schema is
``input_schema``, ``strict``)         enforced where the route can)
``tool_choice`` auto/any/tool/none    ``"auto"``/``"required"``/that function/``"none"``;
                                      ``disable_parallel_tool_use`` → ``parallel_tool_calls``
``stop_sequences``, ``top_p``,        ``stop``, ``top_p``, ``top_k`` (top_k goes to the
``top_k``, ``temperature``,           upstream as is: an OpenAI-compatible upstream that
``max_tokens``                        does not know it may refuse it)
``output_config.format`` (structured  ``response_format`` ``json_schema`` (named
outputs, ``json_schema``)             ``output``, not strict: OpenAI's strict mode refuses
                                      schemas with optional properties, which Anthropic
                                      takes); another format type is a 400
``metadata``, ``thinking``,           accepted and not used (``metadata.user_id`` is not
``context_management``,               forwarded upstream)
``output_config.effort``,
``service_tier``
llm_call extras (``validation``,      the same options as on chat completions (one parser:
``fallbacks`` ...)                    :func:`._schemas.call_options`)
====================================  ==================================================

A conversation that ends with an assistant message (a prefill) is sent as is where the route
continues it (``anthropic/...`` through LiteLLM) and is a 400 naming the route elsewhere: those
answer anew, and the client would join its prefill to a fresh answer.

Server tools (a tool with a ``type`` such as ``web_search_20250305``), PDF documents, file
sources and server-side blocks are refused with a 400 naming the block: no route can run them,
and ignoring them would answer a different question.

Stop reasons: ``length`` → ``max_tokens``, ``tool_calls`` → ``tool_use``, a reported stop
sequence → ``stop_sequence`` (with the string in ``stop_sequence``), otherwise ``end_turn``.
OpenAI's API does not say whether a stop sequence ended an answer (it strips it), so there an
answer cut by one is ``end_turn``; vLLM and SGLang say which (``Response.extra["stop_sequence"]``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from ._errors import HTTPFailure
from ._schemas import MAX_MESSAGES, MAX_TOOLS, LLMCallExtras, call_options

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "ERROR_TYPES",
    "CountTokensRequest",
    "MessagesRequest",
    "anthropic_error",
    "estimate_tokens",
    "message_body",
    "messages_call_args",
    "stop_fields",
    "stop_reason",
    "tool_input",
]


@with_config(ConfigDict(extra="allow"))
class AnthropicMessage(TypedDict):
    """An Anthropic message: content is a string or a list of content blocks."""

    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class _MessagesBase(LLMCallExtras):
    model: str | None = Field(default=None, min_length=1, description="Model or alias; default: the configured default_model")
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[dict[str, Any]] | None = Field(default=None, description="A string or a list of text blocks")
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS, description="Client tools: name, description, input_schema")
    tool_choice: dict[str, Any] | None = Field(default=None, description="auto, any, tool (with name) or none")
    thinking: dict[str, Any] | None = Field(default=None, description="Accepted, not used")
    metadata: dict[str, Any] | None = Field(default=None, description="Accepted, not forwarded")
    context_management: dict[str, Any] | None = Field(default=None, description="Accepted, not used")
    output_config: dict[str, Any] | None = Field(
        default=None, description="format (json_schema) becomes response_format; the rest is accepted, not used"
    )
    service_tier: str | None = None


class MessagesRequest(_MessagesBase):
    """``POST /v1/messages``: the Anthropic Messages request plus the llm_call extras."""

    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate")
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stream_rescue: Literal["off", "continue"] | None = Field(
        default=None,
        description="Streams only. \"continue\": a stream cut after its first text is continued by the next "
        "retry or fallback in the same text block; default \"off\": an error event ends the stream",
    )


class CountTokensRequest(_MessagesBase):
    """``POST /v1/messages/count_tokens``: what would be sent, without ``max_tokens``."""


#: Anthropic error type by HTTP status (anything else >= 500: api_error)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error(status: int, message: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}`` for a failure with this status."""
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if extra:
        body["llm_call"] = extra
    return body


def _bad(param: str, message: str) -> HTTPFailure:
    return HTTPFailure(400, message, param=param, code="invalid_value")


# -- request -------------------------------------------------------------------------------


def messages_call_args(req: MessagesRequest, settings: Settings) -> dict[str, Any]:
    """acall keyword arguments for a Messages request (400 naming the field on what cannot be served)."""
    kwargs: dict[str, Any] = {"model": req.model, "messages": internal_messages(req.system, req.messages)}
    if req.messages[-1]["role"] == "assistant":
        _check_prefill(req, settings)
    if req.max_tokens is not None:
        kwargs["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        kwargs["temperature"] = req.temperature
    if req.top_p is not None:
        kwargs["top_p"] = req.top_p
    if req.top_k is not None:
        kwargs["top_k"] = req.top_k
    if req.stop_sequences:
        kwargs["stop"] = list(req.stop_sequences)
    if req.tools:
        kwargs["tools"] = function_tools(req.tools)
    if req.tool_choice is not None:
        choice, parallel = _tool_choice(req.tool_choice)
        if choice is not None:
            kwargs["tool_choice"] = choice
        if parallel is not None:
            kwargs["parallel_tool_calls"] = parallel
    fmt = _response_format((req.output_config or {}).get("format"))
    if fmt is not None:
        kwargs["response_format"] = fmt
    kwargs.update(call_options(req, settings))
    return kwargs


_ROUTE_NAMES = {
    "openai": "the OpenAI API",
    "endpoint": "an OpenAI-compatible endpoint",
    "max": "the Claude Code CLI",
    "local": "the local model",
    "litellm": "LiteLLM",
}


def _check_prefill(req: MessagesRequest, settings: Settings) -> None:
    """A conversation that ends with an assistant message asks the model to continue that text
    (a prefill). Only Anthropic's own API does that (``anthropic/...`` through LiteLLM); every
    other route would answer the conversation anew, and the client, which joins its prefill and
    the answer, would get a different text than it asked for (``{`` + a fresh JSON object). So a
    400 naming the route, for the model and each fallback and escalation model."""
    from ..config import DEFAULT_MODEL
    from ..errors import ConfigError
    from ..providers.router import resolve, takes_prefill

    where = f"messages.{len(req.messages) - 1}"
    for param, name in [("model", req.model or settings.default_model or DEFAULT_MODEL),
                        *((f"fallbacks.{i}", m) for i, m in enumerate(req.fallbacks or ())),
                        *((f"escalate.{i}", m) for i, m in enumerate(req.escalate or ()))]:
        try:
            route = resolve(name, settings)
        except ConfigError:
            continue  # not a model: the call says so
        if takes_prefill(name, settings):
            continue
        raise HTTPFailure(
            400,
            f"{where}: the conversation ends with an assistant message (a prefill), which {param} {name!r} "
            f"({_ROUTE_NAMES.get(route.kind, route.kind)}, route {route.model!r}) cannot continue: it would "
            "answer anew instead. Only Anthropic models (anthropic/... through LiteLLM) continue a prefill; "
            "elsewhere end the conversation with a user message (and put the instruction there)",
            param=where,
            code="prefill_not_supported",
        )


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """``output_config.format`` (structured outputs) as a chat ``response_format``.

    Dropping it would answer a different question: the client (``messages.parse``) expects JSON
    of its schema and gets whatever text the model writes.
    """
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise _bad("output_config.format.type", f"output_config.format type {kind!r} is not supported (json_schema is)")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise _bad("output_config.format.schema", "output_config.format needs a schema object (a JSON schema)")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def system_text(system: str | list[dict[str, Any]] | None, param: str = "system") -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for i, block in enumerate(system):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f"{param}.{i}", f"{param}[{i}] must be a text block ({{\"type\": \"text\", \"text\": ...}})")
        texts.append(block["text"])
    return "\n\n".join(texts)


def internal_messages(system: str | list[dict[str, Any]] | None, messages: Iterable[AnthropicMessage]) -> list[dict[str, Any]]:
    """The conversation as OpenAI-shaped messages (see the table in the module docstring)."""
    out: list[dict[str, Any]] = []
    text = system_text(system)
    if text:
        out.append({"role": "system", "content": text})
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        where = f"messages.{i}.content"
        if role == "system":
            out.append({"role": "system", "content": system_text(content, where)})
        elif isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "assistant":
            out.append(_assistant(content, where))
        else:
            out.extend(_user(content, where))
    return out


def _assistant(blocks: list[dict[str, Any]], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            name, call_id = block.get("name"), block.get("id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise _bad(f"{where}.{j}", f"{where}[{j}]: a tool_use block needs a string id and name")
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _unsupported(kind, f"{where}.{j}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str):
                raise _bad(f"{where}.{j}.tool_use_id", f"{where}[{j}]: a tool_result block needs a string tool_use_id")
            text, images = _result_content(block.get("content"), f"{where}.{j}.content")
            if block.get("is_error"):
                text = f"[tool error] {text}"
            results.append({"role": "tool", "tool_call_id": call_id, "content": text})
            parts.extend(images)
        else:
            parts.append(_part(block, f"{where}.{j}"))
    out = results
    if parts:
        if all(p["type"] == "text" for p in parts) and len(parts) == 1:
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _result_content(content: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise _bad(where, f"{where} must be a string or a list of text and image blocks")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for k, block in enumerate(content):
        if not isinstance(block, dict):
            raise _bad(f"{where}.{k}", f"{where}[{k}] must be a content block object")
        part = _part(block, f"{where}.{k}")
        if part["type"] == "text":
            texts.append(part["text"])
        else:
            images.append(part)
    return "\n".join(texts), images


def _part(block: dict[str, Any], where: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise _bad(f"{where}.text", f"{where}: a text block needs a string text")
        return {"type": "text", "text": text}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block.get("source"), f"{where}.source")}}
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
            return {"type": "text", "text": source["data"]}
        raise _bad(f"{where}.source", f"{where}: only text documents (source type 'text') can be sent; "
                   "extract the text of a PDF and send it as a text block")
    raise _unsupported(kind, where)


def _image_url(source: Any, where: str) -> str:
    if isinstance(source, dict):
        kind = source.get("type")
        if kind == "base64" and isinstance(source.get("data"), str) and isinstance(source.get("media_type"), str):
            return f"data:{source['media_type']};base64,{source['data']}"
        if kind == "url" and isinstance(source.get("url"), str):
            return str(source["url"])
    raise _bad(where, f"{where}: an image source must be {{\"type\": \"base64\", \"media_type\", \"data\"}} "
               "or {\"type\": \"url\", \"url\"}")


def _unsupported(kind: Any, where: str) -> HTTPFailure:
    return _bad(f"{where}.type", f"{where}: content block type {kind!r} is not supported here "
                "(text, image, document with a text source, tool_use, tool_result and thinking are)")


def function_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _bad(f"tools.{i}.type", f"tools[{i}] is the server tool {kind!r}, which llm_call cannot run; "
                       "define it as a client tool (name, description, input_schema)")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"tools.{i}.name", f"tools[{i}] needs a name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"tools.{i}.input_schema", f"tools[{i}] ({name}) needs an input_schema object (a JSON schema)")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: dict[str, Any]) -> tuple[Any, bool | None]:
    kind = choice.get("type")
    parallel = None if choice.get("disable_parallel_tool_use") is None else not choice["disable_parallel_tool_use"]
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("tool_choice.name", "tool_choice of type 'tool' needs the tool's name")
        return {"type": "function", "function": {"name": name}}, parallel
    raise _bad("tool_choice.type", f"tool_choice type {kind!r} is not one of auto, any, tool, none")


# -- response ------------------------------------------------------------------------------

_STOP_REASONS = {
    "stop": "end_turn",
    "end_turn": "end_turn",
    "length": "max_tokens",
    "max_tokens": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "tool_use": "tool_use",
    "stop_sequence": "stop_sequence",
    "content_filter": "refusal",
    "refusal": "refusal",
}


def stop_fields(finish_reason: str | None, has_tool_calls: bool, details: dict[str, Any] | None) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)``: ``stop_sequence`` when the route named the stop string
    that ended the answer (``details["stop_sequence"]``: ``Response.extra`` or a last chunk's
    ``data``), else :func:`stop_reason` and ``None``."""
    reason = stop_reason(finish_reason, has_tool_calls)
    matched = (details or {}).get("stop_sequence")
    if reason == "end_turn" and isinstance(matched, str):
        return "stop_sequence", matched
    return reason, None


def stop_reason(finish_reason: str | None, has_tool_calls: bool) -> str:
    if finish_reason is None:
        return "tool_use" if has_tool_calls else "end_turn"
    reason = _STOP_REASONS.get(finish_reason, "end_turn")
    if has_tool_calls and reason == "end_turn":
        return "tool_use"
    return reason


def call_parts(call: Any) -> tuple[str, str, str]:
    """(id, name, arguments JSON text) of a tool call: an OpenAI dict or a ToolCall object."""
    if isinstance(call, dict):
        function = call.get("function") or {}
        return str(call.get("id") or ""), str(function.get("name") or ""), str(function.get("arguments") or "")
    return str(call.id or ""), str(call.name), str(call.arguments or "")


def tool_input(arguments: str, name: str, cut: bool = False) -> Any:
    """The ``input`` object of a tool call from its JSON text; MalformedResponse if it is not one.

    ``cut``: the answer hit ``max_tokens`` in the middle of the call. Anthropic answers that with
    ``stop_reason: "max_tokens"`` and the incomplete ``tool_use`` block (clients retry with more
    tokens), so the input is what the text holds up to the cut, as the SDK's stream parser reads
    it (an unfinished string or key is left out), not an upstream error.
    """
    from ..errors import MalformedResponse

    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    if value is None and cut:
        from pydantic_core import from_json

        try:
            value = from_json(arguments, allow_partial=True)
        except ValueError:
            value = None
        return value if isinstance(value, dict) else {}
    if not isinstance(value, dict):
        raise MalformedResponse(f"the model called tool {name!r} with arguments that are not a JSON object: {arguments[:200]!r}")
    return value


def usage_dict(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def message_body(resp: Any, message_id: str, extra: dict[str, Any] | None, refusal: str | None = None) -> dict[str, Any]:
    """The Anthropic ``message`` object for an llm_call Response; ``refusal``: the upstream's
    refusal (OpenAI's ``message.refusal``), answered as Anthropic answers one (its text, stop
    reason ``refusal``)."""
    content: list[dict[str, Any]] = []
    calls = list(resp.tool_calls or ())
    reason, sequence = stop_fields(resp.finish_reason, bool(calls), resp.extra)
    if refusal is not None and not resp.text and not calls:
        resp = dataclasses.replace(resp, text=refusal)
        reason = "refusal"
    if reason == "tool_use" and not calls:
        from ..errors import MalformedResponse

        raise MalformedResponse("the answer ended for tool calls but carried none", model=resp.model)
    if resp.text or not calls:
        content.append({"type": "text", "text": resp.text})
    for i, call in enumerate(calls):
        call_id, name, arguments = call_parts(call)
        # an upstream that gives no id: one per call (as the stream does), for tool_result to name
        content.append({"type": "tool_use", "id": call_id or f"toolu_{message_id}_{i}", "name": name, "input": tool_input(arguments, name, reason == "max_tokens")})
    body: dict[str, Any] = {
        "id": f"msg_{message_id}",
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_dict(resp.usage.prompt_tokens, resp.usage.completion_tokens),
    }
    if extra is not None:
        body["llm_call"] = extra
    return body


# -- count_tokens --------------------------------------------------------------------------

#: characters per token of the estimate (English prose and code average ~3.5-4 with GPT and
#: Claude tokenizers); JSON-heavy content (tool schemas) tokenizes denser, hence the floor of 3.5
CHARS_PER_TOKEN = 3.5
#: tokens of one image: Anthropic counts width * height / 750 and scales images down to about
#: 1.15 megapixels first, so no image costs more than ~1,600 (OpenAI's high detail: ~1,100)
IMAGE_TOKENS = 1600


def estimate_tokens(req: CountTokensRequest) -> int:
    """An estimate of the input tokens of a request: characters / 3.5, plus 4 per message and
    :data:`IMAGE_TOKENS` per image.

    No tokenizer is loaded: routes span tokenizers (GPT, Llama, Claude) and a server must not
    load one per request; the estimate is within ~20% for prose and code, and errs high. An image
    is counted as an image, not as its base64 text (which would make a photo 100,000 tokens).
    """
    chars = len(system_text(req.system)) if req.system is not None else 0
    images = 0
    for message in req.messages:
        more, found = _content_size(message["content"])
        chars += more
        images += found
    if req.tools:
        chars += len(json.dumps(req.tools, ensure_ascii=False))
    return max(1, round(chars / CHARS_PER_TOKEN) + 4 * len(req.messages) + IMAGE_TOKENS * images)


def _content_size(content: Any) -> tuple[int, int]:
    """(characters, images) of message or tool result content; images are not characters."""
    if not isinstance(content, list):
        return len(content) if isinstance(content, str) else len(json.dumps(content, ensure_ascii=False)), 0
    chars = images = 0
    for block in content:
        if isinstance(block, dict) and block.get("type") == "image":
            images += 1
        elif isinstance(block, dict) and block.get("type") == "tool_result" and isinstance(block.get("content"), list):
            more, found = _content_size(block["content"])
            rest = {k: v for k, v in block.items() if k != "content"}
            chars += more + len(json.dumps(rest, ensure_ascii=False))
            images += found
        else:
            chars += len(json.dumps(block, ensure_ascii=False))
    return chars, images
