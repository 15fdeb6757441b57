"""Dataset preparation scripts and the video checker, run as a user runs them."""
import json
import shutil
import subprocess
import sys
from pathlib import Path


from videomae.data import read_video_list

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, check=True):
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True,
                            text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


def test_ssv2_prepare(tmp_path, synthetic_root):
    ann, videos = tmp_path / "ann", tmp_path / "videos"
    ann.mkdir()
    videos.mkdir()
    labels = {"Moving something from left to right": "0", "Putting something on a surface": "1"}
    (ann / "something-something-v2-labels.json").write_text(json.dumps(labels))
    train = [{"id": "11", "label": "moving a cup from left to right",
              "template": "Moving [something] from left to right", "placeholders": ["a cup"]},
             {"id": "12", "label": "putting a pen on a surface", "template": "Putting [something] on a surface",
              "placeholders": ["a pen"]}]
    val = [{"id": "21", "label": "x", "template": "Putting [something] on a surface", "placeholders": ["x"]}]
    (ann / "something-something-v2-train.json").write_text(json.dumps(train))
    (ann / "something-something-v2-validation.json").write_text(json.dumps(val))
    for vid in ("11", "12", "21"):
        shutil.copy(synthetic_root / "videos" / "train_00_000.mp4", videos / f"{vid}.webm")
    run("datasets/ssv2/prepare.py", "--annotations", ann, "--videos", videos, "--out", tmp_path / "lists")
    recs = read_video_list(tmp_path / "lists" / "train.csv", videos, num_classes=2)
    assert [(Path(r.path).name, r.label) for r in recs] == [("11.webm", 0), ("12.webm", 1)]
    assert (tmp_path / "lists" / "test.csv").read_text() == "21.webm 1\n"
    # a missing video beyond the tolerance is an error naming the folder
    (videos / "12.webm").unlink()
    result = run("datasets/ssv2/prepare.py", "--annotations", ann, "--videos", videos, "--out",
                 tmp_path / "lists", "--allow-missing", "0", check=False)
    assert result.returncode != 0 and "missing" in result.stderr


def test_kinetics_prepare_reports_missing(tmp_path, synthetic_root):
    csv = tmp_path / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n"
                   "abseiling,aaa,10,20,train\nzumba,bbb,0,10,train\nabseiling,ccc,5,15,train\n")
    videos = tmp_path / "videos"
    (videos / "zumba").mkdir(parents=True)
    shutil.copy(synthetic_root / "videos" / "train_00_000.mp4", videos / "aaa_000010_000020.mp4")
    shutil.copy(synthetic_root / "videos" / "train_00_001.mp4", videos / "zumba" / "bbb_000000_000010.mp4")
    out = tmp_path / "lists"
    result = run("datasets/kinetics/prepare.py", "--csv", csv, "--split-name", "train", "--videos", videos,
                 "--root", videos, "--out", out)
    assert "1 missing" in result.stdout
    assert (out / "train.csv").read_text() == "aaa_000010_000020.mp4 0\nzumba/bbb_000000_000010.mp4 1\n"
    assert (out / "train_missing.txt").read_text() == "ccc_000005_000015.mp4\n"
    assert json.loads((out / "classes.json").read_text()) == {"abseiling": 0, "zumba": 1}


def kinetics_layout(tmp_path, synthetic_root, ext="mp4"):
    """/data/k400/{train,val}/<clip>.<ext> with the official csv of each split."""
    data = tmp_path / "k400"
    clips = {"train": [("abseiling", "aaa"), ("zumba", "bbb")], "val": [("zumba", "ccc")]}
    for split, rows in clips.items():
        (data / split).mkdir(parents=True)
        lines = ["label,youtube_id,time_start,time_end,split"]
        for i, (label, vid) in enumerate(rows):
            shutil.copy(synthetic_root / "videos" / f"train_00_{i:03d}.mp4", data / split / f"{vid}_000000_000010.{ext}")
            lines.append(f"{label},{vid},0,10,{split}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return data


def test_kinetics_lists_share_one_root(tmp_path, synthetic_root):
    """Every split's list resolves under one DATA.ROOT, the parent of the split folders by default."""
    data = kinetics_layout(tmp_path, synthetic_root)
    for split in ("train", "val"):
        run("datasets/kinetics/prepare.py", "--csv", tmp_path / f"{split}.csv", "--split-name", split,
            "--videos", data / split, "--out", data / "lists", "--classes-from", tmp_path / "train.csv")
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        records = read_video_list(data / "lists" / f"{split}.csv", data, num_classes=2)
        assert len(records) == count and all(Path(r.path).is_file() for r in records), split
        assert all(Path(r.path).parent.name == ("train" if split == "train" else "val") for r in records)
    assert (data / "lists" / "val.csv").read_text() == "val/ccc_000000_000010.mp4 1\n"
    # a --root that does not hold the split's folder is one line
    result = run("datasets/kinetics/prepare.py", "--csv", tmp_path / "val.csv", "--split-name", "val",
                 "--videos", data / "val", "--root", data / "train", "--out", tmp_path / "x", check=False)
    assert result.returncode != 0 and "is not inside --root" in result.stderr


def test_reencode_rewrites_the_list(tmp_path, synthetic_root):
    """.webm -> .mp4: the rewritten list names the new files under --out, with the labels kept."""
    data = kinetics_layout(tmp_path, synthetic_root, ext="webm")
    run("datasets/kinetics/prepare.py", "--csv", tmp_path / "train.csv", "--split-name", "train",
        "--videos", data / "train", "--out", data / "lists_src", "--ext", "webm")
    source = (data / "lists_src" / "train.csv").read_text()
    assert source == "train/aaa_000000_000010.webm 0\ntrain/bbb_000000_000010.webm 1\n"
    (data / "train" / "bbb_000000_000010.webm").write_bytes(b"not a video")
    out = tmp_path / "k400_small"
    result = run("datasets/reencode.py", "--list", data / "lists_src" / "train.csv", "--root", data, "--out", out,
                 "--list-out", data / "lists" / "train.csv", "--short-side", "32", "--workers", "1", check=False)
    assert result.returncode == 1 and "1 failed" in result.stdout
    assert (data / "lists" / "train.csv").read_text() == "train/aaa_000000_000010.mp4 0\n"
    records = read_video_list(data / "lists" / "train.csv", out, num_classes=2)
    assert [Path(r.path) for r in records] == [out / "train" / "aaa_000000_000010.mp4"] and records[0].label == 0
    assert "bbb_000000_000010.webm" in (out / "reencode_failures.txt").read_text()
    assert (data / "lists_src" / "train.csv").read_text() == source   # the input list is left as it was


def test_check_videos_lists_the_bad_ones(tmp_path, synthetic_root):
    good = synthetic_root / "videos" / "train_03_000.mp4"
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(good.read_bytes()[:2000])
    (tmp_path / "empty.mp4").write_bytes(b"")
    listing = tmp_path / "list.csv"
    listing.write_text(f"{good} 3\n{truncated} 1\nempty.mp4 2\n")
    result = run("tools/check_videos.py", "--list", listing, "--root", tmp_path, "--workers", "2",
                 "--out", tmp_path / "bad.txt", "--write-clean", tmp_path / "clean.csv", check=False)
    assert result.returncode == 1 and "2 bad" in result.stdout
    bad = (tmp_path / "bad.txt").read_text()
    assert "cut.mp4" in bad and "empty.mp4" in bad and f"{listing}:2" in bad
    assert "(unreadable 2)" in result.stdout
    assert (tmp_path / "clean.csv").read_text() == f"{good} 3\n"


def write_video(path, num_frames, keyint=8):
    import numpy as np

    from videomae.data.synthetic import render_clip, write_mp4

    write_mp4(path, render_clip(1, num_frames, 48, 64, np.random.default_rng(0)), keyint=keyint)
    return path


def corrupt_frames(path, first, last):
    """Overwrite the packets of frames first..last (presentation order) with random bytes: the
    container and every other frame stay intact."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size)
    data = bytearray(Path(path).read_bytes())
    rng = np.random.default_rng(1)
    for _, pos, size in packets[first:last + 1]:
        data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    Path(path).write_bytes(bytes(data))


def test_full_check_finds_a_mid_stream_corruption(tmp_path):
    """48 frames in GOPs of 8; the GOP of frames 32-39 is garbage. The quick check decodes frames 0, 24
    and 47 (other GOPs) and passes the file; --full decodes every frame and reports it. The quick
    check runs on PyAV, which decodes only what is asked: decord's read-ahead thread may or may not
    reach the damaged GOP, so its quick check passes such a file only most of the time."""
    video = write_video(tmp_path / "damaged.mp4", 48)
    corrupt_frames(video, 32, 39)
    listing = tmp_path / "list.csv"
    listing.write_text("damaged.mp4 0\n")
    quick = run("tools/check_videos.py", "--list", listing, "--root", tmp_path, "--workers", "1", "--backend",
                "pyav", check=False)
    assert quick.returncode == 0 and "1 of 1 videos decode" in quick.stdout, quick.stdout + quick.stderr
    for backend in ("pyav", "decord"):
        full = run("tools/check_videos.py", "--list", listing, "--root", tmp_path, "--workers", "1", "--full",
                   "--backend", backend, "--out", tmp_path / "bad.txt", check=False)
        assert full.returncode == 1 and "0 of 1 videos decode; 1 bad (decode 1)" in full.stdout, full.stdout
        where, path, reason, _ = (tmp_path / "bad.txt").read_text().rstrip("\n").split("\t")
        assert (where, path, reason) == (f"{listing}:1", str(tmp_path / "damaged.mp4"), "decode"), backend


def test_check_a_folder(tmp_path, synthetic_root):
    """Every video under a folder, recursively (other files ignored); counts per reason; the clean
    list is relative to the folder."""
    folder = tmp_path / "mine"
    (folder / "a" / "b").mkdir(parents=True)
    shutil.copy(synthetic_root / "videos" / "train_00_000.mp4", folder / "good.mp4")
    shutil.copy(synthetic_root / "videos" / "train_01_000.mp4", folder / "a" / "b" / "GOOD2.MP4")
    write_video(folder / "a" / "short.mp4", 3)
    corrupt_frames(write_video(folder / "a" / "b" / "damaged.mp4", 48), 32, 39)
    (folder / "a" / "broken.webm").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("not a video, not checked")
    result = run("tools/check_videos.py", "--folder", folder, "--workers", "2", "--full", "--min-frames", "8",
                 "--write-clean", tmp_path / "clean.csv", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 of 5 videos decode; 3 bad (unreadable 1, too_short 1, decode 1)" in result.stdout
    bad = {line.split("\t")[0]: line.split("\t")[2] for line in (tmp_path / "mine.bad.txt").read_text().splitlines()}
    assert bad == {"a/broken.webm": "unreadable", "a/short.mp4": "too_short", "a/b/damaged.mp4": "decode"}
    assert (tmp_path / "clean.csv").read_text() == "a/b/GOOD2.MP4 -1\ngood.mp4 -1\n"
    assert len(read_video_list(tmp_path / "clean.csv", folder, allow_unlabeled=True)) == 2


def test_reencode_short_side_and_keyframes(tmp_path, sample_videos):
    from videomae.data import open_video

    src = Path(sample_videos["carphone_pristine.mp4"])
    listing = tmp_path / "list.csv"
    listing.write_text(f"{src.name} 0\n")
    run("datasets/reencode.py", "--list", listing, "--root", src.parent, "--out", tmp_path / "out",
        "--short-side", "96", "--keyint", "8", "--workers", "1")
    out = tmp_path / "out" / src.name
    assert (tmp_path / "out" / "list.csv").read_text() == f"{src.name} 0\n"   # the default --list-out
    reader = open_video(out)
    assert reader.get_frames([0]).shape == (1, 96, 118, 3)
    assert len(reader) == len(open_video(src))
    import av
    with av.open(str(out)) as container:
        keyframes = sum(p.is_keyframe for p in container.demux(video=0) if p.size)
    assert keyframes >= len(reader) // 8
