"""Jinja2 templates for every prompt the harness sends.

Built-in templates live in ``pd/prompts/templates/<name>.j2``. Any of them can be
replaced from config (``prompts: {<name>: path/to/file.j2}``), so a user can drop in
the paper's exact wording without touching code.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from pd.errors import ConfigError
from pd.io import read_text

TEMPLATE_DIR = Path(__file__).parent / "templates"
_env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
_overrides: dict[str, Path] = {}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.j2"))


def set_overrides(overrides: dict[str, str] | None) -> None:
    """Install config overrides ``{name: path}``; unknown names and missing files are errors."""
    _overrides.clear()
    for name, path in (overrides or {}).items():
        if name not in builtin_names():
            raise ConfigError(f"prompts.{name}: no such prompt; allowed: {', '.join(builtin_names())}")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"prompts.{name}: template file {p} does not exist")
        _overrides[name] = p


def template_source(name: str) -> str:
    path = _overrides.get(name) or TEMPLATE_DIR / f"{name}.j2"
    if not path.is_file():
        raise ConfigError(f"unknown prompt template {name!r}; allowed: {', '.join(builtin_names())}")
    return read_text(path)


def render(name: str, **variables) -> str:
    """Render a template; a variable the template uses but the caller omits is an error."""
    try:
        return _env.from_string(template_source(name)).render(**variables).strip()
    except jinja2.UndefinedError as err:
        raise ConfigError(f"prompt template {name!r}: {err.message}") from None
