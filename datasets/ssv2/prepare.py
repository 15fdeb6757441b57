"""Something-Something-V2: official annotations -> VideoMAE lists.

    python datasets/ssv2/prepare.py --annotations /data/ssv2/annotations \
        --videos /data/ssv2/videos --out /data/ssv2/lists

Reads `something-something-v2-labels.json` (template -> class index),
`something-something-v2-train.json` and `-validation.json` (entries with `id` and `template`),
writes `train.csv`, `val.csv`, `test.csv` (= val, as VideoMAE) with `<id>.webm <label>` lines
relative to --videos, and `classes.json`. Videos not on disk are reported and left out
(`missing.txt`); --allow-missing 0 makes any missing video an error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def template_key(template: str) -> str:
    # the labels file spells templates without the brackets around "something"
    return template.replace("[", "").replace("]", "")


def load_entries(path: Path, classes: dict[str, int]) -> list[tuple[str, int]]:
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"error: {path} not found (the official SSv2 annotation folder has it)")
    out = []
    for number, entry in enumerate(entries):
        key = template_key(entry.get("template", ""))
        if key not in classes:
            sys.exit(f"error: {path} entry {number} (id {entry.get('id')}): template {key!r} is not in "
                     "something-something-v2-labels.json")
        out.append((str(entry["id"]), classes[key]))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=Path, required=True, help="folder with the official json files")
    parser.add_argument("--videos", type=Path, required=True, help="folder with <id>.webm")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ext", default="webm")
    parser.add_argument("--allow-missing", type=float, default=0.01,
                        help="largest share of missing videos tolerated (default 1%%)")
    args = parser.parse_args(argv)

    labels_file = args.annotations / "something-something-v2-labels.json"
    if not labels_file.exists():
        sys.exit(f"error: {labels_file} not found")
    classes = {name: int(index) for name, index in json.loads(labels_file.read_text()).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    on_disk = {p.name for p in args.videos.iterdir()} if args.videos.is_dir() else set()
    if not on_disk:
        sys.exit(f"error: no videos in {args.videos}")
    missing_all = []
    for split, name in (("train", "train"), ("val", "validation")):
        entries = load_entries(args.annotations / f"something-something-v2-{name}.json", classes)
        present = [(f"{vid}.{args.ext}", label) for vid, label in entries if f"{vid}.{args.ext}" in on_disk]
        missing = [f"{vid}.{args.ext}" for vid, _ in entries if f"{vid}.{args.ext}" not in on_disk]
        missing_all += missing
        with open(args.out / f"{split}.csv", "w") as handle:
            handle.writelines(f"{path} {label}\n" for path, label in present)
        print(f"{split}: {len(present)} videos, {len(missing)} missing")
        if len(missing) > args.allow_missing * len(entries):
            sys.exit(f"error: {len(missing)} of {len(entries)} {split} videos are missing from {args.videos}")
    (args.out / "test.csv").write_text((args.out / "val.csv").read_text())
    ordered = sorted(classes, key=classes.get)
    (args.out / "classes.json").write_text(json.dumps({name: classes[name] for name in ordered}, indent=1))
    (args.out / "missing.txt").write_text("".join(f"{m}\n" for m in missing_all))
    print(f"{len(classes)} classes; lists in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
