"""docs/config.md from videomae/engine/config.py: every key with its default and the comment written
next to it in config.py (comment-only lines right below an assignment continue its comment).

    python tools/ci/config_doc.py           # rewrite docs/config.md
    python tools/ci/config_doc.py --check   # exit 1 when docs/config.md is not what config.py gives

The defaults come from the CfgNode itself, the descriptions from the source: a key added to
config.py appears here (with an empty description when it has no comment) without touching this
script. The source is parsed, never executed beyond importing the package.
"""
from __future__ import annotations

import argparse
import ast
import io
import os
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT / "videomae" / "engine" / "config.py"
TARGET = ROOT / "docs" / "config.md"
COMMAND = "python tools/ci/config_doc.py"


def _dotted(node) -> str | None:
    """`C.MODEL.NAME` -> "MODEL.NAME"; None for any other target."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "C" and parts:
        return ".".join(reversed(parts))
    return None


def source_comments(text: str) -> dict[str, str]:
    """key -> its comment: the comments on the assignment's lines, then those of the comment-only
    lines that follow it."""
    comments, code_lines = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                                tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    found = {}
    for node in ast.parse(text).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        key = _dotted(node.targets[0])
        if key is None:
            continue
        lines = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        after = node.end_lineno + 1
        while after in comments and after not in code_lines:
            lines.append(comments[after])
            after += 1
        found[key] = " ".join(line for line in lines if line)
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(value) -> str:
    return f"`{value!r}`"


def render() -> str:
    from fvcore.common.config import CfgNode

    from videomae.engine import config

    described = source_comments(SOURCE.read_text(encoding="utf-8"))
    defaults = config.get_defaults()
    out = ["# Config reference", "",
           f"Generated from `videomae/engine/config.py` by `{COMMAND}`; edit the comments there, not this",
           "file. A YAML config sets any of these keys (`_BASE_` inherits another file) and the command line",
           "overrides them as `KEY VALUE` pairs; `tools/train.py --config X --print-config` shows the result.", ""]
    top = [(k, v) for k, v in defaults.items() if not isinstance(v, CfgNode)]
    sections = [(k, v) for k, v in defaults.items() if isinstance(v, CfgNode)]
    for title, prefix, node in [("Top level", "", dict(top))] + [(k, f"{k}.", v) for k, v in sections]:
        out.append(f"## {title}")
        out.append("")
        if prefix and described.get(title):
            out += [described[title], ""]
        out += ["| key | default | description |", "|---|---|---|"]
        for key, value in node.items():
            full = prefix + key
            if isinstance(value, CfgNode):   # a deeper section: its keys inline, dotted
                rows = [(f"{full}.{k}", v) for k, v in value.items()]
            else:
                rows = [(full, value)]
            for name, default in rows:
                text = described.get(name, "")
                choices = config._CHOICES.get(name)
                if choices:
                    text = (text + "; " if text else "") + "one of " + ", ".join(f"`{c}`" for c in choices)
                out.append(f"| `{name}` | {_cell(_default(default))} | {_cell(text)} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with docs/config.md instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{os.path.relpath(TARGET)} is out of date with videomae/engine/config.py; regenerate it: {COMMAND}",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
