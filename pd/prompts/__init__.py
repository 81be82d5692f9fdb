"""Jinja2 templates for every prompt the harness sends.

Built-in templates live in ``pd/prompts/templates/<name>.j2``. Any of them can be
replaced from config (``prompts: {<name>: path/to/file.j2}``), so a user can drop in
the paper's exact wording without touching code.

A config may come from someone else (``pd ask`` and ``pd inject`` read ``./config.yaml``
on their own), so every template is compiled and rendered in Jinja2's immutable sandbox:
a template reaches no attribute that starts with ``_`` and calls no method that changes
its data, so ``{{ cycler.__init__.__globals__.os.popen('id') }}`` raises instead of running.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import jinja2.nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pd.errors import ConfigError
from pd.io import read_text

TEMPLATE_DIR = Path(__file__).parent / "templates"
_env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
_overrides: dict[str, Path] = {}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.j2"))


def set_overrides(overrides: dict[str, str] | None) -> None:
    """Install config overrides ``{name: path}``; unknown names and missing files are errors (unsafe: at render)."""
    _overrides.clear()
    for name, path in (overrides or {}).items():
        if name not in builtin_names():
            raise ConfigError(f"prompts.{name}: no such prompt; allowed: {', '.join(builtin_names())}")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"prompts.{name}: template file {p} does not exist")
        _overrides[name] = p


def template_problem(source: str) -> str | None:
    """Why a template may not be used, or None: it must compile, name no ``_`` attribute, and render in the sandbox.

    The render uses placeholder values for every variable (anything may be looked up on
    them), so only what the sandbox itself refuses fails, whatever the variables' values.

    Args:
        source: the template's text.

    Returns:
        None for a usable template, else a phrase (``not valid Jinja2: ...``, ``refused by the sandbox: ...``).
    """
    try:
        tree = _env.parse(source)
    except jinja2.TemplateSyntaxError as err:
        return f"not valid Jinja2: line {err.lineno}: {err.message}"
    for node in tree.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        attr = node.attr if isinstance(node, jinja2.nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(attr, str) and attr.startswith("_"):
            return f"refused by the sandbox: line {node.lineno} reads the private attribute {attr!r}"
    placeholder = ImmutableSandboxedEnvironment(undefined=jinja2.ChainableUndefined, autoescape=False)
    try:
        placeholder.from_string(source).render()
    except SecurityError as err:
        return f"refused by the sandbox: {err}"
    except Exception:  # noqa: BLE001 (placeholders may break a filter; only the sandbox's verdict counts here)
        return None
    return None


def template_source(name: str) -> str:
    path = _overrides.get(name) or TEMPLATE_DIR / f"{name}.j2"
    if not path.is_file():
        raise ConfigError(f"unknown prompt template {name!r}; allowed: {', '.join(builtin_names())}")
    return read_text(path)


def render(name: str, **variables) -> str:
    """Render a template in the sandbox; a variable the template uses but the caller omits is an error.

    Raises:
        ConfigError: a variable is missing, or the template does what the sandbox forbids.
    """
    try:
        return _env.from_string(template_source(name)).render(**variables).strip()
    except jinja2.UndefinedError as err:
        raise ConfigError(f"prompt template {name!r}: {err.message}") from None
    except SecurityError as err:
        raise ConfigError(f"prompt template {name!r} refused by the sandbox: {err}") from None
