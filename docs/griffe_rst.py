"""A Griffe extension: the package's reST docstring idioms, read as Markdown by mkdocstrings.

The library's docstrings are Google style with a few reStructuredText habits that Markdown
would garble: roles (``:func:`~.functional.shot_groups```) would print their ``:func:``
prefix, doctest lines (``>>> ...``) would become block quotes, a paragraph ending in ``::``
would keep both colons, and a simple table (``=====  =====`` borders) would be run-on text.
This extension rewrites them when Griffe loads the package (the source files are untouched):

* a role whose target is a public object of the package becomes an autorefs link to its API
  entry, any other (scikit-learn, matplotlib, a private helper) a code span;
* consecutive doctest lines become a ``pycon`` code block;
* ``::`` ending a paragraph becomes ``:``;
* a simple table becomes a Markdown table.

Targets that resolve nowhere in the package are collected in :data:`UNRESOLVED` (the site's
test reports them).
"""

from __future__ import annotations

import re

import griffe

#: ``(object path, role target)`` of every role that names no object of the package.
UNRESOLVED: list[tuple[str, str]] = []

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`]+)`")
_BORDER = re.compile(r"^=+( +=+)+\s*$")


def _public(obj) -> bool:
    """Whether mkdocstrings renders ``obj`` (and so gives it an anchor to link to)."""
    while obj is not None:
        if obj.name.startswith("_") and not obj.name.startswith("__"):
            return False
        if obj.parent is not None and not obj.is_public:
            return False
        obj = obj.parent
    return True


def _find(pkg: griffe.Module, path: str):
    if path == pkg.path:
        return pkg
    if not path.startswith(pkg.path + "."):
        return None
    try:
        found = pkg[path[len(pkg.path) + 1 :]]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    if found.is_alias:
        try:
            found = found.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return found


def _by_name(pkg: griffe.Module, name: str):
    """The one public object of the package's modules called ``name`` (the lazy names of
    ``mlflow_mcmetrics``: ``mlflow_mcmetrics.MCMetricsWarning`` is ``events.MCMetricsWarning``)."""
    matches = [
        member
        for module in pkg.modules.values()
        for member in module.members.values()
        if member.name == name and not member.is_alias
    ]
    return matches[0] if len(matches) == 1 else None


def _resolve(pkg: griffe.Module, obj, target: str):
    """The object ``target`` names, seen from ``obj``'s docstring, as Sphinx would find it."""
    target = target.strip().rstrip("()")
    scopes = []
    scope = obj
    while scope is not None:
        scopes.append(scope.path)
        scope = scope.parent
    if target.startswith("."):
        candidates = [f"{scope}{target}" for scope in scopes]
    else:
        candidates = [target, *(f"{scope}.{target}" for scope in scopes)]
    for candidate in candidates:
        found = _find(pkg, candidate)
        if found is not None:
            return found
    if "." not in target.lstrip(".") or target.startswith(pkg.path + "."):
        return _by_name(pkg, target.rsplit(".", 1)[-1])
    return None


def _roles(pkg: griffe.Module, obj, text: str) -> str:
    def replace(match: re.Match) -> str:
        short, target = match.group(1), re.sub(r"\s+", "", match.group(2))
        shown = target.strip().lstrip(".")
        if short:
            shown = shown.rsplit(".", 1)[-1]
        found = _resolve(pkg, obj, target)
        if found is None:
            if target.lstrip(".~").split(".")[0] in ("", pkg.path) or "." not in target:
                UNRESOLVED.append((obj.path, target))
            return f"`{shown}`"
        if not _public(found):
            return f"`{shown}`"
        return f"[`{shown}`][{found.path}]"

    return _ROLE.sub(replace, text)


def _doctests(lines: list[str]) -> list[str]:
    out, block = [], []
    for line in lines:
        if line.startswith((">>>", "...")) or (block and line.strip()):
            block.append(line)
            continue
        if block:
            out += ["```pycon", *block, "```"]
            block = []
        out.append(line)
    if block:
        out += ["```pycon", *block, "```"]
    return out


def _table(lines: list[str]) -> list[str]:
    """reST simple tables (border, header, border, rows, border) as Markdown tables."""
    out, i = [], 0
    while i < len(lines):
        if not (_BORDER.match(lines[i]) and i + 2 < len(lines) and _BORDER.match(lines[i + 2])):
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        starts = [m.start() for m in re.finditer(r"=+", border)]

        def cells(line, starts=starts):
            bounds = [*starts[1:], None]
            return [line[a:b].strip() for a, b in zip(starts, bounds, strict=True)]

        header = cells(lines[i + 1])
        rows: list[list[str]] = []
        j = i + 3
        while j < len(lines) and not _BORDER.match(lines[j]):
            row = cells(lines[j])
            if rows and not row[0]:  # a continuation line of the previous row
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], row, strict=True)]
            elif any(row):
                rows.append(row)
            j += 1
        out += [
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
        i = j + 1
    return out


def _literal_markers(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if line.strip() == "::":
            continue
        out.append(line[:-1] if line.endswith("::") else line)
    return out


class ReSTIdioms(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        pending = [pkg]
        while pending:
            obj = pending.pop()
            if obj.is_alias:
                continue
            if obj.docstring is not None:
                lines = obj.docstring.value.split("\n")
                lines = _literal_markers(_table(_doctests(lines)))
                obj.docstring.value = _roles(pkg, obj, "\n".join(lines))
            pending.extend(obj.members.values())
