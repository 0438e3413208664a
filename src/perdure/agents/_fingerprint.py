"""Call fingerprints: what a journaled model call was asked with, minus the conversation.

A fingerprint names the parts of a request that belong to the *code* (the model, the prompt
template, the tools offered, the output format), not the parts that are the conversation's
data (user, assistant and tool messages). It is journaled with the call's response; when a
resumed run replays the call with another fingerprint, the engine reports which parts
changed (``WorkflowContext.check_call``), by the client's ``on_change`` policy.

The fingerprint is a compact JSON object of named parts: the model by name, every other part
as the first 16 hex digits of the SHA-256 of its canonical JSON (sorted keys, compact
separators). Absent parts are left out, so adding one (a response format, a system message)
shows as a change of that part. Prompt text never enters the journal this way, only its hash.

Parts, per API:

* ``openai.chat.completions.create``: ``model``; ``system`` (role and content of the
  ``system`` and ``developer`` messages, in order); ``tools``; ``tool_choice``;
  ``format`` (``response_format``).
* ``openai.responses.create``: ``model``; ``system`` (``instructions``, the ``system`` and
  ``developer`` items of ``input``, and the id and version of a stored ``prompt``);
  ``tools``; ``tool_choice``; ``format`` (``text.format``).
* ``anthropic.messages.create``: ``model``; ``system``; ``tools``; ``tool_choice``.

``cache_control`` markers are left out of every part: adding prompt caching changes neither
the prompt nor the tools.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

from .._errors import ConfigurationError

#: what a replay does with a call whose fingerprint changed: log a warning, fail the run
#: before any new side effect (``CallChangedError``), or nothing
OnChange = Literal["warn", "error", "ignore"]
POLICIES: tuple[str, ...] = get_args(OnChange)

#: keys dropped wherever they appear: annotations that do not change what the model is asked
_IGNORED_KEYS = frozenset({"cache_control"})
_SYSTEM_ROLES = ("system", "developer")
_DIGITS = 16


def checked_policy(on_change: str) -> str:
    """``on_change`` if it is a known policy.

    Raises:
        ConfigurationError: anything but ``"warn"``, ``"error"`` or ``"ignore"``.
    """
    if on_change not in POLICIES:
        raise ConfigurationError(
            f"on_change is one of {', '.join(map(repr, POLICIES))}, not {on_change!r}"
        )
    return on_change


def fingerprint(step_name: str, kwargs: Mapping[str, Any]) -> str | None:
    """The fingerprint of a call of ``step_name`` with these request arguments, or None for
    a call this module does not know. Never raises: an argument that cannot be read as JSON
    data is hashed by its type name."""
    parts_of = _PARTS.get(step_name)
    if parts_of is None:
        return None
    parts: dict[str, str] = {}
    model = kwargs.get("model")
    if _given(model):
        parts["model"] = str(model)
    for name, value in parts_of(kwargs).items():
        if _given(value):
            parts[name] = digest(value)
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


def digest(value: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``value``'s canonical JSON."""
    try:
        text = json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))
    except (RecursionError, TypeError, ValueError):  # a cycle, or keys json cannot sort
        text = f"<{type(value).__qualname__}>"
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGITS]


# -- the parts of each API ---------------------------------------------------------------------


def _chat_parts(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI chat completions: system and developer messages, tools, output format."""
    return {
        "system": _system_items(kwargs.get("messages")),
        "tools": kwargs.get("tools"),
        "tool_choice": kwargs.get("tool_choice"),
        "format": kwargs.get("response_format"),
    }


def _responses_parts(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI Responses API: instructions with the system and developer input items (and a
    stored prompt's id and version, not its variables), tools, ``text.format``."""
    raw_input = kwargs.get("input")
    items = None if isinstance(raw_input, str) else _system_items(raw_input)
    prompt = kwargs.get("prompt")
    stored = None
    if isinstance(prompt, Mapping):
        stored = {key: prompt.get(key) for key in ("id", "version") if _given(prompt.get(key))}
    system = {
        name: value
        for name, value in (("instructions", kwargs.get("instructions")), ("input", items),
                            ("prompt", stored))
        if _given(value)
    }  # fmt: skip
    text = kwargs.get("text")
    return {
        "system": system,
        "tools": kwargs.get("tools"),
        "tool_choice": kwargs.get("tool_choice"),
        "format": text.get("format") if isinstance(text, Mapping) else None,
    }


def _anthropic_parts(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic messages: the system prompt, tools, tool choice."""
    return {
        "system": kwargs.get("system"),
        "tools": kwargs.get("tools"),
        "tool_choice": kwargs.get("tool_choice"),
    }


_PARTS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "openai.chat.completions.create": _chat_parts,
    "openai.responses.create": _responses_parts,
    "anthropic.messages.create": _anthropic_parts,
}


def _system_items(items: Any) -> list[list[Any]] | None:
    """``[role, content]`` of each system or developer message: the prompt template, not
    the conversation (user, assistant and tool messages, function call outputs)."""
    if not isinstance(items, (list, tuple)):
        return None
    found = []
    for item in items:
        role = _field(item, "role")
        if role in _SYSTEM_ROLES:
            found.append([role, _field(item, "content")])
    return found


def _field(item: Any, name: str) -> Any:
    """A field of a message given as a dict or as an SDK object."""
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


# -- canonical JSON ----------------------------------------------------------------------------


def _given(value: Any) -> bool:
    """Whether an argument is present: not None, not the SDKs' ``NOT_GIVEN`` / ``omit``
    markers, not empty (``tools=[]`` offers no tools, as leaving it out does)."""
    if value is None or _marker(value):
        return False
    return not (isinstance(value, (list, tuple, dict)) and not value)


def _marker(value: Any) -> bool:
    """Whether ``value`` is an SDK's "argument not given" marker (``NOT_GIVEN``, ``omit``)."""
    return type(value).__name__ in ("NotGiven", "Omit")


def _plain(value: Any) -> Any:
    """``value`` as JSON data: SDK objects (pydantic models) and dataclasses as their fields,
    a pydantic model class as its JSON schema, anything else unknown as its type's name (a
    repr could hold a memory address and differ on every run)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        kept = ((key, item) for key, item in value.items() if key not in _IGNORED_KEYS)
        return {str(key): _plain(item) for key, item in kept if not _marker(item)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(schema):
        return _plain(schema())
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _plain(dump(mode="json", exclude_none=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    return f"<{type(value).__module__}.{type(value).__qualname__}>"
