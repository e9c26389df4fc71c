"""Fetches Coral's reference models and photos, the files the real-model tests use, into
``data/coral/`` (git-ignored), each checked against a pinned sha256.

Usage:
    python -m tests.fetch_data [--dest data/coral] [--base-url URL]
    make test-data

The files come from Coral's public test-data repository (github.com/google-coral/test_data,
Apache License 2.0). The tests look in ``../shared/reference/coral`` first, then in
``data/coral``; without either they are skipped with a reason naming ``make test-data``.
Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

BASE_URL = "https://raw.githubusercontent.com/google-coral/test_data/master/"
DEST = Path(__file__).resolve().parents[1] / "data" / "coral"

# name -> sha256 of the copy the tests were written against. A file that changes upstream
# fails here rather than silently changing what the tests check.
FILES: dict[str, str] = {
    "mobilenet_v2_1.0_224_quant.tflite":
        "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
    "tf2_mobilenet_v2_1.0_224_ptq.tflite":
        "5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c",
    "mobilenet_v2_1.0_224_inat_bird_quant.tflite":
        "350fcd8cf1df1560060d464595dfed8b174b05792788052896004848d9ad04f9",
    "mobilenet_v1_1.0_224_quant_embedding_extractor_edgetpu.tflite":
        "33a249155302975d7e28f72a5250903cdf7f7afb7bd1ceec3d2cd8ca9ce6a609",
    "imagenet_labels.txt":
        "b8aaeb5630c62626a7d124a05c0e14230a7ffdd2136a31d0190a4fb71c1d82f1",
    "inat_bird_labels.txt":
        "a16108dfe3f8daff015b87a97ab6a17e717b9b1bccd719f6d8f747746d7b9277",
    "bird.bmp": "3fd22d6ed352b8e721d9982e38ed655f8429e168bb53ad205c6f3cdfa848e994",
    "cat.bmp": "34f235786382686111728287fd26d4c24dd8c25de8233469d6eeb301888ce0a9",
    "grace_hopper.bmp": "c43444bf3b1b1e3080551ca194bd231da4b67f20fc91454502915a6b806b614f",
    "hot_dog.jpg": "ed6952e022eb71c0d0b1ff068dcee3abed056dfa1852f041c35f138c4ff15b2e",
    "parrot.jpg": "a8fba9e7e29439fa414c13129aad661f2289ff891231920a7c33641b076f1833",
}

EXIT_OK, EXIT_FAILED = 0, 1


class FetchError(Exception):
    """A file could not be downloaded or did not match its pinned sha256."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (the models are a few MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(dest: Path = DEST, base_url: str = BASE_URL, files: dict[str, str] | None = None,
          timeout: float = 60) -> list[Path]:
    """Downloads each file that is missing or wrong in ``dest`` and verifies its sha256.

    A file already present with the right hash is kept without a download. A download is
    written to a temporary file and moved into place only once its hash matches, so an
    interrupted or tampered download never leaves a file the tests would trust.

    Args:
        dest: folder to fill (created).
        base_url: where the files are; ``base_url + name`` is fetched (``file://`` works).
        files: name -> sha256; defaults to :data:`FILES`.
        timeout: seconds per request.

    Returns:
        The paths of all the files, now present and verified.

    Raises:
        FetchError: a download failed or a file's sha256 differs from the pinned one.
    """
    files = FILES if files is None else files
    dest.mkdir(parents=True, exist_ok=True)
    if not base_url.endswith("/"):
        base_url += "/"
    done = []
    for name, want in files.items():
        path = dest / name
        if path.is_file() and sha256(path) == want:
            done.append(path)
            continue
        url = base_url + name
        fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with urllib.request.urlopen(url, timeout=timeout) as r:
                        while chunk := r.read(1 << 20):
                            out.write(chunk)
                except (urllib.error.URLError, OSError, ValueError) as e:
                    reason = getattr(e, "reason", None) or e
                    raise FetchError(f"could not download {url}: {reason}") from None
            got = sha256(Path(tmp))
            if got != want:
                raise FetchError(f"{name}: sha256 {got}, expected {want} (from {url}); "
                                 "file not kept")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        print(f"fetched {name}", file=sys.stderr)
        done.append(path)
    return done


def main(argv: list[str] | None = None) -> int:
    """Command line: fetch into ``--dest``; one ``error:`` line and exit 1 on failure."""
    ap = argparse.ArgumentParser(
        prog="python -m tests.fetch_data", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    ap.add_argument("--dest", type=Path, default=DEST, help="folder to fill")
    ap.add_argument("--base-url", default=BASE_URL, help="where the files are")
    args = ap.parse_args(argv)
    try:
        paths = fetch(args.dest, args.base_url)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{len(paths)} files verified in {args.dest}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
