# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""Chat templates (Jinja) of the LLaVA family's conversation styles, and the conversation check every processor runs.

LLaVA's ``vicuna_v1`` conversation: an optional system prompt, then ``USER: …`` and ``ASSISTANT: …`` turns,
images written as ``<image>\\n`` where the message puts them. Assistant replies (with the end-of-sequence
token) sit inside ``{% generation %}`` so that ``return_assistant_tokens_mask`` gives training labels.
The tiny presets use the same style with newline-separated turns and no default system prompt. ChatML
(:func:`chatml_chat_template`: ``<|im_start|>role\\n…<|im_end|>`` turns, Qwen2-VL's format) writes a configurable
placeholder per image and per video part.

:func:`check_conversation` is the one conversation check (``ZooProcessorMixin.apply_chat_template`` and the
training collator run it before anything is rendered): a turn without a role, an unknown role (``assistent``),
content that is a dict, a nested list or ``None``, parts keyed ``content`` instead of ``text`` or of an unknown type
would otherwise render as a user turn or drop the question (``"USER: \\nASSISTANT:"``). Every error names the turn
(and part) and the fix. The templates built here refuse the same inputs themselves (``raise_exception``), for
callers that render them without a processor (``tokenizer.apply_chat_template``, serving engines); which part types
a conversation may hold is the processor's (``part_types``: text and images by default, videos where its template
writes them).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# what the templates built here understand: these roles, these part types (OpenAI's ``image_url`` parts are
# turned into ``image`` parts by transformers' processor before rendering)
CHAT_ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "image", "image_url")
# where an image part keeps its image (as transformers' apply_chat_template reads it), and a video part its video
IMAGE_PART_KEYS = ("image", "url", "path", "base64")
VIDEO_PART_KEYS = ("video", "url", "path")
# the part type a processor that takes videos adds to PART_TYPES (its ``chat_part_types``)
VIDEO_PART = "video"
_PART_EXAMPLE = "{'type': 'text', 'text': ...} or {'type': 'image', 'image': ...}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_empty_text(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def _is_message_object(value: Any) -> bool:
    """Dicts, and the message objects transformers turns into dicts (dataclasses, pydantic models)."""
    if isinstance(value, Mapping):
        return True
    is_dataclass = dataclasses.is_dataclass(value) and not isinstance(value, type)
    return is_dataclass or callable(getattr(value, "model_dump", None))


def check_conversation_list(messages: Any, where: str = "") -> None:
    """``TypeError`` / ``ValueError`` when ``messages`` is not a non-empty list of turn objects (the check that can
    run before transformers converts message objects to dicts)."""
    at = f"{where}: " if where else ""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"{at}a conversation must be a list of chat turns ({{'role': ..., 'content': ...}}), got "
            f"{type(messages).__name__}; for a prompt already written as text, call the processor with text=..."
        )
    if not messages:
        raise ValueError(
            f"{at}the conversation is empty; give at least one turn, e.g. [{{'role': 'user', 'content': 'Describe the "
            f"image.'}}]"
        )
    for turn, message in enumerate(messages):
        if not _is_message_object(message):
            prefix = f"{where}, turn {turn}" if where else f"turn {turn}"
            raise TypeError(f"{prefix}: a chat turn is a dict with 'role' and 'content', got {_short(message)}")


def check_conversation(
    messages: Any, where: str = "", need_images: bool = False, part_types: Sequence[str] = PART_TYPES
) -> None:
    """Refuse a conversation the chat templates would render wrongly, naming the turn, the part and the fix.

    ``messages``: a list of ``{"role": ..., "content": ...}`` dicts; ``content`` is a string or a flat list of
    parts ``{"type": "text", "text": str}`` / ``{"type": "image", <one of IMAGE_PART_KEYS>: ...}``. Roles are
    ``system`` (first turn only), ``user`` and ``assistant``; images go in user turns. ``where``: what to call the
    conversation in messages (``"example 3"``, ``"conversation 1"``; empty for a single one). ``need_images``: each
    image part must hold its image (when the images are read from the messages, e.g. ``tokenize=True``).
    ``part_types``: the part types the processor's template writes (``PART_TYPES``; a processor that takes videos
    adds ``"video"``, a part holding one of ``VIDEO_PART_KEYS``).
    ``TypeError`` for a wrong kind of value or a missing key, ``ValueError`` for a value that is not allowed.
    """
    check_conversation_list(messages, where)
    for turn, message in enumerate(messages):
        prefix = f"{where}, turn {turn}" if where else f"turn {turn}"
        role = _check_role(message, turn, prefix)
        content = message.get("content") if isinstance(message, Mapping) else getattr(message, "content", None)
        for index, part in enumerate(_check_content(content, prefix)):
            _check_part(part, role, f"{prefix}, part {index}", need_images, part_types)


def _check_role(message: Any, turn: int, prefix: str) -> str:
    role = message.get("role") if isinstance(message, Mapping) else getattr(message, "role", None)
    if role is None:
        keys = sorted(message) if isinstance(message, Mapping) else type(message).__name__
        raise TypeError(
            f"{prefix}: a chat turn is a dict with 'role' and 'content', but this one has no 'role' ({keys}); add "
            f"'role': one of {', '.join(CHAT_ROLES)}"
        )
    if not isinstance(role, str):
        raise TypeError(f"{prefix}: 'role' must be a string, one of {', '.join(CHAT_ROLES)}; got {_short(role)}")
    if role not in CHAT_ROLES:
        raise ValueError(
            f"{prefix}: unknown role {role!r}{_did_you_mean(role, CHAT_ROLES)}; valid roles: {', '.join(CHAT_ROLES)}"
        )
    if role == "system" and turn != 0:
        raise ValueError(
            f"{prefix}: a system message must be the first turn (the chat template writes only a first system "
            f"message as the system prompt, a later one as a user turn); move it to the start of the conversation"
        )
    return role


def _check_content(content: Any, prefix: str) -> Sequence:
    """The parts of a turn's content (none for a string)."""
    if isinstance(content, str):
        return ()
    if content is None:
        raise TypeError(
            f"{prefix}: the turn has no 'content' (or it is None); give its text as a string or a list of parts "
            f"({_PART_EXAMPLE})"
        )
    if isinstance(content, Mapping):
        raise TypeError(
            f"{prefix}: 'content' must be a string or a list of parts, got one dict; wrap the part in a list: "
            f"[{_short(dict(content))}]"
        )
    if not isinstance(content, (list, tuple)):
        raise TypeError(
            f"{prefix}: 'content' must be a string or a list of parts ({_PART_EXAMPLE}), got {type(content).__name__}"
        )
    return content


def _check_part(part: Any, role: str, prefix: str, need_images: bool, part_types: Sequence[str] = PART_TYPES) -> None:
    if isinstance(part, (list, tuple)):
        raise TypeError(f"{prefix} is a list, but 'content' is one flat list of parts; remove the inner brackets")
    if isinstance(part, str):
        raise TypeError(f"{prefix} is a plain string; write it as {{'type': 'text', 'text': {_short(part, 40)}}}")
    if not isinstance(part, Mapping):
        raise TypeError(f"{prefix} must be a dict with a 'type' ({_PART_EXAMPLE}), got {type(part).__name__}")
    kind = part.get("type")
    if kind is None:
        raise TypeError(f"{prefix} has no 'type' (keys: {sorted(part)}); write {_PART_EXAMPLE}")
    if kind not in part_types:
        raise ValueError(
            f"{prefix} has the unknown type {kind!r}{_did_you_mean(str(kind), part_types)}; valid part types: "
            f"{', '.join(part_types)}"
        )
    if kind == "text":
        if "text" not in part:
            others = [key for key in part if key != "type"]
            raise TypeError(
                f"{prefix} is a text part without 'text' (it has {others}); write {{'type': 'text', 'text': ...}}"
            )
        if not isinstance(part["text"], str):
            raise TypeError(f"{prefix}: 'text' must be a string, got {_short(part['text'])}")
        return
    if role != "user":
        media = "video" if kind == VIDEO_PART else "image"
        raise ValueError(
            f"{prefix} is {'a' if media == 'video' else 'an'} {media} in a turn of role {role!r}, but the chat template "
            f"writes {media}s in user turns only; move the {media} to a user turn"
        )
    if need_images:
        _check_image_source(part, kind, prefix)


def _check_image_source(part: Mapping, kind: str, prefix: str) -> None:
    if kind == "image_url":
        source = part.get("image_url")
        url = source.get("url") if isinstance(source, Mapping) else source
        if not isinstance(url, str) or not url:
            raise ValueError(f"{prefix}: an image_url part needs {{'image_url': {{'url': ...}}}}, got {_short(source)}")
        return
    media, keys = ("video", VIDEO_PART_KEYS) if kind == VIDEO_PART else ("image", IMAGE_PART_KEYS)
    given = [key for key in keys if part.get(key) is not None and not _is_empty_text(part.get(key))]
    if not given:
        raise ValueError(
            f"{prefix}: an {media} part holds no {media}; give it one of {', '.join(repr(key) for key in keys)}"
        )
    if len(given) > 1:
        raise ValueError(
            f"{prefix}: an {media} part holds {len(given)} {media}s ({', '.join(given)}); give each {media} its own part"
        )


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# Jinja that refuses (transformers' ``raise_exception``) what the templates built here would render wrongly: the same
# rules as ``check_conversation``, for callers that render a template without a processor; nothing is written
def conversation_guard(part_types: Sequence[str] = ("text", "image")) -> str:
    """The guard for a template whose parts are ``part_types`` (``"text"`` and media types; media in user turns)."""
    media = [kind for kind in part_types if kind != "text"]
    listed = ", ".join('{"type": "' + kind + '"}' for kind in media)
    example = '{"type": "text", "text": ...} or ' + listed if len(media) < 2 else '{"type": "text", "text": ...}, ' + listed
    allowed = "[" + ", ".join(_jinja_string(kind) for kind in part_types) + "]"
    in_user_turns = ": images go in user turns only" + "".join(f", {kind}s too" for kind in media if kind != "image")
    is_media = "part['type'] == 'image'" if media == ["image"] else "part['type'] != 'text'"
    return (
        "{%- if not messages -%}{{- raise_exception('the conversation is empty; give at least one turn') -}}{%- endif -%}"
        "{%- for message in messages -%}{%- set turn = 'turn ' ~ loop.index0 -%}"
        "{%- if message is not mapping or message['role'] not in ['system', 'user', 'assistant'] -%}"
        "{{- raise_exception(turn ~ ': unknown or missing role; every turn needs a role: system, user or assistant') -}}"
        "{%- elif message['role'] == 'system' and not loop.first -%}"
        "{{- raise_exception(turn ~ ': a system message must be the first turn') -}}"
        "{%- elif message['content'] is not defined or message['content'] is none or message['content'] is mapping"
        " or (message['content'] is not string and message['content'] is not iterable) -%}"
        "{{- raise_exception(turn ~ ': content must be a string or a list of parts') -}}"
        "{%- elif message['content'] is not string -%}{%- for part in message['content'] -%}"
        "{%- set where = turn ~ ', part ' ~ loop.index0 -%}"
        "{%- if part is not mapping or part['type'] not in " + allowed + " -%}"
        "{{- raise_exception(where ~ " + _jinja_string(": a part is " + example) + ") -}}"
        "{%- elif part['type'] == 'text' and part['text'] is not string -%}"
        "{{- raise_exception(where ~ ': a text part needs a string under \"text\"') -}}"
        "{%- elif " + is_media + " and message['role'] != 'user' -%}"
        "{{- raise_exception(where ~ " + _jinja_string(in_user_turns) + ") -}}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endfor -%}"
    )


CONVERSATION_GUARD = conversation_guard()


def vicuna_chat_template(
    system_prompt: str | None = VICUNA_V1_SYSTEM,
    user_end: str = " ",
    assistant_end: str = "",
    image_placeholder: str = "<image>\n",
) -> str:
    """A ``USER: … ASSISTANT: …`` template.

    system_prompt: written first when the conversation has no system message (``None``: nothing); a system
        message's text replaces it, followed by a space.
    user_end / assistant_end: what closes a user turn / an assistant turn (after its end-of-sequence token).
    image_placeholder: what an image part writes (``""`` for the Q-Former families, whose processor puts the
        image tokens before the prompt).

    The template starts with ``CONVERSATION_GUARD``: a malformed conversation raises instead of rendering.
    """
    default_system = "" if system_prompt is None else "{{- " + _jinja_string(system_prompt + " ") + " -}}"
    return (
        CONVERSATION_GUARD + "{{- bos_token -}}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- if messages[0]['content'] is string -%}{{- messages[0]['content'] -}}"
        "{%- else -%}{%- for part in messages[0]['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
        "{%- endif -%}{{- ' ' -}}{%- set conversation = messages[1:] -%}"
        "{%- else -%}" + default_system + "{%- set conversation = messages -%}{%- endif -%}"
        "{%- for message in conversation -%}"
        "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
        "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{- 'ASSISTANT:' -}}{% generation %}"
        "{%- for part in parts if part['type'] == 'text' -%}{{- ' ' + part['text'] -}}{%- endfor -%}"
        "{{- eos_token -}}{% endgeneration %}" + ("{{- " + _jinja_string(assistant_end) + " -}}" if assistant_end else "") +
        "{%- else -%}"
        "{{- 'USER: ' -}}"
        "{%- for part in parts -%}"
        "{%- if part['type'] == 'image' -%}{{- " + _jinja_string(image_placeholder) + " -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}{{- " + _jinja_string(user_end) + " -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    )


CHATML_SYSTEM = "You are a helpful assistant."


def chatml_chat_template(
    system_prompt: str | None = CHATML_SYSTEM,
    image_placeholder: str = "<image>",
    video_placeholder: str | None = None,
) -> str:
    """A ChatML template (``<|im_start|>role\\n…<|im_end|>\\n`` turns), as Qwen2-VL's.

    system_prompt: the system turn written when the conversation has none (``None``: no system turn); a first
        system message replaces it.
    image_placeholder / video_placeholder: what an image / a video part writes (Qwen2-VL:
        ``<|vision_start|><|image_pad|><|vision_end|>``); ``video_placeholder=None``: the template takes no videos.

    Assistant replies and their ``<|im_end|>`` sit inside ``{% generation %}`` (training masks); the generation
    prompt is ``<|im_start|>assistant\\n``. Starts with the conversation guard for its part types.
    """
    part_types = ("text", "image") + ((VIDEO_PART,) if video_placeholder is not None else ())
    default_system = (
        "" if system_prompt is None else "{{- " + _jinja_string(f"<|im_start|>system\n{system_prompt}<|im_end|>\n") + " -}}"
    )
    media = "{%- if part['type'] == 'image' -%}{{- " + _jinja_string(image_placeholder) + " -}}"
    if video_placeholder is not None:
        media += "{%- elif part['type'] == 'video' -%}{{- " + _jinja_string(video_placeholder) + " -}}"
    return (
        conversation_guard(part_types)
        + "{%- if messages[0]['role'] != 'system' -%}" + default_system + "{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
        "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['role'] == 'assistant' -%}{% generation %}"
        "{%- for part in parts if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
        "{{- '<|im_end|>' -}}{% endgeneration %}{{- '\\n' -}}"
        "{%- else -%}"
        "{%- for part in parts -%}" + media + "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
        "{%- endfor -%}{{- '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )
