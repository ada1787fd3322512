"""Readers for data the user already has on disk, in the layouts torchvision uses, plus plain .npz.

No downloads, no torchvision. CIFAR pickles are unpickled only after the file's md5 matches
torchvision's table, and then with an unpickler that admits numpy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np

from spikecompress.data.common import (
    MAX_ABS,
    Arrays,
    DataError,
    check_classes,
    check_labels,
    check_values,
    stratified_split,
)

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# torchvision's md5 of every file (torchvision/datasets/cifar.py)
CIFAR_MD5 = {
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}
CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", 100),
}


def _require_root(root: str | os.PathLike | None, name: str, layout: str) -> Path:
    if root is None:
        raise DataError(f"{name}: DataConfig.root is required: a folder holding {layout}")
    return Path(root).expanduser()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (the MNIST format; ``.gz`` read transparently): an array of the
    header's shape and dtype. Raises DataError naming the file on a bad magic number or size."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    head = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:head], dtype=">u4")) if ndim else ()
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    if len(raw) < head or len(raw) - head != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(f"{path}: size {len(raw)} bytes does not match its IDX header {shape}")
    arr = np.frombuffer(raw, dtype=dtype, offset=head).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _find_idx(folder: Path, name: str, layout: str) -> Path:
    """``folder/name``, else ``folder/name.gz``; DataError naming the expected path and layout."""
    for path in (folder / name, folder / (name + ".gz")):
        if path.is_file():
            return path
    raise DataError(f"missing {folder / name}; expected the torchvision layout {layout}")


def mnist_family_arrays(name: str, root: str | os.PathLike | None) -> Arrays:
    """MNIST, Fashion-MNIST or KMNIST from torchvision's layout ``<root>/<Folder>/raw/`` (IDX
    files, uncompressed or .gz): images [N, 1, 28, 28] float32 in [0, 1], labels int64; the
    official 60,000 / 10,000 split."""
    folder_name = MNIST_FOLDERS[name]
    layout = (f"<root>/{folder_name}/raw/{{train,t10k}}-images-idx3-ubyte and "
              f"{{train,t10k}}-labels-idx1-ubyte")
    raw = _require_root(root, name, layout) / folder_name / "raw"
    out = []
    for split in ("train", "test"):
        img_path, lab_path = (_find_idx(raw, f, layout) for f in MNIST_FILES[split])
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{img_path}: images {images.shape} do not match labels {labels.shape}")
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise DataError(f"{img_path}: expected uint8 images and labels (torchvision's layout), "
                            f"got {images.dtype} and {labels.dtype}")
        if labels.size and int(labels.max()) >= 10:
            raise DataError(f"{lab_path}: label {int(labels.max())} is not one of the 10 classes")
        out += [(images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)]  # [N,1,H,W]
    return Arrays(*out, classes=10)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits the globals a numpy array needs and refuses every other one."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        import importlib

        try:  # numpy >= 2 keeps its internals in numpy._core, numpy 1 in numpy.core
            mod = importlib.import_module(module.replace("numpy.core", "numpy._core"))
        except ImportError:
            mod = importlib.import_module(module.replace("numpy._core", "numpy.core"))
        return getattr(mod, name)


def load_verified_pickle(path: Path, md5: str, layout: str) -> dict:
    """md5-check ``path`` against ``md5`` first, then unpickle it with numpy-only globals
    (``encoding="latin1"``, as the Python 2 CIFAR pickles need). DataError names the file."""
    if not path.is_file():
        raise DataError(f"missing {path}; expected the torchvision layout {layout}")
    raw = path.read_bytes()
    digest = hashlib.md5(raw).hexdigest()
    if digest != md5:
        raise DataError(f"{path}: md5 {digest} does not match torchvision's {md5} (corrupt file?)")
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # md5 matched, so this means an unexpected numpy pickle layout
        raise DataError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def cifar_arrays(name: str, root: str | os.PathLike | None) -> Arrays:
    """CIFAR-10 or CIFAR-100 (fine labels) from torchvision's python-pickle layout under ``root``:
    images [N, 3, 32, 32] float32 in [0, 1] (no mean/std normalisation), labels int64. Every
    file, the meta file included, must match torchvision's md5 before it is read."""
    folder, train_files, test_files, meta, label_key, classes = CIFAR_LAYOUT[name]
    layout = f"<root>/{folder}/{{{','.join(train_files + test_files + [meta])}}}"
    base = _require_root(root, name, layout) / folder
    load_verified_pickle(base / meta, CIFAR_MD5[f"{folder}/{meta}"], layout)
    out = []
    for files in (train_files, test_files):
        xs, ys = [], []
        for f in files:
            batch = load_verified_pickle(base / f, CIFAR_MD5[f"{folder}/{f}"], layout)
            if "data" not in batch or label_key not in batch:
                raise DataError(f"{base / f}: missing key 'data' or {label_key!r}")
            data = np.asarray(batch["data"], dtype=np.uint8)
            xs.append(data.reshape(-1, 3, 32, 32))  # [n, 3072] -> [n, 3, 32, 32], channel-major
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        out += [np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)]
    return Arrays(*out, classes=classes)


NPZ_KEYS = ("x", "y", "x_test", "y_test")
NPZ_LAYOUT = "an .npz with arrays 'x' (N, ...) and 'y' (N,), optionally 'x_test' and 'y_test'"


def npz_arrays(
    path: str | os.PathLike | None, seed: int = 0, max_abs: float = MAX_ABS
) -> Arrays:
    """The user's own data from an .npz holding ``x`` [N, ...] and ``y`` [N] integer labels, and
    optionally ``x_test`` / ``y_test``; without them, a seeded stratified 80/20 split. ``x`` is
    taken as float32 as is (scale it to [0, 1] yourself for poisson/latency coding).

    Refused with a one-line DataError naming the file and the array: a missing or unknown array,
    non-numeric, NaN, inf or beyond-``max_abs`` values, labels that are not integers >= 0,
    classes 0..C-1 that never occur in ``y`` (C = the largest label + 1), test labels ``y`` lacks,
    and shapes that disagree."""
    data = _read_npz(path)
    src = str(Path(path).expanduser())
    x, y = data["x"], check_labels(data["y"], src, "y")
    _check_pair(x, y, src, "x", "y", max_abs)
    if "x_test" in data:
        x_test, y_test = data["x_test"], check_labels(data["y_test"], src, "y_test")
        _check_pair(x_test, y_test, src, "x_test", "y_test", max_abs)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{src}: 'x_test' samples are {x_test.shape[1:]}, 'x' samples "
                            f"{x.shape[1:]}")
        classes = check_classes(y, y_test, src)
    else:
        classes = check_classes(y, y[:0], src)
        if len(y) < 2:
            raise DataError(f"{src}: {len(y)} sample cannot be split 80/20 into train and test; "
                            "add samples or give 'x_test' and 'y_test'")
        tr, te = stratified_split(y, 0.2, seed)
        x, y, x_test, y_test = x[tr], y[tr], x[te], y[te]
    return Arrays(np.asarray(x, dtype=np.float32), y, np.asarray(x_test, dtype=np.float32),
                  y_test, classes=classes)


def _read_npz(path: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path`` (never unpickling), after checking the array names."""
    if path is None:
        raise DataError(f"npz: DataConfig.root must be the path of {NPZ_LAYOUT}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"missing {path}; expected {NPZ_LAYOUT}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a single .npy array, not {NPZ_LAYOUT}")
        with z:
            data = {k: z[k] for k in z.files}
    except DataError:
        raise
    except Exception as e:  # zip, zlib and numpy-header errors alike: the file is not readable
        raise DataError(f"cannot read {path} as {NPZ_LAYOUT}: {_first_line(e)}") from None
    for key in ("x", "y") + (("y_test",) if "x_test" in data else ()):
        if key not in data:
            raise DataError(f"{path}: missing array {key!r}; expected {NPZ_LAYOUT}")
    if "y_test" in data and "x_test" not in data:
        raise DataError(f"{path}: 'y_test' without 'x_test'; give both or neither")
    unknown = sorted(set(data) - set(NPZ_KEYS))
    if unknown:
        raise DataError(f"{path}: unexpected array {unknown[0]!r}; expected {NPZ_LAYOUT}")
    return data


def _check_pair(x: np.ndarray, y: np.ndarray, src: str, xkey: str, ykey: str,
                max_abs: float) -> None:
    check_values(x, src, xkey, max_abs)
    if len(x) != len(y):
        raise DataError(f"{src}: {xkey!r} has {len(x)} samples but {ykey!r} has {len(y)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
