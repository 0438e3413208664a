"""Tools: steps a model can call, with a JSON schema, an idempotency key and an approval gate.

``@perdure.agents.tool`` turns a function into a :class:`Tool`: a durable step (its result is
journaled; replay returns it) described to the model by a JSON schema derived from its
signature and docstring. A parameter named ``idempotency_key`` is filled by perdure with the
step's stable key (see ``perdure.idempotency_key()``) and hidden from the model. With
``requires_approval`` (True, or a predicate on the arguments), a call first waits, unloaded,
for a human to approve it through the approval primitive, with the proposed call as details;
a rejection raises :class:`ToolRejected`, which the agent loop feeds back to the model.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .._context import current, idempotency_key
from .._decorators import StepSpec
from .._errors import ConfigurationError, PerdureError
from .._retry import RetryPolicy
from .._steps import call_step_async, call_step_sync
from .._waits import wait_for_approval, wait_for_approval_async

P = ParamSpec("P")
R = TypeVar("R")
Policy = bool | Callable[..., bool]

_KEY_PARAM = "idempotency_key"


class ToolRejected(PerdureError):
    """A human rejected a tool call that required approval.

    Attributes:
        tool: the tool's name. arguments: the proposed arguments. comment: the reviewer's.
    """

    def __init__(self, tool: str, arguments: Mapping[str, Any], comment: str | None) -> None:
        reason = f": {comment}" if comment else ""
        super().__init__(f"the call of tool {tool!r} was rejected{reason}")
        self.tool, self.arguments, self.comment = tool, dict(arguments), comment


class Tool(Generic[P, R]):
    """A tool: call it like the function (inside a workflow it is a journaled step).

    Attributes:
        name: the name the model sees. description: what the model reads about it.
        parameters: the JSON schema of its arguments.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        description: str,
        requires_approval: Policy,
        retry: RetryPolicy | None,
    ) -> None:
        self.fn, self.name, self.description = fn, name, description
        self.requires_approval = requires_approval
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = inspect.signature(fn)
        self._takes_key = _KEY_PARAM in self._signature.parameters
        self._model = _arguments_model(fn, name, self._signature)
        self.parameters: dict[str, Any] = _clean_schema(self._model.model_json_schema())
        self._spec = StepSpec(f"tool.{name}", self._body, retry=retry)
        self._spec._return_hint = _return_hint(fn)
        self._spec._resolved = True

    def __repr__(self) -> str:
        return f"<perdure tool {self.name}>"

    # -- schemas for the providers -------------------------------------------------------------

    def openai_schema(self) -> dict[str, Any]:
        """The tool as OpenAI's chat completions API takes it."""
        function = {"name": self.name, "description": self.description,
                    "parameters": self.parameters}  # fmt: skip
        return {"type": "function", "function": function}

    def responses_schema(self) -> dict[str, Any]:
        """The tool as OpenAI's Responses API takes it."""
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters}  # fmt: skip

    def anthropic_schema(self) -> dict[str, Any]:
        """The tool as Anthropic's messages API takes it."""
        return {"name": self.name, "description": self.description,
                "input_schema": self.parameters}  # fmt: skip

    # -- calling ---------------------------------------------------------------------------------

    def parse(self, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
        """Validate a model's arguments (a JSON string or a mapping) against the schema.

        Raises:
            ValueError: they do not fit (the message says how; the agent shows it to the model).
        """
        import pydantic

        try:
            data = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
            model = self._model.model_validate(data)
        except (ValueError, pydantic.ValidationError) as exc:
            raise ValueError(f"invalid arguments for tool {self.name!r}: {exc}") from None
        return {k: getattr(model, k) for k in type(model).model_fields}

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        arguments = self._bind(args, kwargs)
        if self.is_async:
            return self._call_async(arguments)  # type: ignore[return-value]
        self._gate(arguments)
        return call_step_sync(self._spec, (), arguments)  # type: ignore[no-any-return]

    async def _call_async(self, arguments: dict[str, Any]) -> Any:
        await self._gate_async(arguments)
        return await call_step_async(self._spec, (), arguments)

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind_partial(*args, **kwargs)
        return {k: v for k, v in bound.arguments.items() if k != _KEY_PARAM}

    def _body(self, **arguments: Any) -> Any:
        if self._takes_key:
            arguments[_KEY_PARAM] = idempotency_key() if current_step() else None
        fn: Callable[..., Any] = self.fn
        return fn(**arguments)

    def _needs_approval(self, arguments: dict[str, Any]) -> bool:
        policy = self.requires_approval
        return bool(policy(**arguments) if callable(policy) else policy)

    def _approval_name(self) -> str:
        """``tool:<name>@<key>``: named by the replay key the approval's request is about to
        take, unique in the run and the same on replay whatever order concurrent branches
        (agents gathered in tasks) reach their gates in."""
        from .._context import _branch

        ctx = current()
        assert ctx is not None
        branch = _branch.get() or ctx.root
        return f"tool:{self.name}@{branch.prefix}{branch.seq}"

    def _gate(self, arguments: dict[str, Any]) -> None:
        if current() is None or not self._needs_approval(arguments):
            return
        decision = wait_for_approval(self._approval_name(), details=self._proposal(arguments))
        if not decision.approved:
            raise ToolRejected(self.name, arguments, decision.comment)

    async def _gate_async(self, arguments: dict[str, Any]) -> None:
        if current() is None or not self._needs_approval(arguments):
            return
        name = self._approval_name()
        decision = await wait_for_approval_async(name, details=self._proposal(arguments))
        if not decision.approved:
            raise ToolRejected(self.name, arguments, decision.comment)

    def _proposal(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return {"tool": self.name, "description": self.description, "arguments": arguments}


def current_step() -> bool:
    """Whether a step body is running in a workflow (an idempotency key exists)."""
    from .._context import _current, _in_step

    return _in_step.get() is not None and _current.get() is not None


@overload
def tool(fn: Callable[P, R], /) -> Tool[P, R]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: Policy = False,
    retry: RetryPolicy | None = None,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...


def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: Policy = False,
    retry: RetryPolicy | None = None,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Make a function (``def`` or ``async def``) a tool a model can call.

    Args:
        fn: the function (when used bare). Annotate its parameters: they become the JSON
            schema (pydantic types, dataclasses, enums, ``Literal``...). A parameter named
            ``idempotency_key`` receives the step's stable key and is hidden from the model.
        name: the name the model sees (default: the function's name).
        description: what the model reads (default: the docstring's text before ``Args:``;
            parameter lines under ``Args:`` describe the parameters).
        requires_approval: True, or a predicate called with the arguments: when it holds, the
            call waits for ``engine.approve``/``reject`` (``perdure approvals`` lists it, with
            the proposed arguments) before the tool runs.
        retry: the tool's retry policy (default: the engine's).

    Raises:
        ConfigurationError: pydantic is missing, or a parameter cannot be described.
    """

    def decorate(f: Callable[P, R]) -> Tool[P, R]:
        text, _ = _docstring(f)
        return Tool(f, name or f.__name__, description or text or f.__name__,
                    requires_approval, retry)  # fmt: skip

    return decorate(fn) if fn is not None else decorate


# -- schema helpers ----------------------------------------------------------------------------


def _arguments_model(fn: Callable[..., Any], name: str, signature: inspect.Signature) -> Any:
    try:
        import pydantic
    except ImportError:  # pragma: no cover - the SDK extras bring pydantic
        raise ConfigurationError("tools need pydantic: pip install 'perdure[openai]'") from None
    import typing

    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    _, described = _docstring(fn)
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.name == _KEY_PARAM:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(f"tool {name!r}: *args and **kwargs cannot be described")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (
            annotation,
            pydantic.Field(default, description=described.get(param.name)),
        )
    try:
        return pydantic.create_model(f"{name}_arguments", **fields)
    except Exception as exc:
        raise ConfigurationError(
            f"tool {name!r}: its parameters cannot be described: {exc}"
        ) from exc


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    schema.setdefault("properties", {})
    return schema


def _return_hint(fn: Callable[..., Any]) -> Any:
    import typing

    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:
        return None


_ARG_LINE = re.compile(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def _docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The docstring's description (before ``Args:``) and its parameter descriptions."""
    doc = inspect.getdoc(fn) or ""
    head, _, rest = doc.partition("\nArgs:")
    described: dict[str, str] = {}
    last = None
    for line in rest.splitlines():
        if line.strip() and not line.startswith(" "):
            break  # the next section (Returns:, Raises:)
        found = _ARG_LINE.match(line)
        if found:
            last = found.group(1)
            described[last] = found.group(2).strip()
        elif last and line.strip():
            described[last] += " " + line.strip()
    return " ".join(head.split()), described
