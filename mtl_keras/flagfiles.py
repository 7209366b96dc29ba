"""Flagfiles and the configs shipped in the package (mtl_keras/configs/NAME.flags).

`--config=NAME` names a shipped config (`quickstart`, `cifar10_study/a_vit_mu4`); `--config=PATH` and
`--flagfile=PATH` name a file. Both are expanded here, in place, before absl parses the arguments, so that a
nested `--flagfile=` line resolves relative to the file that holds it (absl would resolve it relative to the
working directory, which works only from one folder). Stdlib only: `mtl-keras configs` starts without
TensorFlow, and benchmarks/gpu_cifar.py uses it without absl.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SUFFIX = ".flags"
# absl's directive forms (FlagValues._is_flag_file_directive), plus --config.
_DIRECTIVES = {"flagfile": ("--flagfile", "-flagfile"), "config": ("--config", "-config")}


class FlagfileError(ValueError):
    """A config or flagfile that cannot be read; str() is one line starting with the flag."""


def names() -> list[str]:
    """Every shipped config's name: its path under CONFIG_DIR without `.flags`; top-level ones first, sorted."""
    found = (p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob(f"*{SUFFIX}"))
    return sorted(found, key=lambda name: ("/" in name, name))


def purpose(path: Path) -> str:
    """A flagfile's first comment line, without the `#`."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def shipped(name: str) -> Path | None:
    """The shipped config named `name` (`.flags` optional), or None."""
    path = CONFIG_DIR / (name if name.endswith(SUFFIX) else name + SUFFIX)  # not with_suffix: mtl_g0.1
    inside = path.resolve().is_relative_to(CONFIG_DIR)
    return path if inside and path.is_file() and not name.startswith(("/", "~")) else None


def unknown_name(flag: str, name: str) -> FlagfileError:
    """The one-line error for a config name that is not shipped: the closest names, or the choices."""
    all_names = names()
    close = difflib.get_close_matches(name.removesuffix(SUFFIX), all_names, n=4, cutoff=0.6)
    if close:
        hint = "did you mean " + ", ".join(close) + "?"
    else:
        # One line: the seed study's grid as one entry per trunk and dataset, a folder as FOLDER/...
        top = dict.fromkeys(re.sub(r"^(seed_.*?)_(mtl|stl)_.*", r"\1_*", n) for n in all_names if "/" not in n)
        folders = sorted({n.split("/")[0] + "/..." for n in all_names if "/" in n})
        hint = "choose one of " + ", ".join([*top, *folders])
    return FlagfileError(f"--{flag}={name}: no such config or file; {hint} (`mtl-keras configs` lists them)")


def resolve(value: str, base: Path | None = None) -> Path:
    """The flagfile `--config=value` names: a file (relative to `base`, default the working directory) if one
    exists there, else the shipped config of that name; FlagfileError otherwise."""
    path = Path(base or ".") / os.path.expanduser(value)
    if path.is_file():
        return path
    found = shipped(value) if value else None
    if found is None:
        raise unknown_name("config", value)
    return found


def _directive(arg: str) -> tuple[str, str | None] | None:
    """('flagfile' or 'config', its value or None when it is the next argument) for a directive, else None."""
    for kind, forms in _DIRECTIVES.items():
        for form in forms:
            if arg == form:
                return kind, None
            if arg.startswith(form + "="):
                return kind, arg[len(form) + 1:]
    return None


def _file_lines(path: Path, stack: tuple[Path, ...], config: bool) -> list[str]:
    """`path`'s flag lines, nested directives expanded relative to `path`'s folder (absl's comment rules)."""
    real = path.resolve()
    if real in stack:
        raise FlagfileError(f"--flagfile={path}: includes itself (through {' -> '.join(p.name for p in stack)})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FlagfileError(f"--flagfile={path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("#", "//"))]
    return _expand(lines, path.parent, (*stack, real), config)


def _expand(args: list[str], base: Path | None, stack: tuple[Path, ...], config: bool) -> list[str]:
    out: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        found = _directive(arg) if arg != "--" else None
        if arg == "--":  # the end of the flags, as absl and getopt
            return out + [arg] + rest
        if found is None or found[0] == "config" and not config:
            out.append(arg)
            continue
        kind, value = found
        if value is None:
            if not rest:
                raise FlagfileError(f"--{kind} needs a value: --{kind}=NAME")
            value = rest.pop(0)
        if kind == "config":
            path = resolve(value, base)
        else:
            path = Path(base or ".") / os.path.expanduser(value)
            if not path.is_file() and not stack:
                path = _legacy_config_path(value) or path
            if not path.is_file():
                where = f" (from {stack[-1]})" if stack else ""
                raise FlagfileError(f"--flagfile={value}: no such file{where}")
        out += _file_lines(path, stack, config)
    return out


def _legacy_config_path(value: str) -> Path | None:
    """The shipped config a top-level `--flagfile=configs/NAME.flags` names when no such file exists: the
    configs lived in the repository's configs/ folder before they moved into the package, and that command
    is in use; it now works from any folder."""
    parts = Path(value).parts
    if len(parts) > 1 and parts[0] == "configs" and value.endswith(SUFFIX):
        return shipped(Path(*parts[1:]).as_posix())
    return None


def expand(argv: list[str], config: bool = True) -> list[str]:
    """`argv` (program name first) with every `--flagfile=PATH` and, when `config`, `--config=NAME|PATH`
    replaced in place by the file's flag lines; top-level paths are relative to the working directory, nested
    ones to the file that holds them. FlagfileError (one line) for a missing file or unknown name, or a loop."""
    return argv[:1] + _expand(argv[1:], None, (), config)


# ---------------------------------------------------------------------------- mtl-keras configs

USAGE = "usage: mtl-keras configs [show NAME | copy NAME DEST]"


def _copy_text(path: Path) -> str:
    """A shipped config's text for a copy elsewhere: its nested `--flagfile=` lines (relative to the package's
    configs folder) become `--config=NAME`, so the copy works from wherever it is saved."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        found = _directive(line.strip())
        if found and found[0] == "flagfile" and found[1]:
            target = (path.parent / found[1]).resolve()
            if target.is_relative_to(CONFIG_DIR):
                line = f"--config={target.relative_to(CONFIG_DIR).with_suffix('').as_posix()}\n"
        out.append(line)
    return "".join(out)


def command(args: list[str]) -> int:
    """`mtl-keras configs [show NAME | copy NAME DEST]`: exit status 0, or 2 with one line on stderr."""
    import sys

    def fail(line: str) -> int:
        print(f"mtl-keras configs: error: {line}", file=sys.stderr)
        return 2

    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if not args:
        all_names = names()
        width = max(map(len, all_names))
        for name in all_names:
            print(f"{name:<{width}}  {purpose(CONFIG_DIR / (name + SUFFIX))}")
        return 0
    action, rest = args[0], args[1:]
    arity = {"show": 1, "copy": 2}
    if action not in arity:
        return fail(f"unknown action {action!r}; choose one of show, copy ({USAGE})")
    if len(rest) != arity[action]:
        return fail(USAGE)
    path = shipped(rest[0])
    if path is None:
        return fail(str(unknown_name("config", rest[0])).replace("--config=", "", 1))
    if action == "show":
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    dest = Path(os.path.expanduser(rest[1]))
    if dest.is_dir():
        dest = dest / path.name
    if dest.exists() or dest.is_symlink():
        return fail(f"{dest} exists; it is not overwritten (give another DEST, or remove it first)")
    if not dest.parent.is_dir():
        return fail(f"{dest.parent} is not a folder")
    try:
        with open(dest, "x", encoding="utf-8") as f:  # "x": never replaces a file made meanwhile
            f.write(_copy_text(path))
    except OSError as e:
        return fail(f"{dest} cannot be written ({e.strerror or e})")
    print(f"copied {rest[0]} to {dest}; train with: mtl-keras train --config={dest}")
    return 0
