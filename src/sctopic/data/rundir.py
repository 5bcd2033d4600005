"""A command's output directory as one unit: staged, swapped in whole, described by a manifest.

``sctopic fit``, ``transfer``, ``select-k`` and ``bench`` write every file of a run into a
hidden sibling of the output directory (``.<name>.sctopic-tmp-<host>-<pid>-<token>``) and make
it visible in one step at the end (:class:`RunWriter`):

* a new output directory is the staging directory renamed;
* an existing one (a previous run of the same command, replaced with ``--overwrite``) is
  exchanged with the staging directory in one ``renameat2(RENAME_EXCHANGE)`` call on Linux
  (elsewhere two renames through ``.<name>.sctopic-old-...``), and the old files are deleted.

A failed or killed run therefore leaves the previous outputs as they were. Temporaries left by
a killed run (their process is gone) are deleted by the next run for the same directory; if a
kill fell between the two renames of the fallback, the previous outputs are put back.

Every run writes ``manifest.json`` last (:func:`write_manifest`): the run id, the command, a
hash of its settings, a fingerprint of its input data, and each file with its size and SHA-256.
Readers call :func:`verify` (or :func:`verify_input`) and get a one-line
:class:`~sctopic.errors.InputError` naming the first file that does not match; directories
written before manifests existed (no ``manifest.json``) are read as they are.

A writing command refuses an output directory that holds a different command's run, or files
that are not a sctopic run at all (it never deletes them), and replaces a run of its own kind
only with ``overwrite=True`` (``--overwrite``); see :func:`check_target`.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sctopic.data.io import fsync_path, jsonable, write_text_atomic
from sctopic.errors import InputError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sctopic-run"
MANIFEST_VERSION = 1
#: staging and old-directory names: ``.<name>.sctopic-<tmp|old>-<host>-<pid>-<token>``
_TMP, _OLD = "tmp", "old"

#: command -> kind of run it writes (``demo`` writes what ``fit`` writes)
KINDS = {"fit": "fit", "demo": "fit", "transfer": "transfer", "select-k": "select-k", "bench": "bench"}
#: how directories written before manifests are recognised: file -> kind (first match wins)
LEGACY_MARKERS = (("model.pt", "fit"), ("transfer.json", "transfer"), ("train.json", "fit"),
                  ("stability.json", "select-k"), ("results.csv", "bench"), ("bench_config.json", "bench"))
#: files a reader would take for a run's output: never accepted beside a manifest that lacks them
KNOWN_OUTPUTS = ("model.pt", "result.h5ad", "train.json", "transfer.json", "stability.json",
                 "stability.tsv", "results.csv", "table.md")
#: a resumable training run keeps its checkpoint in the output directory (see ``sctopic fit``)
CHECKPOINT = "checkpoint.pt"


# ---------------------------------------------------------------------- small helpers
def new_run_id() -> str:
    """A unique, sortable run id: UTC time, process id and a random suffix."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}-{secrets.token_hex(3)}"


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the settings as canonical JSON (sorted keys; numpy values made plain)."""
    text = json.dumps(jsonable(dict(settings)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def input_file_info(path: str | os.PathLike | None) -> dict[str, Any]:
    """Path, size and modification time of an input file (cheap; no read)."""
    if path is None:
        return {}
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return {"path": str(path)}
    return {"path": str(p.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def host_tag() -> str:
    """A short hash of this machine's host name (part of temporary folder names)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_name(target: Path, what: str) -> Path:
    return target.parent / f".{target.name}.sctopic-{what}-{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temporaries(target: Path, what: str) -> list[tuple[Path, bool]]:
    """``(path, stale)`` of the staging (``tmp``) or old (``old``) directories of ``target``.

    Stale: written on this host by a process that no longer runs. Directories of other hosts
    (a shared file system) are never called stale.
    """
    prefix = f".{target.name}.sctopic-{what}-"
    out = []
    if not target.parent.is_dir():
        return out
    for p in target.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        parts = p.name[len(prefix):].split("-")
        stale = False
        if len(parts) == 3 and parts[0] == host_tag() and parts[1].isdigit():
            pid = int(parts[1])
            stale = pid != os.getpid() and not _pid_alive(pid)
        out.append((p, stale))
    return sorted(out, key=lambda t: t[0].stat().st_mtime if t[0].exists() else 0, reverse=True)


def stale_staging(target: str | os.PathLike) -> list[Path]:
    """Staging directories of ``target`` left by killed runs on this host, newest first."""
    return [p for p, stale in _temporaries(Path(target), _TMP) if stale]


def clean_stale(target: str | os.PathLike, keep: Iterable[Path] = ()) -> list[Path]:
    """Delete the temporaries of ``target`` left by killed runs on this host; return them.

    If ``target`` is missing and a stale old directory exists (a kill between the two renames
    of a swap), that directory holds the previous outputs: it is moved back, not deleted.
    """
    target = Path(target)
    keep = {Path(k) for k in keep}
    removed = []
    for p, stale in _temporaries(target, _OLD):
        if not stale:
            continue
        if not target.exists():
            os.rename(p, target)  # put the previous complete outputs back
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    for p, stale in _temporaries(target, _TMP):
        if stale and p not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


# ---------------------------------------------------------------------- manifests
def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a run directory, or None when it has none (written by older versions).

    Raises
    ------
    InputError
        ``manifest.json`` exists but is not a readable sctopic manifest.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}); the folder is not one complete run: "
                         "re-run the command that wrote it with --overwrite.") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), list):
        raise InputError(f"{path} is not a sctopic run manifest; re-run the command that wrote the folder "
                         "with --overwrite.")
    return data


def _listing(directory: Path) -> list[dict[str, Any]]:
    files = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.relative_to(directory).as_posix() != MANIFEST:
            files.append({"path": p.relative_to(directory).as_posix(), "size": p.stat().st_size,
                          "sha256": file_sha256(p)})
    return files


def write_manifest(directory: str | os.PathLike, *, command: str, run_id: str,
                   settings: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``directory/manifest.json`` describing every file now in ``directory``.

    Parameters
    ----------
    directory
        The (staging) directory holding the run's files.
    command
        The sctopic command that wrote them (``fit``, ``transfer``...).
    run_id
        :func:`new_run_id` of the run.
    settings
        The run's settings; their :func:`settings_hash` is recorded, with the settings.
    data
        The input's fingerprint (paths, sizes, hashes of the count matrix...).
    extra
        Anything else worth recording (JSON-able).

    Returns
    -------
    dict
        The manifest: ``format``, ``format_version``, ``run_id``, ``command``, ``kind``,
        ``created``, ``sctopic_version``, ``settings_sha256``, ``settings``, ``data``,
        ``files`` (``path``, ``size``, ``sha256`` each) and ``extra``.
    """
    from sctopic import __version__

    directory = Path(directory)
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "run_id": run_id,
        "command": command,
        "kind": KINDS.get(command, command),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sctopic_version": __version__,
        "settings_sha256": settings_hash(settings or {}),
        "settings": jsonable(dict(settings or {})),
        "data": jsonable(dict(data or {})),
        "files": _listing(directory),
        "extra": jsonable(dict(extra or {})),
    }
    write_text_atomic(json.dumps(manifest, indent=2, default=str) + "\n", directory / MANIFEST)
    return manifest


def verify(directory: str | os.PathLike) -> dict[str, Any] | None:
    """Check that the files of a run directory are those its manifest lists.

    Parameters
    ----------
    directory
        An output directory of ``sctopic fit``, ``transfer``, ``select-k`` or ``bench``.

    Returns
    -------
    dict or None
        The manifest, or None for a directory without one (written by an older sctopic: it is
        read as it is).

    Raises
    ------
    InputError
        A listed file is missing or differs in size or SHA-256, or a run output (``model.pt``,
        ``result.h5ad``...) lies there without being listed: the directory mixes runs.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    cmd = manifest.get("command", "fit")
    fix = (f"re-run `sctopic {cmd}` with --out {directory} --overwrite, or use the folder the file "
           "came from")

    def fail(name: str, why: str) -> InputError:
        return InputError(f"{directory / name} does not match {directory / MANIFEST} ({why}): the folder "
                          f"mixes files of different runs or was changed after run {manifest.get('run_id')}; "
                          f"{fix}.")

    listed = set()
    for entry in manifest["files"]:
        name = str(entry.get("path", ""))
        listed.add(name)
        p = directory / name
        if not p.is_file():
            raise fail(name, "listed but missing")
        size = p.stat().st_size
        if size != entry.get("size"):
            raise fail(name, f"{size} bytes, the manifest says {entry.get('size')}")
        if file_sha256(p) != entry.get("sha256"):
            raise fail(name, "same size, different SHA-256")
    for name in KNOWN_OUTPUTS:
        if name not in listed and (directory / name).exists():
            raise fail(name, "not listed: it comes from another run")
    return manifest


def verify_input(path: str | os.PathLike) -> dict[str, Any] | None:
    """:func:`verify` for a reader's input: a run directory, or a file inside one.

    A file (e.g. ``DIR/result.h5ad`` or ``DIR/model.pt``) is checked against the manifest of
    its folder when that folder has one. Anything else returns None without a check.
    """
    p = Path(path)
    if p.is_dir():
        return verify(p)
    if p.is_file() and (p.parent / MANIFEST).is_file():
        return verify(p.parent)
    return None


# ---------------------------------------------------------------------- target checks
def describe_run(directory: str | os.PathLike) -> tuple[str | None, str]:
    """``(kind, evidence)`` of the run in ``directory``: from its manifest, else from the files
    older versions wrote (``model.pt`` means a fit...). ``kind`` is None when nothing matches."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is not None:
        cmd = manifest.get("command", "?")
        return KINDS.get(cmd, cmd), f"a `sctopic {cmd}` run ({MANIFEST}, run {manifest.get('run_id')})"
    for name, kind in LEGACY_MARKERS:
        if (directory / name).exists():
            return kind, f"a `sctopic {kind}` run (it has {name})"
    return None, ""


def _contents(target: Path, ignore: Iterable[str]) -> list[str]:
    ignore = set(ignore)
    names = []
    for p in target.iterdir():
        n = p.name
        if n in ignore or any(n.startswith(i + ".") and n.endswith(".tmp") for i in ignore):
            continue
        names.append(n)
    return sorted(names)


def check_target(target: str | os.PathLike, command: str, *, overwrite: bool = False,
                 continue_same: bool = False, ignore: Iterable[str] = ()) -> str:
    """Decide whether ``command`` may write its run into ``target``, before any work is done.

    Parameters
    ----------
    target
        The output directory.
    command
        The writing command (a key of :data:`KINDS`).
    overwrite
        Replace a run of the same kind (``--overwrite``).
    continue_same
        A run of the same kind is continued, not replaced (``bench``'s resume), so it needs no
        ``overwrite``.
    ignore
        Names that do not count as contents (``checkpoint.pt`` for a resumable fit).

    Returns
    -------
    str
        ``"new"`` (no directory yet), ``"empty"``, ``"continue"`` or ``"replace"``.

    Raises
    ------
    InputError
        ``target`` is a file; holds another command's run (never replaced); holds files that
        are not a sctopic run (never deleted); or holds a run of this kind without
        ``overwrite`` (and without ``continue_same``).
    """
    target = Path(target)
    kind = KINDS.get(command, command)
    if target.exists() and not target.is_dir():
        raise InputError(f"--out {target} exists and is not a directory; choose a folder name.")
    if not target.exists():
        if target.parent.exists() and not target.parent.is_dir():
            raise InputError(f"--out {target}: {target.parent} is a file, not a folder.")
        return "new"
    names = _contents(target, ignore)
    if not names:
        return "empty"
    found, evidence = describe_run(target)
    if found is None:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise InputError(f"--out {target} is not empty and holds no sctopic run ({shown}); choose a new or "
                         "empty folder (sctopic never deletes files it did not write).")
    if found != kind:
        raise InputError(f"--out {target} holds {evidence}, not a `sctopic {command}` run; write to another "
                         "folder (or delete that one first).")
    if continue_same and not overwrite:
        return "continue"
    if not overwrite:
        raise InputError(f"--out {target} already holds {evidence}; pass --overwrite to replace it, or "
                         "choose another folder.")
    return "replace"


def check_parent_writable(target: str | os.PathLike) -> None:
    """Fail now if the folder that will hold ``target`` (and its staging sibling) is not writable."""
    from sctopic.data.io import check_writable

    target = Path(target)
    check_writable(target.parent / f".{target.name}.sctopic-probe")


# ---------------------------------------------------------------------- the swap
def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or file system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(staging: Path, target: Path) -> None:
    """Make ``staging`` visible as ``target`` in one step; the previous ``target`` is deleted."""
    if target.exists():
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the previous outputs
        else:
            old = _temp_name(target, _OLD)
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)
    fsync_path(target.parent)


#: files this large are hard-linked, not copied, into a continued run's staging folder
LINK_BYTES = 1 << 20


def _link_copy(src: Path, dst: Path, skip: Iterable[str]) -> None:
    """Copy the files of ``src`` into ``dst``; files of 1 MiB or more (``result.h5ad`` of
    benchmark runs) as hard links where possible. sctopic replaces such files by renaming,
    never rewrites them in place, so a link never changes the original."""
    skip = set(skip)
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if rel.parts[0] in skip or p.is_symlink():
            continue
        q = dst / rel
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
            continue
        q.parent.mkdir(parents=True, exist_ok=True)
        if p.stat().st_size >= LINK_BYTES:
            try:
                os.link(p, q)
                continue
            except OSError:
                pass
        shutil.copy2(p, q)


class RunWriter:
    """Write one run's files into a staging directory, then swap it in as ``target``.

    Parameters
    ----------
    target
        The output directory (``--out``).
    command
        The writing command (``fit``, ``demo``, ``transfer``, ``select-k``, ``bench``).
    overwrite
        Replace a previous run of the same kind (``--overwrite``).
    continue_same
        Start from a copy of a previous run of the same kind and add to it (``bench``).
    ignore
        Names in ``target`` that do not make it non-empty (``checkpoint.pt``).
    adopt_stale
        Continue in the newest staging directory a killed run of this command left (``bench
        --resume``) instead of deleting it.

    Use as a context manager: leaving the block by an exception before :meth:`commit` deletes
    the staging directory (the previous outputs stay as they were). The target check runs in
    the constructor, so build the writer before any long computation, or call
    :func:`check_target` first.
    """

    def __init__(self, target: str | os.PathLike, command: str, *, overwrite: bool = False,
                 continue_same: bool = False, ignore: Iterable[str] = (), adopt_stale: bool = False):
        self.target = Path(target).absolute()
        self.command = command
        self.run_id = new_run_id()
        self.state = check_target(self.target, command, overwrite=overwrite, continue_same=continue_same,
                                  ignore=ignore)
        check_parent_writable(self.target)
        adopted = None
        if adopt_stale:
            m = self.target / MANIFEST
            newest = m.stat().st_mtime if m.is_file() else 0.0
            for p in stale_staging(self.target):
                tag = p / ".sctopic-command"
                # only a folder of this command, newer than the outputs now in place
                if tag.is_file() and tag.read_text().strip() == command and p.stat().st_mtime >= newest:
                    adopted = p
                    break
        clean_stale(self.target, keep=[adopted] if adopted else [])
        self.path = _temp_name(self.target, _TMP)
        self.adopted = adopted is not None
        if adopted is not None:
            os.rename(adopted, self.path)
        else:
            self.path.mkdir(parents=True)
        try:
            if adopted is None and self.state == "continue":
                _link_copy(self.target, self.path, skip=[MANIFEST, *ignore])
            (self.path / ".sctopic-command").write_text(command + "\n")
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        self.committed = False
        self.manifest: dict[str, Any] | None = None

    def commit(self, *, settings: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None) -> Path:
        """Write the manifest and make the staging directory visible as the target; return it."""
        (self.path / ".sctopic-command").unlink(missing_ok=True)
        self.manifest = write_manifest(self.path, command=self.command, run_id=self.run_id,
                                       settings=settings, data=data, extra=extra)
        fsync_path(self.path)
        swap_in(self.path, self.target)
        self.committed = True
        return self.target

    def discard(self) -> None:
        """Delete the staging directory (the previous outputs stay)."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


__all__ = ["CHECKPOINT", "KINDS", "MANIFEST", "RunWriter", "check_parent_writable", "check_target",
           "clean_stale", "describe_run", "file_sha256", "host_tag", "input_file_info", "new_run_id",
           "read_manifest", "settings_hash", "stale_staging", "swap_in", "verify", "verify_input",
           "write_manifest"]
