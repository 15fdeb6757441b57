"""docs/config.md is what tools/ci/config_doc.py makes of videomae/engine/config.py."""

from helpers import load_tool

from videomae.engine.config import _all_keys, get_defaults


config_doc = load_tool("tools/ci/config_doc.py")


def test_config_doc_is_current():
    committed = config_doc.TARGET.read_text(encoding="utf-8") if config_doc.TARGET.exists() else ""
    assert committed == config_doc.render(), (
        f"docs/config.md is out of date with videomae/engine/config.py; regenerate it: {config_doc.COMMAND}")


def test_every_key_is_documented_with_its_comment():
    text = config_doc.render()
    for key in _all_keys(get_defaults()):
        assert f"| `{key}` |" in text, key
    row = next(line for line in text.splitlines() if line.startswith("| `TRAIN.BATCH_SIZE` |"))
    assert row == "| `TRAIN.BATCH_SIZE` | `32` | videos per process per micro-step |"


def test_comments_are_read_from_the_source():
    """Same-line comments, comment-only lines below an assignment, a '#' inside a string."""
    source = ('C = CfgNode()\nC.A = CfgNode()   # section\nC.A.X = 1   # one\n            # two\n\n'
              '# a comment of its own, not X\'s\nC.A.Y = "#x"  # three\nC.A.Z = (1,\n         2)  # four\n'
              'C.A.W = 0\nother.B = 1  # not a key\n')
    assert config_doc.source_comments(source) == {"A": "section", "A.X": "one two", "A.Y": "three", "A.Z": "four",
                                                  "A.W": ""}
