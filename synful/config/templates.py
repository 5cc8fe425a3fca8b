"""Writing configs: commented ini templates, filled templates, resolved configs and the README key reference.

All three are generated from the section dataclasses (their ``doc`` metadata), so they cannot drift.
"""

from __future__ import annotations

import dataclasses
import io
import types
import typing
from pathlib import Path

from ..io.files import write_text
from .keys import ConfigError, _format_value, _hints, _type_name, default_of, has_default, section_name
from .sections import (EMBEDDING_PREDICT_SECTIONS, EMBEDDING_TRAIN_SECTIONS, PREDICT_SECTIONS, TRAIN_SECTIONS,
                       TRANSMITTER_PREDICT_SECTIONS, TRANSMITTER_TRAIN_SECTIONS, WORKER_SECTIONS)

#: every config file synful reads: (file name, its sections); configs/ templates and README reference, in order
CONFIG_FILES = (("train_config.ini", TRAIN_SECTIONS), ("predict_config.ini", PREDICT_SECTIONS),
                ("worker_config.ini", WORKER_SECTIONS),
                ("transmitter_train_config.ini", TRANSMITTER_TRAIN_SECTIONS),
                ("transmitter_predict_config.ini", TRANSMITTER_PREDICT_SECTIONS),
                ("embedding_train_config.ini", EMBEDDING_TRAIN_SECTIONS),
                ("embedding_predict_config.ini", EMBEDDING_PREDICT_SECTIONS))


def _hint_text(cls, f) -> str:
    tp = _hints(cls)[f.name]
    origin = typing.get_origin(tp)
    opt = origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    if opt:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    text = _type_name(tp)
    if f.metadata.get("choices"):
        text = "one of " + ", ".join(f.metadata["choices"])
    if opt:
        text += ", or None"
    return text


def render_template(sections: tuple, values: dict | None = None) -> str:
    """A commented ini text for ``sections``; ``values`` ({section name: {key: value}}) override defaults.

    Each key is preceded by a comment with its doc, type and default.  A
    required key without value is written commented out.
    """
    values = values or {}
    out = io.StringIO()
    for i, cls in enumerate(sections):
        name = section_name(cls)
        if i:
            out.write("\n")
        out.write(f"# {cls.__doc__.strip().splitlines()[0]}\n[{name}]\n")
        over = values.get(name, {})
        for f in dataclasses.fields(cls):
            default = default_of(f)
            dtext = _format_value(default) if has_default(f) else "required"
            out.write(f"# {f.metadata['doc']} ({_hint_text(cls, f)}; default: {dtext})\n")
            if f.name in over:
                out.write(f"{f.name} = {_format_value(over[f.name])}\n")
            elif has_default(f):
                out.write(f"{f.name} = {_format_value(default)}\n")
            else:
                out.write(f"# {f.name} =\n")
    return out.getvalue()


def fill_template(text: str, values: dict) -> str:
    """Set keys in an ini template text, keeping its comments.

    ``values`` is {section name: {key: value}}.  A key line (possibly commented
    out as ``# key =``) inside its section is replaced; a key absent from the
    section is appended to it.  Unknown sections raise ConfigError.
    """
    lines = text.splitlines()
    pending = {s: dict(kv) for s, kv in values.items()}
    current = None
    out: list[str] = []

    def flush(section):
        for k, v in pending.pop(section, {}).items():
            out.append(f"{k} = {_format_value(v)}")

    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if current is not None:
                # insert leftovers before trailing comments/blank lines of the previous section
                tail = []
                while out and (out[-1].strip() == "" or out[-1].lstrip().startswith("#")):
                    tail.insert(0, out.pop())
                flush(current)
                out.extend(tail)
            current = stripped[1:-1]
            out.append(line)
            continue
        if current in pending:
            body = stripped.lstrip("#;").strip() if stripped.startswith(("#", ";")) else stripped
            if "=" in body:
                k = body.split("=", 1)[0].strip()
                is_key_line = not stripped.startswith(("#", ";")) or body.endswith("=")
                if is_key_line and k in pending[current]:
                    out.append(f"{k} = {_format_value(pending[current].pop(k))}")
                    continue
        out.append(line)
    if current is not None:
        flush(current)
    if pending:
        raise ConfigError(f"template has no section [{next(iter(pending))}]")
    return "\n".join(out) + "\n"


def write_config(path, *sections) -> Path:
    """Write section instances (resolved values) as a commented ini file; atomically."""
    path = Path(path)
    values = {section_name(type(s)): dataclasses.asdict(s) for s in sections}
    for name, kv in values.items():
        for k, v in kv.items():
            if isinstance(v, list) and v and isinstance(v[0], list):
                kv[k] = [tuple(x) for x in v]
    text = render_template(tuple(type(s) for s in sections), values)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, text)


def config_reference_markdown() -> str:
    """The README's reference of every config key, generated from the dataclasses."""
    out = io.StringIO()
    for fname, sections in CONFIG_FILES:
        for cls in sections:
            out.write(f"#### `{fname}` [{section_name(cls)}]\n\n| key | type | default | meaning |\n|---|---|---|---|\n")
            for f in dataclasses.fields(cls):
                d = _format_value(default_of(f)) if has_default(f) else "*required*"
                out.write(f"| `{f.name}` | {_hint_text(cls, f)} | `{d}` | {f.metadata['doc']} |\n")
            out.write("\n")
    return out.getvalue()


def write_templates(out_dir) -> list[Path]:
    """Write the commented templates train/predict/worker_config.ini into ``out_dir`` (configs/)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, sections in CONFIG_FILES:
        (out_dir / name).write_text(render_template(sections))
        written.append(out_dir / name)
    return written


README_BEGIN = "<!-- config reference: generated by `python -m synful.config --readme README.md` -->"
README_END = "<!-- end of config reference -->"


def update_readme(readme) -> bool:
    """Replace the config reference between the README markers; True if the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    new = text[:start] + "\n\n" + config_reference_markdown() + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text
