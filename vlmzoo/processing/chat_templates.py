# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""Chat templates (Jinja) of the LLaVA family's conversation styles, built in one place.

LLaVA's ``vicuna_v1`` conversation: an optional system prompt, then ``USER: …`` and ``ASSISTANT: …`` turns,
images written as ``<image>\\n`` where the message puts them. Assistant replies (with the end-of-sequence
token) sit inside ``{% generation %}`` so that ``return_assistant_tokens_mask`` gives training labels.
The tiny presets use the same style with newline-separated turns and no default system prompt.
"""

from __future__ import annotations

VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


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
    """
    default_system = "" if system_prompt is None else "{{- " + _jinja_string(system_prompt + " ") + " -}}"
    return (
        "{{- bos_token -}}"
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
