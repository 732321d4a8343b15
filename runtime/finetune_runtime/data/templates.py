"""Chat templates: bundled Jinja templates by name, and how a config picks one.

`chat_template` (on a dataset, else on the config) may be:
- unset or `tokenizer_default`: the tokenizer's own template;
- `tokenizer_default_fallback_<name>`: the tokenizer's own, else bundled `<name>`;
- a bundled name (chatml, llama3, llama2, mistral, phi_3, gemma, ...);
- Jinja text (contains `{%` or `{{`), used as-is.
An unknown name falls back to the tokenizer's own template with a warning.

The bundled templates follow the published model templates, written so that
rendering a conversation prefix gives a prefix of the full rendering (what turn
masking relies on) and folding a system turn into the first user turn where the
model has no system role.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from finetune_runtime.errors import DatasetError

log = logging.getLogger(__name__)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + content | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

MISTRAL = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{{ '[INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

PHI_3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% set first_prefix = messages[0]['content'] + '\n\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set first_prefix = '' %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% set content = (first_prefix if loop.first else '') + message['content'] %}"
    "{{ '<start_of_turn>' + role + '\n' + content | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

BUNDLED: dict[str, str] = {
    "chatml": CHATML,
    "llama3": LLAMA3,
    "llama2": LLAMA2,
    "mistral": MISTRAL,
    "phi_3": PHI_3,
    "gemma": GEMMA,
}
ALIASES = {
    "llama-3": "llama3",
    "llama_3": "llama3",
    "llama-2": "llama2",
    "llama_2": "llama2",
    "mistral_v1": "mistral",
    "phi3": "phi_3",
    "phi-3": "phi_3",
    "gemma2": "gemma",
    "qwen": "chatml",
}
TOKENIZER_DEFAULT = "tokenizer_default"
_FALLBACK_PREFIX = "tokenizer_default_fallback_"


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved template: its Jinja text and a name for messages."""

    name: str
    text: str


def is_jinja(value: str) -> bool:
    return "{%" in value or "{{" in value


def bundled_names() -> list[str]:
    return sorted(BUNDLED)


def resolve_chat_template(
    requested: str | None, tokenizer: Any, warnings: list[str] | None = None
) -> ChatTemplate:
    """Pick the template text for `requested` (see the module docstring)."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # some tokenizers carry several named templates
        own = own.get("default") or next(iter(own.values()), None)
    value = (requested or TOKENIZER_DEFAULT).strip()
    if is_jinja(value):
        return ChatTemplate("custom Jinja template", value)
    if value.startswith(_FALLBACK_PREFIX):
        if own:
            return ChatTemplate("tokenizer_default", own)
        value = value[len(_FALLBACK_PREFIX) :]
    name = ALIASES.get(value, value)
    if name in BUNDLED:
        return ChatTemplate(name, BUNDLED[name])
    if name != TOKENIZER_DEFAULT:
        message = (
            f"chat_template {value!r} is not a bundled template "
            f"({', '.join(bundled_names())}); using the tokenizer's own template"
        )
        log.warning(message)
        if warnings is not None:
            warnings.append(message)
    if not own:
        raise DatasetError(
            "the tokenizer has no chat template: set `chat_template` to one of "
            f"{', '.join(bundled_names())} or to Jinja text"
        )
    return ChatTemplate("tokenizer_default", own)
