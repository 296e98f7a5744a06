"""The configuration reference, generated from the specs' field descriptions in config.py.

    python -m llava_platform.config_reference --out docs/configuration.md

One section per YAML section (`model:`, `data:`, `train:` ...), one table row per key: its type, its
default and its description, so the reference cannot drift from what `load()` accepts
(tests/test_config_reference.py checks that docs/configuration.md is what this writes today).
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from llava_platform.batch.spec import BatchJobSpec
from llava_platform.config import StrictModel, TrainJobSpec
from llava_platform.eval.spec import EvalJobSpec
from llava_platform.pipeline import PipelineSpec
from llava_platform.serve.spec import ServeAppSpec

__all__ = ["DOCUMENTED", "render", "undocumented_fields"]

# the files users write: (spec, the heading of its part of the reference, its sections documented by an earlier entry)
DOCUMENTED: list[tuple[type[StrictModel], str, tuple[str, ...]]] = [
    (TrainJobSpec, "Training job specs: `jobs.pretrain`, `jobs.finetune` (jobs/configs/*_pretrain.yaml, *_finetune.yaml)", ()),
    (ServeAppSpec, "Serve app `args` (serve_apps/*.yaml, `import_path: llava_platform.serve.app:build_app`)", ()),
    (BatchJobSpec, "Batch job specs: `jobs.batch_infer` (jobs/configs/*_batch.yaml)", ("model", "storage")),
    (EvalJobSpec, "Evaluation specs: `jobs.evaluate` (jobs/configs/eval/*.yaml)", ("model", "storage", "batch", "sampling")),
    (PipelineSpec, "Pipeline specs: `jobs.pipeline` (jobs/configs/*_pipeline.yaml)", ()),
]

HEADER = """# Configuration reference

Generated from the field descriptions in `platform/llava_platform/config.py`, `serve/spec.py`, `batch/spec.py`,
`eval/spec.py` and `pipeline.py` by
`python -m llava_platform.config_reference --out docs/configuration.md`; do not edit by hand.

Every key is typed; an unknown key, a wrong type or a missing required key stops the job before it
starts, naming the file, the dotted key and, for a misspelt key, the closest valid one. Any key can
be overridden on the command line as `section.key=value` (e.g. `train.lr=1e-4 data.path=s3://b/x.json`).
`jobs.build_model` reads a file with one `model:` section (jobs/configs/tiny.yaml), as in a job spec.
A Serve config's `args` are checked the same way when the app is built (`serve run` / `serve deploy`),
and beforehand by `python -m llava_platform.serve.config_check serve_apps/<config>.yaml`.
"""


def _nested(annotation: Any) -> type[StrictModel] | None:
    """The spec class a field holds (directly or as `X | None`), or None for a plain value."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation: Any) -> str:
    """A YAML-reader's name for a type: `one of a, b`, `list of string`, `float or null` ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple):
        inner = [_type_name(a) for a in args if a is not Ellipsis]
        if origin is tuple and len(inner) > 1:
            return f"[{', '.join(inner)}]"
        return f"list of {inner[0]}" if inner else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def _bounds(field: FieldInfo) -> str:
    words = {Gt: ("gt", ">"), Ge: ("ge", ">="), Lt: ("lt", "<"), Le: ("le", "<=")}
    parts = []
    for item in field.metadata:
        for kind, (attribute, sign) in words.items():
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, attribute)}")
        if getattr(item, "pattern", None):
            parts.append(f"matching `{item.pattern}`")
    return ", ".join(parts)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined or value is None:
        return "null"
    if isinstance(value, BaseModel):
        return "(its defaults)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _sections(spec: type[StrictModel], prefix: str) -> list[tuple[str, type[StrictModel]]]:
    """(dotted name, class) of `spec` and every section under it, depth first."""
    out = [(prefix, spec)]
    for name, field in spec.model_fields.items():
        nested = _nested(field.annotation)
        if nested is not None:
            out += _sections(nested, f"{prefix}.{name}" if prefix else name)
    return out


def _table(name: str, spec: type[StrictModel], scalars_only: bool = False) -> str:
    """One section's keys; the top level (`scalars_only`) lists only its plain keys, its sections follow."""
    title = f"### `{name}:`" if name else "### top level"
    lines = [title, "", _cell(spec.__doc__ or ""), "", "| key | type | default | description |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for key, field in spec.model_fields.items():
        if scalars_only and _nested(field.annotation) is not None:
            continue
        kind = _type_name(field.annotation)
        bounds = _bounds(field)
        kind = f"{kind} ({bounds})" if bounds else kind
        lines.append(f"| `{key}` | {_cell(kind)} | {_cell(_default(field))} | {_cell(field.description or '')} |")
    return "\n".join(lines)


def render() -> str:
    """docs/configuration.md, as the specs describe themselves today."""
    parts = [HEADER]
    for spec, heading, elsewhere in DOCUMENTED:
        parts.append(f"## {heading}")
        if elsewhere:
            parts.append("Also " + ", ".join(f"`{name}:`" for name in elsewhere) + ", as documented above.")
        if any(_nested(f.annotation) is None for f in spec.model_fields.values()):
            parts.append(_table("", spec, scalars_only=True))
        parts += [_table(name, section) for name, section in _sections(spec, "")[1:] if name.split(".")[0] not in elsewhere]
    return "\n\n".join(parts) + "\n"


def undocumented_fields() -> list[str]:
    """Dotted keys of the documented specs that have no description (the reference would show an empty cell)."""
    missing = []
    for spec, _, _ in DOCUMENTED:
        for name, section in _sections(spec, ""):
            for key, field in section.model_fields.items():
                if not field.description and _nested(field.annotation) is None:
                    missing.append(f"{name}.{key}" if name else key)
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="file to write (default: print)")
    args = parser.parse_args()
    text = render()
    if args.out is None:
        print(text, end="")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
