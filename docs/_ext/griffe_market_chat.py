"""Griffe extensions for the API reference (loaded by mkdocstrings, see ``mkdocs.yml``).

The package's docstrings are reST-flavoured: doctest blocks (``>>>``), literal blocks
introduced by ``::``, definition lists and Sphinx roles (``:class:`Quota```). Rendered as
Markdown as they are, ``>>>`` becomes three nested block quotes and the roles show up verbatim.

* :class:`ReSTDocstrings` rewrites each docstring into Markdown before it is rendered: doctest
  and literal blocks become fenced code blocks, definition lists a bold term and its body, and
  roles cross-references that link when the target is in the reference (and stay plain code
  otherwise, so a role to a private object never breaks the strict build).
* :class:`AttrsInit` gives attrs classes (``@attrs.frozen``, ``@attrs.define``) the ``__init__``
  that attrs generates at runtime, so their signatures show the real parameters and defaults.

Only the rendered copy changes; the package's sources and their doctests are untouched.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import griffe

# -- reST -> Markdown ------------------------------------------------------------------------

_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|data|attr|mod|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`"
)
_CALLABLE_ROLES = {"meth", "func"}
_FENCE = re.compile(r"^\s*(```|~~~)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blank(line: str) -> bool:
    return not line.strip()


def _is_list_item(text: str) -> bool:
    return bool(re.match(r"(?:[*+-]|\d+[.)])\s", text))


def _fenced(lines: list[str], indent: int, language: str) -> list[str]:
    pad = " " * indent
    body = textwrap.dedent("\n".join(lines)).splitlines()
    return [
        "",
        f"{pad}```{language}",
        *(pad + line if line else "" for line in body),
        f"{pad}```",
        "",
    ]


def _literal_language(lines: list[str]) -> str:
    first = next((line.strip() for line in lines if line.strip()), "")
    return "console" if first.startswith("$ ") else "python"


def rest_to_markdown(text: str, resolve: Callable[[str], str | None]) -> str:
    r"""Rewrite one reST-flavoured docstring as Markdown.

    ``resolve`` turns a role's target (``Quota``, ``MarketTestServer.inject``) into the full
    identifier to link to, or ``None`` when it cannot.

    >>> print(rest_to_markdown("See :class:`Quota`::\n\n    Quota(limit=10)\n", "pkg.{}".format))
    See <autoref identifier="pkg.Quota" optional><code>Quota</code></autoref>:
    <BLANKLINE>
    ```python
    Quota(limit=10)
    ```
    <BLANKLINE>

    A doctest block becomes a fenced ``pycon`` block the same way.
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        stripped = line.strip()

        # A doctest block: from ">>>" to the next blank line.
        if stripped.startswith(">>>"):
            start = i
            while i < len(lines) and not _blank(lines[i]):
                i += 1
            out.extend(_fenced(lines[start:i], _indent(line), "pycon"))
            continue

        # A literal block: a paragraph ending in "::", then an indented block.
        if stripped.endswith("::") and not stripped.startswith(".."):
            base = _indent(line)
            if stripped != "::":
                head = line.rstrip()
                head = head[:-3] if head.endswith(" ::") else head[:-1]
                out.append(_roles(head.rstrip(), resolve))
            j = i + 1
            while j < len(lines) and _blank(lines[j]):
                j += 1
            end = j
            while end < len(lines) and (_blank(lines[end]) or _indent(lines[end]) > base):
                end += 1
            while end > j and _blank(lines[end - 1]):
                end -= 1
            block = lines[j:end]
            if block and _indent(block[0]) > base:
                out.extend(_fenced(block, base, _literal_language(block)))
                i = end
            else:
                i += 1
            continue

        # A definition list item: a one-line term right after a blank line, its body indented.
        previous_blank = i == 0 or _blank(lines[i - 1])
        if (
            previous_blank
            and stripped
            and not _is_list_item(stripped)
            and i + 1 < len(lines)
            and not _blank(lines[i + 1])
            and _indent(lines[i + 1]) > _indent(line)
        ):
            base = _indent(line)
            end = i + 1
            while end < len(lines) and (_blank(lines[end]) or _indent(lines[end]) > base):
                end += 1
            while end > i + 1 and _blank(lines[end - 1]):
                end -= 1
            pad = " " * base
            out.append(f"{pad}**{_roles(stripped, resolve)}**")
            out.append("")
            body = textwrap.dedent("\n".join(lines[i + 1 : end])).splitlines()
            out.extend(
                rest_to_markdown(
                    "\n".join(pad + b if b else "" for b in body), resolve
                ).splitlines()
            )
            i = end
            continue

        out.append(_roles(line, resolve))
        i += 1
    return "\n".join(out)


def _roles(line: str, resolve: Callable[[str], str | None]) -> str:
    def link(match: re.Match[str]) -> str:
        target = match["target"].strip()
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
        if match["role"] in _CALLABLE_ROLES:
            title += "()"
        identifier = resolve(target) or target
        # "optional": autorefs links it when the target is rendered, else leaves plain code.
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    return _ROLE.sub(link, line)


def _resolver(obj: griffe.Object) -> Callable[[str], str | None]:
    def resolve(target: str) -> str | None:
        head, _, rest = target.partition(".")
        try:
            found = obj.resolve(head)
        except griffe.NameResolutionError:
            return None
        return f"{found}.{rest}" if rest else found

    return resolve


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


class ReSTDocstrings(griffe.Extension):
    """Rewrite every docstring of the package from reST-flavoured text to Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            docstring = obj.docstring
            if docstring is not None:
                docstring.value = rest_to_markdown(docstring.value, _resolver(obj))


# -- attrs classes ---------------------------------------------------------------------------

_ATTRS_DECORATORS = {
    "attrs.frozen",
    "attrs.define",
    "attrs.mutable",
    "attr.s",
    "attr.attrs",
    "attr.frozen",
    "attr.define",
}


def _decorator(cls: griffe.Class) -> griffe.Expr | str | None:
    for decorator in cls.decorators:
        value = decorator.value
        path = value.canonical_path if isinstance(value, griffe.Expr) else str(value)
        if path.split("(")[0] in _ATTRS_DECORATORS:
            return value
    return None


def _call_kwargs(value: Any) -> dict[str, Any]:
    if not isinstance(value, griffe.ExprCall):
        return {}
    return {arg.name: arg.value for arg in value.arguments if isinstance(arg, griffe.ExprKeyword)}


def _is_field(value: Any) -> bool:
    return isinstance(value, griffe.ExprCall) and value.canonical_path in (
        "attrs.field",
        "attr.ib",
        "attr.field",
    )


def _attrs_init(cls: griffe.Class, decorator: griffe.Expr | str) -> None:
    kw_only = str(_call_kwargs(decorator).get("kw_only")) == "True"
    parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    for member in list(cls.members.values()):
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        attr: griffe.Attribute = member  # type: ignore[assignment]
        if "property" in attr.labels or (
            "class-attribute" in attr.labels and "instance-attribute" not in attr.labels
        ):
            continue  # a property or a ClassVar
        default: Any = attr.value
        if _is_field(attr.value):
            options = _call_kwargs(attr.value)
            if str(options.get("init")) == "False":
                continue
            if "default" in options:
                default = options["default"]
            elif "factory" in options:
                factory = options["factory"]
                default = "..." if isinstance(factory, griffe.ExprLambda) else f"{factory}()"
            else:
                default = None
            attr.value = default  # show the default, not the attrs.field(...) call
        keyword = kw_only or str(_call_kwargs(attr.value).get("kw_only")) == "True"
        parameters.append(
            griffe.Parameter(
                attr.name,
                annotation=attr.annotation,
                kind=griffe.ParameterKind.keyword_only
                if keyword
                else griffe.ParameterKind.positional_or_keyword,
                default=default,
                docstring=attr.docstring,
            )
        )
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=cls,
        parameters=griffe.Parameters(*parameters),
        returns="None",
    )
    cls.set_member("__init__", init)


class AttrsInit(griffe.Extension):
    """Give each attrs class the ``__init__`` that attrs writes for it at runtime."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if isinstance(obj, griffe.Class) and "__init__" not in obj.members:
                decorator = _decorator(obj)
                if decorator is not None:
                    _attrs_init(obj, decorator)
