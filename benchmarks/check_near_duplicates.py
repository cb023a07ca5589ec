"""How often ``resnet check``'s near-duplicate rule is wrong, on real data with no planted copy,
and how many planted copies it finds.

    python benchmarks/check_near_duplicates.py pairs DATA --dataset flowers102 --out OUT/flowers
    python benchmarks/check_near_duplicates.py pairs DATA/cifar-10/train --out OUT/cifar --sample 120
    python benchmarks/check_near_duplicates.py planted DATA/cifar-10/train --count 1000

``pairs`` lists every pair of distinct files (by content) whose hashes match, as ``resnet check``
compares them, with what the colour rule says of it (``kept``: still a near pair; ``plain``: one of
the two has less detail than ``check.DETAIL_MIN``), in OUT/pairs.json. It also draws, for looking
at, side-by-side sheets (OUT/sheet-*.png, each pair numbered as in OUT/shown.json): a seeded
random sample of all the pairs, then every pair with a plain image, the pairs the rule now drops.
It reads the facts a check of the same data has kept (``RESNET_CACHE``), so run that check first.

``planted`` copies a seeded sample of the images (resized to 75% and saved at JPEG quality 75, to
50% at quality 60, 2% and 4% cropped off each side, 5% cut off one side), reads the copies as the
check reads files and prints the share of copies whose pair with their original each rule keeps.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from resnet.tools import check

COPIES = {
    "resized 75%, JPEG q75": lambda im: jpeg(im.resize(scaled(im, 0.75), Image.LANCZOS), 75),
    "resized 50%, JPEG q60": lambda im: jpeg(im.resize(scaled(im, 0.5), Image.LANCZOS), 60),
    "2% off each side": lambda im: jpeg(crop(im, 0.02, 0.02, 0.02), 90),
    "4% off each side": lambda im: jpeg(crop(im, 0.04, 0.04, 0.04), 90),
    "5% off one side": lambda im: jpeg(crop(im, 0.0, 0.05, 0.0), 90),
}


def scaled(image: Image.Image, factor: float) -> tuple[int, int]:
    return max(1, round(image.width * factor)), max(1, round(image.height * factor))


def crop(image: Image.Image, left: float, right: float, top_bottom: float) -> Image.Image:
    w, h = image.size
    box = (round(w * left), round(h * top_bottom), w - round(w * right), h - round(h * top_bottom))
    return image.crop(box).resize(image.size, Image.LANCZOS)


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def hash_pairs(facts: list[check.Facts], options: check.CheckOptions) -> np.ndarray:
    """(i, j, pHash distance) of the pairs the hashes match, as indices into ``facts``."""
    phashes = np.array([f.phash for f in facts], np.uint64)
    dhashes = np.array([f.dhash for f in facts], np.uint64)
    return check.near_pairs(phashes, dhashes, options.phash_max, options.both_max, workers=1)


def list_pairs(args: argparse.Namespace) -> None:
    options = check.CheckOptions(args.dataset, args.data_dir, progress=False)
    listing = check.list_dataset(options)
    facts, _ = check.read_facts(listing.paths, 1, progress=False)
    heads = [members[0] for members in check.by_content(facts)]
    found = hash_pairs([facts[i] for i in heads], options)
    kept = check.colour_agrees(found, [facts[i] for i in heads])
    pairs = []
    for (a, b, distance), keep in zip(found.tolist(), kept.tolist()):
        fa, fb = facts[heads[a]], facts[heads[b]]
        colour = np.abs(np.frombuffer(bytes.fromhex(fa.colour), np.uint8).astype(int)
                        - np.frombuffer(bytes.fromhex(fb.colour), np.uint8)).mean()
        pairs.append({"files": [check.member(listing, heads[a]), check.member(listing, heads[b])],
                      "phash": distance, "dhash": bin(fa.dhash ^ fb.dhash).count("1"),
                      "detail": [fa.detail, fb.detail], "colour": round(float(colour), 1),
                      "plain": min(fa.detail, fb.detail) < check.DETAIL_MIN, "kept": bool(keep)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.json").write_text(json.dumps(pairs, indent=1))
    sample = random.Random(args.seed).sample(pairs, min(args.sample, len(pairs)))
    shown = sample + [p for p in pairs if p["plain"] and p not in sample]
    (out / "shown.json").write_text(json.dumps(shown, indent=1))
    for start in range(0, len(shown), 20):
        sheet(shown[start:start + 20], start).save(out / f"sheet-{start // 20:02d}.png")
    print(f"{len(listing.paths):,} files, {len(pairs)} pairs matched by the hashes, {int(kept.sum())} kept, "
          f"{sum(p['plain'] for p in pairs)} with a plain image; {len(sample)} sampled; sheets in {out}")


def sheet(pairs: list[dict], first: int, side: int = 128) -> Image.Image:
    """Four pairs a row, each two images at ``side`` px with its number, distances and colour."""
    width, height = 2 * side + 12, side + 14
    rows = (len(pairs) + 3) // 4
    canvas = Image.new("RGB", (4 * width, rows * height), "white")
    draw = ImageDraw.Draw(canvas)
    for k, pair in enumerate(pairs):
        x, y = (k % 4) * width, (k // 4) * height
        for m, f in enumerate(pair["files"]):
            image = check.open_rgb(f["path"]).resize((side, side), Image.BICUBIC)
            canvas.paste(image, (x + m * (side + 2), y + 12))
        draw.text((x, y), f"#{first + k} p{pair['phash']} d{pair['dhash']} s{min(pair['detail']):.0f} "
                  f"c{pair['colour']:.0f}" + (" kept" if pair["kept"] else " dropped"), fill="black")
    return canvas


def planted(args: argparse.Namespace) -> None:
    options = check.CheckOptions(args.dataset, args.data_dir, progress=False)
    paths = random.Random(args.seed).sample(check.list_dataset(options).paths, args.count)
    originals = [check.inspect_file(p) for p in paths]
    with tempfile.TemporaryDirectory() as folder:
        for name, make in COPIES.items():
            found = {"hashes": 0, "hashes and colour rule": 0}
            for k, (path, original) in enumerate(zip(paths, originals)):
                copy = Path(folder) / f"{k}.jpg"
                copy.write_bytes(make(check.open_rgb(path)))
                pair = [original, check.inspect_file(str(copy))]
                matched = hash_pairs(pair, options)
                found["hashes"] += len(matched)
                found["hashes and colour rule"] += int(check.colour_agrees(matched, pair).sum())
            print(f"{name}: " + ", ".join(f"{rule} {n / len(paths):.1%}" for rule, n in found.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("pairs", "planted"))
    parser.add_argument("data_dir", metavar="DATA")
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--out", default="check-near-duplicates", help="pairs: where the list and sheets go")
    parser.add_argument("--sample", type=int, default=120, help="pairs: how many to draw at random")
    parser.add_argument("--count", type=int, default=1000, help="planted: how many images to copy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (list_pairs if args.mode == "pairs" else planted)(args)


if __name__ == "__main__":
    main()
