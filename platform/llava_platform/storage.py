"""Files wherever they live: local paths, s3:// (AWS or any S3-compatible store), gs://, through pyarrow.fs.

    storage = Storage(spec.storage)                       # StorageSpec: endpoint_url, region, anonymous
    storage.read_bytes("s3://bucket/llava/coco/0001.jpg")
    storage.join("s3://bucket/llava", "coco/0001.jpg")    # -> "s3://bucket/llava/coco/0001.jpg"
    fs, path = storage.filesystem("s3://bucket/shards")   # for Ray Data's readers and writers

Credentials come from the environment, the way each SDK reads them (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, ~/.aws or an instance role; GOOGLE_APPLICATION_CREDENTIALS
or the metadata server): nothing secret is written in a spec. A Storage pickles as its spec, so it
travels to Ray tasks small; each process opens its own filesystems.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from llava_platform.config import StorageSpec

__all__ = ["FileStamp", "Storage", "is_uri", "CHECKPOINT_CACHE"]

# where a checkpoint named by URI is copied on each node (Serve replicas, batch actors); LLAVA_CHECKPOINT_CACHE moves it
CHECKPOINT_CACHE = Path(os.environ.get("LLAVA_CHECKPOINT_CACHE", Path.home() / ".cache" / "llava_platform" / "checkpoints"))
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # what a copy for a processor alone leaves out


def is_uri(path: str) -> bool:
    """s3://, gs://, hdfs:// ... (a local path, absolute or relative, is not)."""
    return "://" in str(path)


@dataclass(frozen=True)
class FileStamp:
    """What says a file changed: its size and modification time (the cache keys of the data check)."""

    size: int
    mtime_ns: int


class Storage:
    def __init__(self, spec: StorageSpec | None = None):
        self.spec = spec or StorageSpec()
        self._filesystems: dict[str, pafs.FileSystem] = {}

    def __getstate__(self) -> dict:
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and other.spec == self.spec

    # ------------------------------------------------------------------ paths

    def filesystem(self, path: str) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem that holds `path`, and the path as that filesystem names it."""
        path = str(path)
        if not is_uri(path):
            return self._get("local", pafs.LocalFileSystem), os.path.abspath(os.path.expanduser(path))
        scheme = urlparse(path).scheme
        inner = path.split("://", 1)[1]
        if scheme == "s3":
            return self._get("s3", self._s3), inner
        if scheme in ("gs", "gcs"):
            return self._get("gs", lambda: pafs.GcsFileSystem(anonymous=self.spec.anonymous)), inner
        if scheme == "file":
            return self._get("local", pafs.LocalFileSystem), inner
        fs, inner = pafs.FileSystem.from_uri(path)  # hdfs:// and the like, configured by the URI itself
        return fs, inner

    def _get(self, key: str, make) -> pafs.FileSystem:
        if key not in self._filesystems:
            self._filesystems[key] = make()
        return self._filesystems[key]

    def _s3(self) -> pafs.S3FileSystem:
        kwargs: dict = {"region": self.spec.region, "anonymous": self.spec.anonymous}
        if self.spec.endpoint_url:
            endpoint = urlparse(self.spec.endpoint_url)
            kwargs |= {"endpoint_override": endpoint.netloc, "scheme": endpoint.scheme}
        return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})

    @staticmethod
    def join(base: str | None, relative: str) -> str:
        """`relative` under `base` (a folder or URI); an absolute path or a URI stands for itself."""
        relative = str(relative)
        if base is None or is_uri(relative) or os.path.isabs(relative):
            return relative
        base = str(base)
        return f"{base.rstrip('/')}/{relative}" if is_uri(base) else os.path.join(base, relative)

    # ------------------------------------------------------------------ reading

    def stat(self, path: str) -> FileStamp | None:
        """Size and modification time of a file; None if there is no file there."""
        return self.stat_many([path])[0]

    def stat_many(self, paths: list[str]) -> list[FileStamp | None]:
        """stat() of many files, one filesystem call per filesystem (S3: its requests run in parallel)."""
        out: list[FileStamp | None] = [None] * len(paths)
        groups: dict[int, tuple[pafs.FileSystem, list[int], list[str]]] = {}
        for i, path in enumerate(paths):
            fs, inner = self.filesystem(path)
            _, positions, inners = groups.setdefault(id(fs), (fs, [], []))
            positions.append(i)
            inners.append(inner)
        for fs, positions, inners in groups.values():
            for i, info in zip(positions, fs.get_file_info(inners)):
                if info.type == pafs.FileType.File:
                    out[i] = FileStamp(int(info.size), int(info.mtime_ns or 0))
        return out

    def exists(self, path: str) -> bool:
        fs, inner = self.filesystem(path)
        return fs.get_file_info(inner).type != pafs.FileType.NotFound

    def open_input(self, path: str):
        """A random-access file (seek / read / read_at / size); a missing file raises FileNotFoundError."""
        fs, inner = self.filesystem(path)
        return fs.open_input_file(inner)

    def read_bytes(self, path: str) -> bytes:
        with self.open_input(path) as f:
            return f.read()

    def list_files(self, folder: str) -> list[str]:
        """Every file under `folder` (recursively), as paths or URIs of the same kind as `folder`."""
        fs, inner = self.filesystem(folder)
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
        prefix = folder.split("://", 1)[0] + "://" if is_uri(folder) else ""
        return sorted(prefix + i.path for i in infos if i.type == pafs.FileType.File)

    def local_copy(self, folder: str, cache_root: str | os.PathLike, skip_suffixes: tuple[str, ...] = ()) -> str:
        """A local path holding `folder`: itself when local, else a copy of what is there now, made once per node
        under cache_root/<bucket>/<key>@<version>, the version a hash of the files' names, sizes and modification
        times (a folder written again, e.g. a re-trained final/, is copied again, never served stale). The
        processes of a node (a Serve replica, batch actors) take turns on a lock file: the first copies into a
        hidden folder renamed whole, the others find it done. `skip_suffixes`: files not copied (a driver that
        needs a checkpoint's processor, not its weights)."""
        if not is_uri(folder):
            return folder
        fs, inner = self.filesystem(folder)
        root = inner.rstrip("/") + "/"
        listing = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
        files = [(i.path.removeprefix(root), i) for i in listing
                 if i.type == pafs.FileType.File and not i.path.endswith(skip_suffixes)]  # () skips nothing
        if not files:
            raise FileNotFoundError(f"{folder}: no files there; check the URI (and storage.* for its store)")
        version = hashlib.sha1(repr(sorted((r, i.size, i.mtime_ns) for r, i in files)).encode()).hexdigest()[:12]
        local = os.path.join(os.fspath(cache_root), f"{inner.strip('/')}@{version}")
        if os.path.isdir(local):
            return local  # complete: a copy is renamed into place only when whole
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(f"{local}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a killed process's closes
            if os.path.isdir(local):
                return local  # another process copied it while this one waited
            tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
            for relative, info in files:
                os.makedirs(os.path.dirname(os.path.join(tmp, relative)), exist_ok=True)
                pafs.copy_files(info.path, os.path.join(tmp, relative), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())  # fmt: skip
            os.rename(tmp, local)
        return local

    def local_checkpoint(self, checkpoint: str, weights: bool = True) -> str:
        """A checkpoint as this node reads it: itself when local (or a hub id), else its node copy under
        CHECKPOINT_CACHE (local_copy); `weights=False`: a copy of its processor and spec files only, for a driver
        that reads the processor and template but runs no model."""
        if weights:
            return self.local_copy(checkpoint, CHECKPOINT_CACHE)
        return self.local_copy(checkpoint, CHECKPOINT_CACHE / "processors", skip_suffixes=WEIGHT_SUFFIXES)

    # ------------------------------------------------------------------ writing

    def open_output(self, path: str):
        """A new file (replacing any); local parent folders are made (object stores have none)."""
        fs, inner = self.filesystem(path)
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(inner), exist_ok=True)
        return fs.open_output_stream(inner)

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.open_output(path) as f:
            f.write(data)

    def upload_folder(self, local: str | os.PathLike, uri: str) -> str:
        """Every file under the local folder to `uri`/..., replacing what is there; returns `uri`. Files go one by one
        (an object store has no folder to rename into place), llava_platform.yaml and provenance.json last: a
        checkpoint folder holding its llava_platform.yaml was uploaded whole."""
        files = sorted((p for p in Path(local).rglob("*") if p.is_file()),
                       key=lambda p: (p.name in ("llava_platform.yaml", "provenance.json"), str(p)))  # fmt: skip
        self.delete_dir(uri)
        for path in files:
            with open(path, "rb") as f, self.open_output(self.join(uri, path.relative_to(local).as_posix())) as out:
                while chunk := f.read(64 << 20):
                    out.write(chunk)
        return uri

    def delete_dir(self, path: str) -> None:
        """Remove a folder and everything under it (nothing there: nothing to do)."""
        fs, inner = self.filesystem(path)
        if fs.get_file_info(inner).type != pafs.FileType.NotFound:
            fs.delete_dir(inner)
