"""Write the synthetic demo dataset: moving shapes whose class depends on temporal order.

    python datasets/synthetic/make_synthetic.py --out data/synthetic --per-class 24
"""
import argparse
import json

from videomae.data.synthetic import CLASSES, make_synthetic_dataset

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic")
    parser.add_argument("--per-class", type=int, default=24, help="training videos per class")
    parser.add_argument("--val-per-class", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = make_synthetic_dataset(args.out, args.per_class, args.val_per_class, args.frames,
                                     args.height, args.width, seed=args.seed)
    print(json.dumps(summary), f"classes: {CLASSES}")
