"""Kinetics (400/600/700): official csv -> VideoMAE lists.

    python datasets/kinetics/prepare.py --csv kinetics400/train.csv --split-name train \
        --videos /data/k400/train --root /data/k400 --out /data/k400/lists \
        --classes-from kinetics400/train.csv

Paths in the lists are relative to --root (default: the parent of --videos), so one `DATA.ROOT`
(/data/k400) resolves every split: `train/<clip>.mp4`, `val/<clip>.mp4`. Run it once per split with
the same --root and --out.

The official csv has the columns `label,youtube_id,time_start,time_end,split`; files are looked up
as `<youtube_id>_<start:06d>_<end:06d>.<ext>` (the common download layout) or `<youtube_id>.<ext>`,
in --videos or in a `<label>/` sub-folder. Class indices follow the sorted label names of
--classes-from (the train csv), so every split agrees. Missing videos are reported in
`<split>_missing.txt` -- a large share of YouTube videos no longer exists.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def read_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                sys.exit(f"error: {path} lacks the columns {missing} (expected {','.join(COLUMNS)},split)")
            return list(reader)
    except FileNotFoundError:
        sys.exit(f"error: {path} not found")


def candidate_names(row: dict, ext: str) -> list[str]:
    start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
    return [f"{stem}.{ext}", f"{row['label']}/{stem}.{ext}", f"{row['youtube_id']}.{ext}",
            f"{row['label']}/{row['youtube_id']}.{ext}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--split-name", required=True, help="train, val or test: names the output list")
    parser.add_argument("--videos", type=Path, required=True, help="this split's video folder")
    parser.add_argument("--root", type=Path, help="folder the list paths are relative to, the configs' "
                        "DATA.ROOT; must hold --videos (default: the parent of --videos)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes-from", type=Path, help="csv whose labels define the class index "
                        "(default: --csv)")
    parser.add_argument("--ext", default="mp4")
    args = parser.parse_args(argv)

    root = (args.root or args.videos.resolve().parent).resolve()
    try:
        prefix = args.videos.resolve().relative_to(root)
    except ValueError:
        sys.exit(f"error: --videos {args.videos} is not inside --root {root}: list paths are relative to "
                 "--root (DATA.ROOT), so it must hold every split's folder")
    rows = read_rows(args.csv)
    label_rows = read_rows(args.classes_from) if args.classes_from else rows
    classes = {name: i for i, name in enumerate(sorted({r["label"] for r in label_rows}))}
    args.out.mkdir(parents=True, exist_ok=True)
    present, missing = [], []
    for number, row in enumerate(rows, start=2):
        if row["label"] not in classes:
            sys.exit(f"error: {args.csv}:{number}: label {row['label']!r} is not among the "
                     f"{len(classes)} classes of {args.classes_from or args.csv}")
        found = next((n for n in candidate_names(row, args.ext) if (args.videos / n).exists()), None)
        if found is None:
            missing.append((prefix / candidate_names(row, args.ext)[0]).as_posix())
        else:
            present.append(f"{(prefix / found).as_posix()} {classes[row['label']]}\n")
    (args.out / f"{args.split_name}.csv").write_text("".join(present))
    (args.out / f"{args.split_name}_missing.txt").write_text("".join(f"{m}\n" for m in missing))
    (args.out / "classes.json").write_text(json.dumps(classes, indent=1))
    if args.split_name == "val" and not (args.out / "test.csv").exists():
        (args.out / "test.csv").write_text("".join(present))
    share = len(missing) / max(len(rows), 1)
    print(f"{args.split_name}: {len(present)} videos found, {len(missing)} missing ({share:.1%}); "
          f"{len(classes)} classes; lists in {args.out} (DATA.LIST_DIR), paths relative to {root} "
          "(DATA.ROOT)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
