"""Scattered CSR rows of an ``.h5ad`` read in a helper process (out-of-core neighbour reads).

Why a process: a scattered read is hundreds of short ranges, and h5py takes and releases the
GIL many times per read. In a thread beside the training loop, every hand-over waits for the
interpreter's switch interval: 20 reads of 512 rows of the 10^6-cell benchmark file took 2.7 s
in a thread next to a busy Python loop against 0.27 s alone, and slowed that loop to a third.
A child process has its own interpreter; the parent's reading thread blocks on a pipe (which
releases the GIL) twice per read. Inside the child, uncompressed data are read with one Linux
native-AIO submission per read on an ``O_DIRECT`` descriptor (:class:`DirectRanges`) where the
system allows it, else with concurrent ``os.preadv`` calls (:class:`RawRanges`); compressed
data go through HDF5.

This module imports only numpy and h5py: the child runs it by file path, so starting it costs
no torch import. Protocol on the child's stdin/stdout: each array is a 24-byte header (numpy
dtype string, element count) and its raw bytes. The parent sends the increasing file rows. On
Linux the child writes the rows' lengths, data and indices into a memory file shared with the
parent (``memfd_create``) and answers with four numbers (buffer size, rows, nnz, 1 if the
read went direct); elsewhere it sends the three arrays through the pipe.
"""
from __future__ import annotations

import errno
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

    def _segments(self, starts: np.ndarray, lens: np.ndarray):
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

    def read(self, starts: np.ndarray, lens: np.ndarray, out: np.ndarray | None = None,
             segments: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Concatenation of ``dset[s:s+l]`` for each range (into ``out``).

        ``segments``: ``self._segments(starts, lens)`` when the caller has it already.
        """
        total = int(lens.sum())
        if out is None:
            out = np.empty(total, dtype=self.dtype)
        if total == 0:
            return out
        fo, nb, oo = self._segments(starts, lens) if segments is None else segments
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


class DirectRanges:
    """Byte ranges of a file read with Linux native AIO on an ``O_DIRECT`` descriptor.

    Why by hand: a step's neighbour read is about a thousand small ranges far apart in the
    file. Through the page cache (``os.preadv``, :class:`RawRanges`) each range that is not
    cached is its own request to the block device, and on a virtual machine each costs the
    kernel about 20 microseconds of CPU: 24 ms of the machine's CPU and 37 ms of wall time per
    512 rows at 10^6 cells on the benchmark VM, on the same cores as the training step.
    ``io_submit`` hands all the ranges to the block layer in one call, which queues them
    together and notifies the device once per batch: 7 ms of CPU and 17 ms of wall time
    (``benchmarks/results/row_reads_kang_1000000.md``). Python's standard library has no
    native AIO; four system calls through ctypes avoid a compiled dependency for this one use.

    ``O_DIRECT`` bypasses the page cache, so offsets, lengths and buffer addresses must be
    multiples of the device's block size: each range is widened to ``align`` bytes, ranges
    that then touch are merged into one request, and the wanted bytes are copied out of an
    aligned buffer. :meth:`open` returns ``None`` where this is unavailable (not Linux on
    x86_64 or aarch64, a file system without ``O_DIRECT``, AIO refused by the kernel or a
    sandbox); callers then use :class:`RawRanges`.
    """

    # io_setup, io_destroy, io_getevents, io_submit
    _CALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
    _IOCB = np.dtype([("data", "<u8"), ("key", "<u4"), ("rw_flags", "<u4"), ("opcode", "<u2"),
                      ("prio", "<i2"), ("fd", "<u4"), ("buf", "<u8"), ("nbytes", "<u8"),
                      ("offset", "<i8"), ("reserved2", "<u8"), ("flags", "<u4"), ("resfd", "<u4")])
    _EVENT = np.dtype([("data", "<u8"), ("obj", "<u8"), ("res", "<i8"), ("res2", "<i8")])

    def __init__(self, fd: int, libc, calls: tuple[int, int, int, int], ctx, capacity: int, align: int):
        self.fd, self._libc, self._calls, self._ctx = fd, libc, calls, ctx
        self.capacity, self.align = capacity, align
        self._buf: mmap.mmap | None = None
        self._addr = 0

    @classmethod
    def open(cls, path: str, capacity: int = 1024, align: int = 4096) -> "DirectRanges | None":
        import ctypes
        import platform

        calls = cls._CALLS.get(platform.machine())
        if calls is None or not sys.platform.startswith("linux") or not hasattr(os, "O_DIRECT"):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:  # e.g. a file system without O_DIRECT
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            ctx = ctypes.c_ulong(0)
            if libc.syscall(ctypes.c_long(calls[0]), ctypes.c_long(capacity), ctypes.byref(ctx)) != 0:
                os.close(fd)
                return None
        except (OSError, AttributeError):
            os.close(fd)
            return None
        self = cls(fd, libc, calls, ctx, capacity, align)
        try:  # one aligned read: does this file system take O_DIRECT reads at this alignment?
            size = os.fstat(fd).st_size
            probe = self.read([(np.array([0], np.int64), np.array([min(size, 1)], np.int64),
                                np.zeros(1, np.int64), memoryview(bytearray(1)))]) if size else None
        except OSError:
            probe = None
        if size and probe is None:
            self.close()
            return None
        return self

    def _buffer(self, nbytes: int) -> memoryview:
        if self._buf is None or len(self._buf) < nbytes:
            size = max(nbytes, 2 * (len(self._buf) if self._buf is not None else 0), 1 << 21)
            size += -size % mmap.PAGESIZE
            if self._buf is not None:
                self._buf.close()
            self._buf = mmap.mmap(-1, size)  # anonymous memory: page-aligned
            self._addr = np.frombuffer(self._buf, np.uint8).ctypes.data  # (the view is dropped)
        return memoryview(self._buf)

    def _syscall(self, which: int, *args) -> int:
        import ctypes

        while True:
            r = self._libc.syscall(ctypes.c_long(self._calls[which]), self._ctx, *args)
            if r >= 0:
                return r
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, f"{('io_setup', 'io_destroy', 'io_getevents', 'io_submit')[which]}: "
                                   f"{os.strerror(err)}")

    def read(self, groups) -> int:
        """Read ``(file offsets, byte counts, output byte offsets, output buffer)`` groups.

        Every group's pieces go into one submission. Returns the number of requests made.
        """
        import ctypes

        groups = [(np.asarray(f, np.int64), np.asarray(b, np.int64), np.asarray(o, np.int64), d)
                  for f, b, o, d in groups]
        groups = [(f[b > 0], b[b > 0], o[b > 0], d) for f, b, o, d in groups]
        fo = np.concatenate([g[0] for g in groups])
        nb = np.concatenate([g[1] for g in groups])
        if fo.size == 0:
            return 0
        A = self.align
        a0 = fo // A * A
        a1 = -(-(fo + nb) // A) * A
        order = np.argsort(a0, kind="stable")
        lo, hi = a0[order], np.maximum.accumulate(a1[order])
        first = np.ones(len(lo), dtype=bool)
        first[1:] = lo[1:] > hi[:-1]  # widened ranges that overlap or touch become one request
        req = np.cumsum(first) - 1
        r_off = lo[first]
        r_end = hi[np.r_[np.flatnonzero(first)[1:] - 1, len(hi) - 1]]
        r_len = r_end - r_off
        need = np.zeros(len(r_off), dtype=np.int64)  # bytes each request must deliver
        np.maximum.at(need, req, fo[order] + nb[order] - r_off[req])
        r_buf = np.cumsum(r_len) - r_len
        buf = self._buffer(int(r_len.sum()))
        k = len(r_off)
        cbs = np.zeros(k, dtype=self._IOCB)
        cbs["data"] = np.arange(k)
        cbs["fd"] = self.fd
        cbs["buf"] = self._addr + r_buf
        cbs["nbytes"] = r_len
        cbs["offset"] = r_off
        ptrs = (cbs.ctypes.data + self._IOCB.itemsize * np.arange(k)).astype(np.uint64)
        events = np.zeros(min(k, self.capacity), dtype=self._EVENT)
        got = np.full(k, -1, dtype=np.int64)
        sent = done = 0
        try:
            while done < k:
                room = min(self.capacity - (sent - done), k - sent)
                if room > 0:
                    sent += self._syscall(3, ctypes.c_long(room), ctypes.c_void_p(ptrs.ctypes.data + 8 * sent))
                m = self._syscall(2, ctypes.c_long(1), ctypes.c_long(len(events)),
                                  ctypes.c_void_p(events.ctypes.data), None)
                got[events["data"][:m].astype(np.int64)] = events["res"][:m]
                done += m
        finally:
            while done < sent:  # never leave the kernel writing into a buffer we may free
                m = self._syscall(2, ctypes.c_long(1), ctypes.c_long(len(events)),
                                  ctypes.c_void_p(events.ctypes.data), None)
                done += m
        bad = np.flatnonzero(got < need)
        if bad.size:
            i = int(bad[0])
            what = os.strerror(-int(got[i])) if got[i] < 0 else f"short read: {got[i]} of {need[i]} bytes"
            raise OSError(f"direct read at offset {r_off[i]}: {what}")
        src = (r_buf[req] + fo[order] - r_off[req])[np.argsort(order, kind="stable")]
        at = 0
        for g in groups:
            dst = g[3]
            for s, b, q in zip(src[at:at + len(g[0])].tolist(), g[1].tolist(), g[2].tolist()):
                dst[q:q + b] = buf[s:s + b]
            at += len(g[0])
        return k

    def close(self) -> None:
        """End the AIO context and close the descriptor (idempotent)."""
        import ctypes

        if self._ctx is not None:
            self._libc.syscall(ctypes.c_long(self._calls[1]), self._ctx)
            self._ctx = None
            os.close(self.fd)
        if self._buf is not None:
            self._buf.close()
            self._buf = None


def cached_fraction(fd: int, fo: np.ndarray, nb: np.ndarray, k: int = 32) -> float:
    """Fraction of ``k`` of the byte ranges ``(fo, nb)`` that the page cache holds whole.

    Probed with ``RWF_NOWAIT`` reads, which return what is cached and never wait for
    storage (about 0.1 ms for 32 ranges). 0 where the flag is unavailable.
    """
    if fo.size == 0 or not hasattr(os, "RWF_NOWAIT"):
        return 0.0
    pick = np.unique(np.linspace(0, fo.size - 1, min(k, fo.size)).astype(np.int64))
    view = memoryview(bytearray(int(nb[pick].max())))
    hits = 0
    for f, b in zip(fo[pick].tolist(), nb[pick].tolist()):
        try:
            hits += os.preadv(fd, [view[:b]], f, os.RWF_NOWAIT) == b
        except BlockingIOError:  # not (all) in the page cache
            pass
        except OSError:  # the flag is not supported here
            return 0.0
    return hits / len(pick)


# Direct reads pay off unless nearly all wanted pages are cached. Per 512-row read at 10^6
# cells (benchmarks/results/row_reads_kang_1000000.md), the machine's CPU: 24 ms through the
# page cache when cold, 6 ms when cached, 7 ms direct; CPU breaks even near 94% cached. The
# cached path also waits less (4 vs 17 ms), so reads that are 90% cached take it.
DIRECT_BELOW_CACHED = 0.9


def _layout(n_rows: int, nnz: int, data_dtype: np.dtype, ind_dtype: np.dtype) -> tuple[int, int, int]:
    """Byte offsets of data and indices after the lengths in the shared buffer, and its size."""
    a = 8 * n_rows
    b = a + nnz * data_dtype.itemsize
    b += -b % 8
    return a, b, b + nnz * ind_dtype.itemsize


def serve(path: str, key: str, shm_fd: int = -1, direct: bool = True) -> int:
    """The child's loop: answer row requests until stdin closes.

    With ``shm_fd`` (a memory file shared with the parent) the arrays go there and only a
    4-number reply (buffer size, rows, nnz, 1 if direct) goes through the pipe: two pipe
    operations per read, so the parent's reading thread waits for the GIL twice, not once per
    64 KB.
    With ``direct``, uncompressed data are read with :class:`DirectRanges` where the system
    allows it (one AIO submission per read) unless the page cache holds nearly all of a read's
    ranges (:func:`cached_fraction`); otherwise, and without ``direct``, with :class:`RawRanges`.
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
        aio = DirectRanges.open(path) if direct and raw_d is not None and raw_i is not None else None

        def read_both(starts, lens, out_d, out_i) -> bool:
            """Read the rows' data and indices; True if it went direct."""
            nonlocal aio
            if aio is None:
                read_d(starts, lens, out_d)
                read_i(starts, lens, out_i)
                return False
            seg_d, seg_i = raw_d._segments(starts, lens), raw_i._segments(starts, lens)
            # A file the page cache holds (small, or read recently) is cheaper to read through
            # it; otherwise one direct submission.
            fo, nb = np.concatenate([seg_d[0], seg_i[0]]), np.concatenate([seg_d[1], seg_i[1]])
            if cached_fraction(fd, fo, nb) < DIRECT_BELOW_CACHED:
                try:
                    aio.read([(*seg_d, memoryview(out_d.view(np.uint8))),
                              (*seg_i, memoryview(out_i.view(np.uint8)))])
                    return True
                except OSError as exc:  # e.g. AIO resources exhausted: page-cache reads from now on
                    print(f"sctopic row reader: direct reads failed ({exc}); reading through the "
                          "page cache", file=sys.stderr)
                    aio.close()
                    aio = None
            raw_d.read(starts, lens, out_d, segments=seg_d)
            raw_i.read(starts, lens, out_i, segments=seg_i)
            return False
        buf, size = None, 0
        while True:
            try:
                rows = recv(inp)
            except EOFError:  # the parent closed the pipe
                if aio is not None:
                    aio.close()
                return 0
            starts = indptr[rows]
            lens = indptr[rows + 1] - starts
            if shm_fd < 0:
                nnz = int(lens.sum())
                out_d, out_i = np.empty(nnz, data.dtype), np.empty(nnz, indices.dtype)
                read_both(starts, lens, out_d, out_i)
                for arr in (lens, out_d, out_i):
                    send(out, arr)
            else:
                nnz = int(lens.sum())
                a, b, need = _layout(len(rows), nnz, data.dtype, indices.dtype)
                if need > size:
                    size = max(need, 2 * size, 1 << 20)
                    os.ftruncate(shm_fd, size)
                    buf = mmap.mmap(shm_fd, size)
                np.frombuffer(buf, np.int64, len(rows), 0)[:] = lens
                went_direct = read_both(starts, lens, np.frombuffer(buf, data.dtype, nnz, a),
                                        np.frombuffer(buf, indices.dtype, nnz, b))
                send(out, np.array([size, len(rows), nnz, int(went_direct)], dtype=np.int64))
            out.flush()


# The child is started by file path with the script's folder kept off sys.path (this folder
# holds modules, e.g. io.py, whose names would shadow the standard library's).
_BOOT = ("import importlib.util, sys; del sys.path[0]; "
         "s = importlib.util.spec_from_file_location('_sctopic_rowreader', sys.argv[1]); "
         "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
         "sys.exit(m.serve(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == '1'))")


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
    direct
        Read uncompressed data with one native-AIO submission per read, bypassing the page
        cache (:class:`DirectRanges`), where the system allows it and the page cache does not
        already hold the rows. ``None``: on unless the environment sets
        ``SCTOPIC_DIRECT_IO=0``. The rows read are the same either way.
    """

    def __init__(self, path: str | Path, key: str, data_dtype=np.float32, ind_dtype=np.int32,
                 direct: bool | None = None):
        self.path, self.key = str(Path(path).resolve()), key  # the child may not share our cwd
        self.dtypes = np.dtype(data_dtype), np.dtype(ind_dtype)
        if direct is None:
            direct = os.environ.get("SCTOPIC_DIRECT_IO", "1").strip() not in ("0", "false", "no", "off")
        self.direct = bool(direct)
        self.direct_used: bool | None = None  # the child's last read went direct (shared memory only)
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
                 str(self._fd), "1" if self.direct else "0"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                pass_fds=(self._fd,) if self._fd >= 0 else ())
        return self._proc

    def _reply(self, proc: subprocess.Popen) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._fd < 0:
            return recv(proc.stdout), recv(proc.stdout), recv(proc.stdout)
        size, n_rows, nnz, direct = (int(v) for v in recv(proc.stdout))
        self.direct_used = bool(direct)
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
