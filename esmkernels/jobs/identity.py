"""What a `--model` is: where it resolves to, and a fingerprint of its files.

A resumable job must know whether a rerun uses the same model, whatever the spelling
(`med_esm2`, `./med_esm2/`, `/data/med_esm2`, from another working directory) and refuse a
rerun whose weights changed at the same path. `model_identity(spec)` answers both: the resolved
source (the real absolute path, or `org/name@commit` for a Hub snapshot) and one fingerprint per
file that makes up the model. Two identities are the same model when their fingerprints are
equal (`same_model`); the source is only reported.

Which `--model` text is tried where (`resolve_model`, the one rule of every command):
an existing local file or directory is used as it is; a plain Hub id `org/name` (no file
suffix such as `.pt`, no `..`) that does not exist locally is downloaded through
`huggingface_hub` when it is installed; anything else is "no such file or directory".

The fingerprint (measured, see below) is a SHA-256 of, per file: its size, and
* for small files (at most 16 MiB: config.json, vocab.txt, shard indexes) the whole content;
* for larger weight files the first 1 MiB (the safetensors header with every tensor's name,
  dtype, shape and offsets; a zip's first entries), the last 64 KiB (a zip's directory) and
  256 blocks of 16 KiB evenly spaced through the file: 5.1 MiB read, whatever the size.

Why sampled and not a full hash: a full SHA-256 read 1 GiB in 1.8 s on the development machine
(page cache warm, load average 3.6), so 15 s for ESMFold's 8.4 GB and about 2 minutes for
ESM-2 15B on every rerun, cold disks slower; the sample took 11 ms for 1 GiB. Retrained,
fine-tuned or converted weights change almost every block, so the sample sees them; a size,
dtype or shape change is in the header. What it can miss: an in-place edit confined to less
than about one 16 KiB block in 4,000 (a single small tensor such as a classifier head), which
also keeps the file size. Size and modification time alone are not used: a copy with
`cp -p` or a download keeps both while changing the content.

Example:
    >>> ident = model_identity("checkpoints/esm2_t6_8M_UR50D")  # doctest: +SKIP
    >>> ident.source, sorted(ident.files)  # doctest: +SKIP
    ('/data/checkpoints/esm2_t6_8M_UR50D', ['config.json', 'model.safetensors', 'vocab.txt'])
    >>> same_model(ident.settings(), model_identity("/data/checkpoints/esm2_t6_8M_UR50D/").settings())  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from esmkernels.core.checkpoint import is_hub_id, resolve_path

__all__ = [
    "FINGERPRINT",
    "ModelIdentity",
    "describe_model_change",
    "fingerprint_file",
    "is_hub_id",
    "model_identity",
    "resolve_model",
    "same_model",
]

FINGERPRINT = "sha256-sampled/1"  # the method's name, stored with the fingerprints
SMALL_FILE = 16 << 20  # files up to this size are hashed whole
HEAD, TAIL = 1 << 20, 64 << 10
BLOCKS, BLOCK = 256, 16 << 10

# The files of an HF directory that determine a model's numbers (weights, config, vocabulary).
_MODEL_FILES = re.compile(
    r"^(config\.json|vocab\.txt|tokenizer_config\.json|special_tokens_map\.json"
    r"|.*\.safetensors|.*\.safetensors\.index\.json|.*\.bin|.*\.bin\.index\.json|.*\.pt)$"
)


def fingerprint_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's size and content, sampled above `SMALL_FILE` bytes (module
    docstring)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as f:
        if size <= SMALL_FILE:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        else:
            h.update(f.read(HEAD))
            for k in range(BLOCKS):
                f.seek(HEAD + k * (size - HEAD - TAIL - BLOCK) // (BLOCKS - 1))
                h.update(f.read(BLOCK))
            f.seek(size - TAIL)
            h.update(f.read(TAIL))
    return h.hexdigest()


def resolve_model(spec: str | os.PathLike, revision: str | None = None) -> Path:
    """The local path of a `--model` (the rule of the module docstring); a Hub id is downloaded
    (or found in the Hub cache).

    Raises:
        FileNotFoundError: "no such file or directory", for a missing path that is not a plain
            Hub id, or a Hub id when huggingface_hub is not installed.
        OSError: a Hub download failed (offline, unknown repo).
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if not is_hub_id(text):
        raise FileNotFoundError(f"{text}: no such file or directory")
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise FileNotFoundError(
            f"{text}: no such file or directory (and huggingface_hub, which would download it "
            "as a Hub id, is not installed: pip install 'esmkernels[hub]')"
        ) from None
    return resolve_path(text, revision=revision)


@dataclass(frozen=True)
class ModelIdentity:
    """A resolved `--model`: `spec` as written, `path` (local, resolved), `source` (the real
    path, or `org/name@commit` for a Hub snapshot) and `files` ({name: fingerprint})."""

    spec: str
    path: Path
    source: str
    files: dict[str, str]

    def settings(self) -> dict:
        """The JSON value a job stores as its `model` setting."""
        return {"source": self.source, "fingerprint": FINGERPRINT, "files": dict(self.files)}


def model_identity(spec: str | os.PathLike, revision: str | None = None) -> ModelIdentity:
    """Resolve `spec` (`resolve_model`) and fingerprint the files that make up the model.

    A directory contributes its config, vocabulary and weight files (not READMEs or other
    files beside them); a fair-esm `.pt` file itself and its `-contact-regression.pt`
    companion when present. Symbolic links (the Hub cache's) are followed.

    Raises:
        FileNotFoundError, OSError: as `resolve_model`.
        ValueError: a directory that holds no model files.
    """
    path = resolve_model(spec, revision)
    real = Path(os.path.realpath(path))
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if _MODEL_FILES.match(p.name))
        if not names:
            raise ValueError(f"{os.fspath(spec)}: the directory holds no model files")
        files = {n: fingerprint_file(path / n) for n in names if (path / n).is_file()}
    else:
        files = {path.name: fingerprint_file(path)}
        companion = path.with_name(path.stem + "-contact-regression.pt")
        if path.suffix in (".pt", ".pth") and companion.is_file():
            files[companion.name] = fingerprint_file(companion)
    source = str(real)
    hub = re.search(r"/models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]+)$", str(path))
    if hub is not None and not Path(os.fspath(spec)).expanduser().exists():
        source = f"{hub.group(1)}/{hub.group(2)}@{hub.group(3)}"
    return ModelIdentity(os.fspath(spec), real if hub is None else path, source, files)


def same_model(stored: object, current: object) -> bool:
    """Whether two stored `model` settings name the same model: equal fingerprints (however
    the model was spelled or wherever it now lives)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        keys = ("fingerprint", "files")
        return all(stored.get(k) == current.get(k) for k in keys)
    return stored == current


def describe_model_change(stored: object, current: object) -> str:
    """One line naming how two `model` settings differ (files added, removed or changed)."""
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return f"model: {stored!r} -> {current!r}"
    if stored.get("fingerprint") != current.get("fingerprint"):
        return (
            f"model: fingerprinted with {stored.get('fingerprint')!r}, this version uses "
            f"{current.get('fingerprint')!r}"
        )
    old, new = stored.get("files", {}), current.get("files", {})
    changes = [
        f"{n} changed {old[n][:12]} -> {new[n][:12]}" for n in old if n in new and old[n] != new[n]
    ]
    changes += [f"{n} removed" for n in old if n not in new]
    changes += [f"{n} added" for n in new if n not in old]
    where = stored.get("source")
    here = current.get("source")
    at = f"at {here}" if where == here else f"{where} -> {here}"
    return f"model: other weights {at} ({', '.join(changes)})"
