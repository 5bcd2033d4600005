"""Scattered CSR rows of an ``.h5ad`` read in a helper process (out-of-core neighbour reads).

Why a process: a scattered read is hundreds of short ranges, and h5py takes and releases the
GIL many times per read. In a thread beside the training loop, every hand-over waits for the
interpreter's switch interval: 20 reads of 512 rows of the 10^6-cell benchmark file took 2.7 s
in a thread next to a busy Python loop against 0.27 s alone, and slowed that loop to a third.
A child process has its own interpreter; the parent's reading thread blocks on a pipe (which
releases the GIL) twice per read. Inside the child, uncompressed data are read with concurrent
``os.preadv`` calls (:class:`RawRanges`), compressed data through HDF5.

This module imports only numpy and h5py: the child runs it by file path, so starting it costs
no torch import. Protocol on the child's stdin/stdout: each array is a 24-byte header (numpy
dtype string, element count) and its raw bytes. The parent sends the increasing file rows. On
Linux the child writes the rows' lengths, data and indices into a memory file shared with the
parent (``memfd_create``) and answers with three numbers (buffer size, rows, nnz); elsewhere
it sends the three arrays through the pipe.

Direct reads, measured and removed: a path reading uncached rows with one Linux native-AIO
submission on an ``O_DIRECT`` descriptor (through ctypes) cost 3.4x less CPU per lone 512-row
read at 10^6 cells (7.0 vs 24.0 ms of the machine's CPU, 17 vs 37 ms wall;
``benchmarks/results/row_reads_kang_1000000.md``), but changed no epoch beyond the VM's
run-to-run spread (``benchmarks/results/direct_reads_ab.md``, backed SCE2TM at 10^6 cells:
73.7 and 75.7 s/epoch against 75.5 and 77.3 through the page cache; always direct 75.6 and
78.2 against 69.0 and 75.6; 10^5 cells: 6.0-6.4 against 6.1-6.3). It was dropped for want of
the 10% per epoch that would pay for its complexity.
"""
from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import h5py
import numpy as np

_HEADER = struct.Struct("<16sq")


def send(fp, arr: np.ndarray) -> None:
    """Write one array (header, then raw bytes) to a binary stream."""
    arr = np.ascontiguousarray(arr).reshape(-1)
    fp.write(_HEADER.pack(arr.dtype.str.encode(), arr.size))
    fp.write(memoryview(arr).cast("B"))


def recv(fp) -> np.ndarray:
    """Read one array written by :func:`send`; ``EOFError`` at the end of the stream."""
    head = fp.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    dt, n = _HEADER.unpack(head)
    arr = np.empty(n, dtype=np.dtype(dt.rstrip(b"\0").decode()))
    view, got = memoryview(arr).cast("B"), 0
    while got < len(view):
        k = fp.readinto(view[got:])
        if not k:
            raise EOFError
        got += k
    return arr


def read_ranges(dset: h5py.Dataset, starts: np.ndarray, lens: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
    """Concatenation of ``dset[s:s+l]`` for each range, in one HDF5 read (into ``out``)."""
    total = int(lens.sum())
    if out is None:
        out = np.empty(total, dtype=dset.dtype)
    if total == 0:
        return out
    space = dset.id.get_space()
    space.select_none()
    for s, ln in zip(starts.tolist(), lens.tolist()):
        if ln:
            space.select_hyperslab((s,), (ln,), op=h5py.h5s.SELECT_OR)
    dset.id.read(h5py.h5s.create_simple((total,)), space, out)
    return out


class RawRanges:
    """Ranges of an unfiltered 1-D dataset read with concurrent ``os.preadv`` calls.

    Why by hand: HDF5 reads a union of hyperslabs one range after another, and h5py runs every
    HDF5 call under one global lock, so threads cannot overlap them. When the rows are not in
    the page cache each range waits for the disk (the 10^6-cell benchmark file: about 2 MB
    from storage and 23 ms per 512 rows). An uncompressed dataset's bytes sit in the file as
    they are (contiguous, or chunks at offsets HDF5 reports), so the ranges can be read
    directly, several at a time. :meth:`open` returns ``None`` for compressed or filtered
    data, unallocated chunks or external storage, and the caller uses HDF5.
    """

    def __init__(self, fd: int, dtype: np.dtype, chunk_len: int, chunk_bytes: np.ndarray, threads: int):
        self.fd, self.dtype, self.chunk_len, self.chunk_bytes = fd, dtype, chunk_len, chunk_bytes
        self.threads = threads
        self._pool = None

    @classmethod
    def open(cls, fd: int, dset: h5py.Dataset, threads: int = 4) -> "RawRanges | None":
        if not hasattr(os, "preadv"):  # e.g. Windows
            return None
        try:
            dtype = dset.dtype
            if dset.ndim != 1 or not dtype.isnative or dtype.kind not in "iuf" or dset.external or \
                    dset.is_virtual or \
                    dset.id.get_create_plist().get_nfilters():
                return None
            n = int(dset.shape[0])
            if dset.chunks is None:
                offset = dset.id.get_offset()
                if offset is None:
                    return None
                return cls(fd, dtype, max(n, 1), np.array([offset], dtype=np.int64), threads)
            chunk_len = int(dset.chunks[0])
            n_chunks = -(-n // chunk_len)
            if dset.id.get_num_chunks() != n_chunks:
                return None  # unwritten chunks (fill values): leave it to HDF5
            at = np.empty(n_chunks, dtype=np.int64)
            for i in range(n_chunks):
                info = dset.id.get_chunk_info(i)
                if info.filter_mask or info.size < chunk_len * dtype.itemsize:
                    return None
                at[info.chunk_offset[0] // chunk_len] = info.byte_offset
        except (AttributeError, OSError, ValueError, RuntimeError, TypeError):
            return None
        return cls(fd, dtype, chunk_len, at, threads)

    def segments(self, starts: np.ndarray, lens: np.ndarray):
        """(file byte offset, byte count, output byte offset) of every piece to read."""
        isz, L = self.dtype.itemsize, self.chunk_len
        out_at = np.cumsum(lens) - lens
        keep = lens > 0
        s, ln, o = starts[keep], lens[keep], out_at[keep]
        c0, c1 = s // L, (s + ln - 1) // L
        one = c0 == c1
        fo = [self.chunk_bytes[c0[one]] + (s[one] - c0[one] * L) * isz]
        nb, oo = [ln[one] * isz], [o[one] * isz]
        for a, m, q in zip(s[~one].tolist(), ln[~one].tolist(), o[~one].tolist()):
            while m:  # a range across chunk boundaries: one piece per chunk
                c, w = divmod(a, L)
                k = min(m, L - w)
                fo.append(np.array([self.chunk_bytes[c] + w * isz]))
                nb.append(np.array([k * isz]))
                oo.append(np.array([q * isz]))
                a, m, q = a + k, m - k, q + k
        return np.concatenate(fo), np.concatenate(nb), np.concatenate(oo)

    def read(self, starts: np.ndarray, lens: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Concatenation of ``dset[s:s+l]`` for each range (into ``out``)."""
        total = int(lens.sum())
        if out is None:
            out = np.empty(total, dtype=self.dtype)
        if total == 0:
            return out
        fo, nb, oo = self.segments(starts, lens)
        buf = memoryview(out.view(np.uint8).reshape(-1))
        fd = self.fd

        def run(lo: int, hi: int) -> None:
            for f, b, q in zip(fo[lo:hi].tolist(), nb[lo:hi].tolist(), oo[lo:hi].tolist()):
                got = os.preadv(fd, [buf[q:q + b]], f)
                if got != b:
                    raise OSError(f"short read: {got} of {b} bytes at offset {f}")

        parts = np.linspace(0, len(fo), min(self.threads, len(fo)) + 1).astype(int)
        if len(parts) <= 2:
            run(0, len(fo))
            return out
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="sctopic-pread")
        for fut in [self._pool.submit(run, lo, hi) for lo, hi in zip(parts[:-1], parts[1:])]:
            fut.result()
        return out


def _layout(n_rows: int, nnz: int, data_dtype: np.dtype, ind_dtype: np.dtype) -> tuple[int, int, int]:
    """Byte offsets of data and indices after the lengths in the shared buffer, and its size."""
    a = 8 * n_rows
    b = a + nnz * data_dtype.itemsize
    b += -b % 8
    return a, b, b + nnz * ind_dtype.itemsize


def serve(path: str, key: str, shm_fd: int = -1) -> int:
    """The child's loop: answer row requests until stdin closes.

    With ``shm_fd`` (a memory file shared with the parent) the arrays go there and only a
    3-number reply (buffer size, rows, nnz) goes through the pipe: two pipe operations per
    read, so the parent's reading thread waits for the GIL twice, not once per 64 KB.
    """
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    with h5py.File(path, "r", rdcc_nbytes=0) as f:
        node = f[key]
        indptr = np.asarray(node["indptr"][:], dtype=np.int64)
        data, indices = node["data"], node["indices"]
        fd = os.open(path, os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):  # scattered rows: no read-ahead of unwanted pages
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        # 4 reads in flight. 16 made a lone read from storage faster (20 vs 30 ms for 512 rows
        # at 10^6 cells, benchmarks/results/row_reads_kang_1000000.md) but backed training
        # slower on 2 cores (90 and 100 vs 73 and 73 s per epoch, alternating runs): the extra
        # kernel work competes with the training threads. 2 threads: 74 s, within the spread.
        # (benchmarks/results/row_reader_threads_ab.md)
        raw_d, raw_i = RawRanges.open(fd, data), RawRanges.open(fd, indices)
        read_d = raw_d.read if raw_d is not None else (lambda s, ln, o=None: read_ranges(data, s, ln, o))
        read_i = raw_i.read if raw_i is not None else (lambda s, ln, o=None: read_ranges(indices, s, ln, o))
        buf, size = None, 0
        while True:
            try:
                rows = recv(inp)
            except EOFError:  # the parent closed the pipe
                return 0
            starts = indptr[rows]
            lens = indptr[rows + 1] - starts
            if shm_fd < 0:
                for arr in (lens, read_d(starts, lens), read_i(starts, lens)):
                    send(out, arr)
            else:
                nnz = int(lens.sum())
                a, b, need = _layout(len(rows), nnz, data.dtype, indices.dtype)
                if need > size:
                    size = max(need, 2 * size, 1 << 20)
                    os.ftruncate(shm_fd, size)
                    buf = mmap.mmap(shm_fd, size)
                np.frombuffer(buf, np.int64, len(rows), 0)[:] = lens
                read_d(starts, lens, np.frombuffer(buf, data.dtype, nnz, a))
                read_i(starts, lens, np.frombuffer(buf, indices.dtype, nnz, b))
                send(out, np.array([size, len(rows), nnz], dtype=np.int64))
            out.flush()


# The child is started by file path with the script's folder kept off sys.path (this folder
# holds modules, e.g. io.py, whose names would shadow the standard library's).
_BOOT = ("import importlib.util, sys; del sys.path[0]; "
         "s = importlib.util.spec_from_file_location('_sctopic_rowreader', sys.argv[1]); "
         "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
         "sys.exit(m.serve(sys.argv[2], sys.argv[3], int(sys.argv[4])))")


class RowReaderProcess:
    """A child process reading scattered rows of one CSR matrix of an ``.h5ad`` file.

    Started at the first :meth:`read`; :meth:`close` (or garbage collection) ends it.
    Thread-safe: requests are serialised.

    Parameters
    ----------
    path, key
        The ``.h5ad`` file and the HDF5 path of its CSR matrix (e.g. ``"X"``).
    data_dtype, ind_dtype
        The matrix's ``data`` and ``indices`` dtypes.
    """

    def __init__(self, path: str | Path, key: str, data_dtype=np.float32, ind_dtype=np.int32):
        self.path, self.key = str(Path(path).resolve()), key  # the child may not share our cwd
        self.dtypes = np.dtype(data_dtype), np.dtype(ind_dtype)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._fd, self._buf, self._size = -1, None, 0
        self._err = None  # the child's stderr, a temporary file (a pipe nobody reads could fill)

    def _start(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._close_shm()
            if hasattr(os, "memfd_create"):  # Linux: replies through shared memory
                self._fd = os.memfd_create("sctopic-rows")
            self._err = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(Path(__file__).resolve()), self.path, self.key,
                 str(self._fd)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                pass_fds=(self._fd,) if self._fd >= 0 else ())
        return self._proc

    def _reply(self, proc: subprocess.Popen) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._fd < 0:
            return recv(proc.stdout), recv(proc.stdout), recv(proc.stdout)
        size, n_rows, nnz = (int(v) for v in recv(proc.stdout))
        if size != self._size:
            if self._buf is not None:
                self._buf.close()
            self._buf, self._size = mmap.mmap(self._fd, size), size
        a, b, _ = _layout(n_rows, nnz, *self.dtypes)
        return (np.frombuffer(self._buf, np.int64, n_rows, 0).copy(),
                np.frombuffer(self._buf, self.dtypes[0], nnz, a).copy(),
                np.frombuffer(self._buf, self.dtypes[1], nnz, b).copy())

    def _close_shm(self) -> None:
        if self._buf is not None:
            self._buf.close()
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._buf, self._size = -1, None, 0

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(lens, data, indices)`` of increasing file ``rows``."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        with self._lock:
            try:
                proc = self._start()
                send(proc.stdin, rows)
                proc.stdin.flush()
                return self._reply(proc)
            except (OSError, ValueError, EOFError) as exc:
                err = self._stop()
                raise RuntimeError(f"the row-reader process for {self.key} in {self.path} failed: "
                                   f"{err.strip().splitlines()[-1] if err.strip() else exc}") from exc

    def _stop(self) -> str:
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        try:  # closes stdin: the child's loop ends
            proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            proc.kill()
            proc.wait()
        err = ""
        if self._err is not None:
            self._err.seek(0)
            err = self._err.read().decode(errors="replace")
            self._err.close()
            self._err = None
        self._close_shm()
        return err

    def close(self) -> None:
        """End the child process (idempotent)."""
        with self._lock:
            self._stop()

    def __del__(self):  # pragma: no cover - best effort at garbage collection
        try:
            self._stop()
        except Exception:  # noqa: BLE001
            pass
