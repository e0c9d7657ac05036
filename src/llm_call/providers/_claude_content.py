"""A conversation as the Claude Code CLI's input: text, or text and image blocks (``max/*``).

The CLI takes one user message per turn, so an OpenAI-shaped conversation is rendered into one
user message: system and developer messages become the system prompt, earlier turns a delimited
transcript before the latest user message (see :func:`render_content`). Images stay images: an
OpenAI image part (``image_url`` / ``input_image`` with a ``data:`` URL) or an Anthropic image
block (``{"type": "image", "source": {"type": "base64", ...}}``) becomes an Anthropic image block
at its place in the transcript, sent through the CLI's stream-json input.

Remote image URLs (``https://...``, or an Anthropic ``url`` source) are refused with a
:class:`~llm_call.errors.UsageError` unless the operator sets ``claude.image_urls = true``:
fetching a URL a request names is the CLI's (and upstream's) doing, so it is opt-in.

No I/O and no SDK import: the planning code imports this before any process starts.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ..errors import UsageError
from ..types import Message

__all__ = ["IMAGE_MEDIA_TYPES", "Content", "image_block", "render_content"]

#: the media types the Messages API takes for images
IMAGE_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
#: the Messages API's limit for one base64 image (5 MB decoded)
MAX_IMAGE_BYTES = 5 * 1024 * 1024

#: one user message for the CLI: plain text, or a list of Anthropic content blocks
Content = str | list[dict[str, Any]]

_URL_HINT = "send the image inline as a base64 data URL (data:image/png;base64,...)"


def _base64_block(media_type: str, data: str, where: str) -> dict[str, Any]:
    media_type = media_type.strip().lower()
    if media_type == "image/jpg":
        media_type = "image/jpeg"
    if media_type not in IMAGE_MEDIA_TYPES:
        raise UsageError(
            f"{where}: image media type {media_type!r} is not supported",
            hint=f"use one of {', '.join(sorted(IMAGE_MEDIA_TYPES))}",
        )
    data = "".join(data.split())
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{where}: the image data is not valid base64") from None
    if not raw:
        raise UsageError(f"{where}: the image data is empty")
    if len(raw) > MAX_IMAGE_BYTES:
        raise UsageError(f"{where}: the image is {len(raw)} bytes; the limit is {MAX_IMAGE_BYTES} (5 MB)")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _url_block(url: str, where: str, allow_urls: bool) -> dict[str, Any]:
    url = url.strip()
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        params = header.split(";")
        if not sep or "base64" not in [p.strip().lower() for p in params[1:]]:
            raise UsageError(f"{where}: an image data URL must be base64 (data:image/png;base64,...)")
        return _base64_block(params[0], data, where)
    if url.startswith(("http://", "https://")):
        if not allow_urls:
            raise UsageError(
                f"{where}: remote image URLs are not fetched on the max/* route",
                hint=f"{_URL_HINT}, or set claude.image_urls = true (operator config) to pass URLs on",
            )
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise UsageError(f"{where}: an image URL must be a data: URL (or http(s) when allowed)", hint=_URL_HINT)


def image_block(part: dict[str, Any], where: str, *, allow_urls: bool = False) -> dict[str, Any]:
    """An Anthropic image block for an OpenAI image part or an Anthropic image block.

    >>> image_block({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}, "m")
    {'type': 'image', 'source': {'type': 'base64', 'media_type': 'image/png', 'data': 'iVBORw0KGgo='}}
    """
    kind = part.get("type")
    if kind in ("image_url", "input_image"):
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url:
            raise UsageError(f"{where}: an {kind} part needs an image_url string (or {{'url': ...}})")
        return _url_block(url, where, allow_urls)
    source = part.get("source")
    if not isinstance(source, dict):
        raise UsageError(f"{where}: an image block needs a source dict")
    stype = source.get("type")
    if stype == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise UsageError(f"{where}: a base64 image source needs media_type and data strings")
        return _base64_block(media_type, data, where)
    if stype == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise UsageError(f"{where}: a url image source needs a url string")
        return _url_block(url, where, allow_urls)
    raise UsageError(f"{where}: image source type {stype!r} is not supported (base64, url)")


def _message_parts(message: Message, where: str, allow_urls: bool) -> list[str | dict[str, Any]]:
    """The message's content as text pieces and image blocks, in order."""
    content = message.get("content")
    parts: list[str | dict[str, Any]] = []
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            if isinstance(part, str):
                parts.append(part)
                continue
            if not isinstance(part, dict):
                raise UsageError(f"{at}: a content part must be a dict, not {type(part).__name__}")
            kind = part.get("type")
            if kind in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif kind in ("image_url", "image", "input_image"):
                parts.append(image_block(part, at, allow_urls=allow_urls))
            else:
                raise UsageError(f"{at}: content part type {kind!r} is not supported by the max/* route")
    elif content is not None:
        raise UsageError(f"{where}: content must be a string or a list of parts")
    calls = message.get("tool_calls")
    if calls:
        rendered = "\n".join(
            f"[called tool {c.get('function', {}).get('name')} with {c.get('function', {}).get('arguments')}]"
            for c in calls
            if isinstance(c, dict)
        )
        parts.append(("\n" if any(isinstance(p, str) and p for p in parts) else "") + rendered)
    return parts


def _text_only(parts: list[str | dict[str, Any]]) -> str | None:
    if all(isinstance(p, str) for p in parts):
        return "".join(p for p in parts if isinstance(p, str))
    return None


def _blocks(pieces: list[str | dict[str, Any]]) -> Content:
    """Adjacent text pieces merged into text blocks; plain text when there is no image."""
    blocks: list[dict[str, Any]] = []
    text: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            text.append(piece)
            continue
        if "".join(text):
            blocks.append({"type": "text", "text": "".join(text)})
        text = []
        blocks.append(piece)
    if not blocks:
        return "".join(text)
    if "".join(text):
        blocks.append({"type": "text", "text": "".join(text)})
    return blocks


def render_content(messages: list[Message], *, allow_image_urls: bool = False) -> tuple[str | None, Content]:
    """``(system prompt, user message content)`` for the CLI from an OpenAI-shaped conversation.

    System and developer messages become the system prompt (text only). One user message is the
    content as is, except that the CLI never reads it as a command or file mention
    (:func:`_text_for_model`). Earlier turns are rendered as a delimited transcript before the
    latest user message; images keep their place::

        <conversation_history>
        <turn role="user">
        My name is Ada.
        </turn>
        <turn role="assistant">
        Hello Ada!
        </turn>
        </conversation_history>

        Continue the conversation above. The user's latest message:

        What is my name?

    The content is a string unless an image is present; then it is a list of text and image
    blocks.
    """
    system: list[str] = []
    turns: list[tuple[str, list[str | dict[str, Any]]]] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        where = f"messages[{i}]"
        parts = _message_parts(m, where, allow_image_urls)
        if role in ("system", "developer"):
            text = _text_only(parts)
            if text is None:
                raise UsageError(f"{where}: a {role} message cannot carry images on the max/* route")
            if text:
                system.append(text)
        else:
            name = m.get("name") if role == "tool" else None
            turns.append((f"{role} {name}" if name else str(role), parts))
    if not turns:
        raise UsageError("the conversation has no user message")
    last_role, last_parts = turns[-1]
    if last_role != "user":
        raise UsageError(
            f"the conversation ends with a {last_role.split()[0]} message: the max/* route answers "
            "a user message (client-side tool calls and assistant prefill are not supported)"
        )
    system_prompt = "\n\n".join(system) if system else None
    if len(turns) == 1:
        return system_prompt, _for_model(_blocks(last_parts))
    pieces: list[str | dict[str, Any]] = ["<conversation_history>\n"]
    for n, (role, parts) in enumerate(turns[:-1]):
        pieces.append(("\n" if n else "") + f'<turn role="{role}">\n')
        pieces.extend(parts)
        pieces.append("\n</turn>")
    pieces.append("\n</conversation_history>\n\nContinue the conversation above. The user's latest message:\n\n")
    pieces.extend(last_parts)
    return system_prompt, _for_model(_blocks(pieces))


#: an ``@`` where the CLI reads a file mention: at the start or after JavaScript whitespace
_MENTION = re.compile(r"(^|[\s\ufeff])@")


def _text_for_model(text: str) -> str:
    """``text`` as the CLI passes it to the model, never as an instruction to the CLI itself.

    The CLI runs a user message whose text (or last text block) starts with ``/`` as one of its
    own slash commands: ``/config permissionMode=acceptEdits`` or ``/config language=X`` wrote the
    ``~/.claude/settings.json`` of the user running llm_call, ``/model`` switched a pooled process
    for whoever got it next. It reads every ``@path`` (``@/etc/passwd``, ``@"~/.ssh/id_rsa"``,
    ``@../x``) at the start of the text or after whitespace and sends the file to the model, with
    every tool off. A space before a leading ``/`` and a zero-width space before such an ``@``
    keep both as text (the pool's own ``/clear`` does not come through here).
    """
    if text.startswith("/"):
        text = " " + text
    return _MENTION.sub("\\1\u200b@", text) if "@" in text else text


def _for_model(content: Content) -> Content:
    """Every text of ``content`` through :func:`_text_for_model`."""
    if isinstance(content, str):
        return _text_for_model(content)
    return [
        {**block, "text": _text_for_model(block["text"])}
        if block.get("type") == "text" and isinstance(block.get("text"), str)
        else block
        for block in content
    ]
