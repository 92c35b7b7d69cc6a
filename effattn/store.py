"""The results file, and what makes two rows the same point.

A results file is JSON lines: one object per row, appended and fsynced the moment it exists.
Everything that writes one goes through `ResultsFile`, which

* creates a new file atomically (`O_EXCL`), so "refuse an existing file" and "create it" are one
  step, and two runs started in the same second never share a default name;
* holds an exclusive lock (`flock`) on it for the whole run: a second writer is refused with the
  holder's pid and command, never interleaved;
* repairs a torn last line (a run killed mid-write) before appending, moving the fragment to
  `FILE.torn` so that no byte is lost and no row is glued onto it;
* stamps every row with the run id, the executor, the time and the user's command line.

Everything that reads one goes through `read_results`, which reports a garbage line with its line
number and uses the rest, and refuses a file that is no results file at all (binary, compressed,
UTF-16, other JSON) in one line.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field

from .errors import EffattnError

#: Every field that changes what a timing point measures. Two rows with equal values here are the
#: same point: resume skips it, fits and crossovers never mix two of them, compare pairs them.
#: (`label` is the plugin name plus its non-default options; `probe` marks find-max-len probes.)
POINT_FIELDS = (
    "label",
    "seq_len",
    "device",
    "dtype",
    "batch",
    "heads",
    "head_dim",
    "causal",
    "mode",
    "level",
    "inputs",
    "seed",
    "probe",
    "kv_heads",
    "layers",
)
#: The same for a training run of `bench --task`.
TASK_FIELDS = ("label", "seq_len", "task", "task_options", "seed", "train_spec")
#: What a configuration is: a point's identity without the variant and the length.
CONFIG_FIELDS = tuple(f for f in POINT_FIELDS if f not in ("label", "seq_len"))
#: Defaults for rows written before a field existed, so that old files keep their identity.
FIELD_DEFAULTS = {"inputs": "random", "seed": 0, "probe": None, "kv_heads": None, "layers": 2}

#: Statuses after which a point counts as done for `--resume`. `error` (perhaps transient) and
#: `skipped` (never attempted) are measured again; the newest row of a point is the one used.
DONE_STATUSES = ("ok", "oom", "timeout", "unsupported")

#: Row kinds. A row without `kind` is a timing point of `effattn bench`; "task" is a training run
#: of `bench --task`. The others are the records of a benchmark script (what it measured beside
#: a reference implementation, say): they carry a label, a seq_len and a status like every row, and
#: their own figures in place of `time_ms`, and the script that wrote them reads them back.
SCRIPT_KINDS = {"reference": "benchmarks/references.py"}
KINDS = ("task", *SCRIPT_KINDS)


def _canon(value):
    """A hashable, order-independent form of a JSON value (dicts compare by content)."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, list):
        return json.dumps(value, default=str)
    return value


def _field(row: dict, name: str):
    v = row.get(name)
    if v is None or (isinstance(v, float) and v != v):  # missing, or NaN from a DataFrame
        return FIELD_DEFAULTS.get(name)
    return _canon(v)


def point_key(row: dict) -> tuple:
    """The identity of the point a row measured (timing point, probe or training run)."""
    if row.get("kind") == "task":
        return ("task",) + tuple(_field(row, f) for f in TASK_FIELDS)
    return ("point",) + tuple(_field(row, f) for f in POINT_FIELDS)


def config_key(row: dict) -> tuple:
    """The configuration a row belongs to: its point's identity without variant and length."""
    return tuple(_field(row, f) for f in CONFIG_FIELDS)


# ------------------------------------------------------------------------------------------ reading
class ResultsFileError(EffattnError):
    """A file that cannot be used as a results file (the CLI prints it in one line, exit 2)."""


@dataclass
class Problem:
    line: int
    why: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.why}"


STATUSES = ("ok", "oom", "timeout", "unsupported", "error", "skipped")
#: longest sequence a row may name (the CLI refuses longer ones; pandas holds it in an int64)
MAX_SEQ_LEN = 2**40


def _row_ok(obj) -> str | None:
    """None when `obj` is a results row a reader can rely on, else why not."""
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not a results row"
    missing = [k for k in ("label", "seq_len", "status") if k not in obj]
    if missing:
        return f"a JSON object without {', '.join(missing)}: not a results row"
    if not isinstance(obj["label"], str) or not obj["label"]:
        return f"label {obj['label']!r} is not a name"
    n = obj["seq_len"]
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_SEQ_LEN:
        return f"seq_len {n!r} is not an integer in 1..{MAX_SEQ_LEN}"
    if obj["status"] not in STATUSES:
        return f"status {obj['status']!r} is none of {', '.join(STATUSES)}"
    kind = obj.get("kind")
    if kind is not None and kind not in KINDS:
        return f"kind {kind!r} is none of {', '.join(KINDS)}"
    if obj["status"] == "ok" and kind is None:
        t = obj.get("time_ms")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0 and t != float("inf")):
            return f"an ok row whose time_ms {t!r} is not a positive number"
    return None


def read_results(path: str, *, missing_ok: bool = True) -> tuple[list[dict], list[Problem]]:
    """(rows, problems). A line that is not a results row is a problem, reported with its number,
    and the other lines are used. A file that holds bytes but not one row is refused with
    `ResultsFileError`: it is not a results file (binary, gzip, UTF-16, other JSON...)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if missing_ok:
            return [], []
        raise ResultsFileError(f"results file {path} does not exist") from None
    except IsADirectoryError:
        raise ResultsFileError(f"{path} is a folder, not a results file") from None
    except OSError as e:
        raise ResultsFileError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        raise ResultsFileError(f"{path} is gzip-compressed; decompress it first (gunzip)")
    if data[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
        raise ResultsFileError(f"{path} is UTF-32 text; results files are UTF-8 JSON lines")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) > 1 and b"\x00" in data[:200] and data[1:2] == b"\x00"):
        raise ResultsFileError(f"{path} is UTF-16 text; results files are UTF-8 JSON lines")
    if data[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte-order mark, as some editors write: not part of row 1
        data = data[3:]
    rows, problems = [], []
    lines = data.split(b"\n")
    for no, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn = no == len(lines) and not data.endswith(b"\n")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problems.append(Problem(no, "not UTF-8 text"))
            continue
        except json.JSONDecodeError:
            problems.append(Problem(no, "cut off (a run killed mid-write)" if torn else "not JSON"))
            continue
        why = _row_ok(obj)
        if why:
            problems.append(Problem(no, why))
        else:
            rows.append(obj)
    if not rows and problems:
        first = problems[0]
        raise ResultsFileError(
            f"{path} is not an effattn results file ({first}"
            + (f"; {len(problems) - 1} more such lines" if len(problems) > 1 else "")
            + ")"
        )
    return rows, problems


def describe_problems(path: str, problems: list[Problem], limit: int = 3) -> str:
    shown = ", ".join(str(p) for p in problems[:limit])
    more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{path}: skipped {len(problems)} line(s) that are not results rows ({shown}{more})"


# ------------------------------------------------------------------------------------------ writing
class ResultsFileBusy(ResultsFileError):
    """Another process holds the results file's lock."""


def _holder_of(fd: int) -> str:
    """Who holds a lock on this file: pid and command line, from /proc/locks (Linux)."""
    try:
        st = os.fstat(fd)
        want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if "->" in parts:
                    continue  # a waiter, not the holder
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].lower() == want:
                    pid = parts[4]
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as c:
                            cmd = c.read().replace(b"\x00", b" ").decode(errors="replace").strip()
                    except OSError:
                        cmd = ""
                    return f"pid {pid}" + (f": {cmd}" if cmd else "")
    except (OSError, ValueError):
        pass
    return "another process"


def _lock(fd: int, path: str) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            holder = _holder_of(fd)
            os.close(fd)
            raise ResultsFileBusy(
                f"{path} is being written by another run ({holder}); wait for it to finish or choose another --out"
            ) from None
        os.close(fd)
        raise


def _only_a_cut_row(path: str) -> bool:
    """A file holding one unterminated line that starts like a row: the first row, cut off."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return b"\n" not in head and head.startswith(b'{"')


def _jsonable(row: dict) -> dict:
    return json.loads(json.dumps(row, default=str))


@dataclass
class ResultsFile:
    """The one writer of a results file. `mode`: "new" (refuse a file that holds rows), "resume"
    (append to it, reading what is there under the lock) or "overwrite" (empty it under the lock).

        with ResultsFile(path, "resume", executor="local") as rf:
            done = rf.existing        # rows already there (resume)
            rf.append(row)            # stamped, written, fsynced
    """

    path: str
    mode: str = "new"
    executor: str = "local"
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    argv: str = field(default_factory=lambda: " ".join(sys.argv))
    existing: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # one line each: what was repaired on opening
    _fd: int | None = None

    def __post_init__(self):
        if self.mode not in ("new", "resume", "overwrite"):
            raise ValueError(f"mode must be new, resume or overwrite, got {self.mode!r}")

    # -- opening ---------------------------------------------------------------------------
    def open(self) -> ResultsFile:
        if self._fd is not None:
            return self
        path = self.path
        import stat

        if os.path.isdir(path):
            raise ResultsFileError(f"--out {path}: is a folder")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise ResultsFileError(f"--out {path}: {e.strerror}") from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            # a FIFO would block the open, /dev/null or /dev/full would take rows and lose them
            raise ResultsFileError(f"--out {path}: not a regular file")
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)  # a new file: create = claim
        except FileExistsError:
            try:
                fd = os.open(path, flags)
            except OSError as e:
                raise ResultsFileError(f"--out {path}: cannot be written ({e.strerror})") from None
        except OSError as e:
            raise ResultsFileError(f"--out {path}: cannot be created ({e.strerror})") from None
        _lock(fd, path)  # closes fd and raises when another run holds it
        try:
            size = os.fstat(fd).st_size
            if size and self.mode == "new":
                raise ResultsFileError(
                    f"--out {path} already holds results; use --resume to complete it or --overwrite to replace it"
                )
            if size:
                # Nothing is changed in a file that is no results file (a CSV given by mistake,
                # a compressed copy): read_results refuses it before a byte is touched.
                try:
                    read_results(path)
                except ResultsFileError as e:
                    if _only_a_cut_row(path):
                        pass  # a run killed while writing its very first row: repaired like any torn tail
                    else:
                        raise ResultsFileError(
                            f"{e}; refusing to {'append to' if self.mode == 'resume' else 'replace'} it"
                        ) from None
            if size and self.mode == "overwrite":
                os.ftruncate(fd, 0)
            elif size and self.mode == "resume":
                self._repair_tail(fd)
                self.existing, self.problems = read_results(path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _repair_tail(self, fd: int) -> None:
        """A file killed mid-write ends without a newline. A complete JSON row gets its newline;
        a fragment is moved to FILE.torn, so the next row starts on a line of its own."""
        size = os.fstat(fd).st_size
        with open(self.path, "rb") as f:
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            # find the start of the last line
            pos, chunk = size, 65536
            start = 0
            while pos > 0:
                lo = max(0, pos - chunk)
                f.seek(lo)
                buf = f.read(pos - lo)
                i = buf.rfind(b"\n")
                if i >= 0:
                    start = lo + i + 1
                    break
                pos = lo
            f.seek(start)
            tail = f.read()
        try:
            ok = _row_ok(json.loads(tail.decode("utf-8"))) is None
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if ok:
            os.write(fd, b"\n")
            self.notes.append(f"{self.path}: the last row had no newline; added one")
            return
        with open(self.path + ".torn", "ab") as t:
            t.write(tail + b"\n")
            t.flush()
            os.fsync(t.fileno())
        os.ftruncate(fd, start)
        os.fsync(fd)
        self.notes.append(
            f"{self.path}: its last line was cut off mid-write ({len(tail)} bytes); moved it to "
            f"{self.path}.torn and went on from the line before"
        )

    # -- writing ---------------------------------------------------------------------------
    #: fields every row of this run carries (e.g. the preset that configured it)
    tags: dict | None = None

    def stamp(self, row: dict) -> dict:
        row.update(run_id=self.run_id, executor=self.executor, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if self.tags:
            row.update(self.tags)
        if isinstance(row.get("env"), dict):
            row["env"]["argv"] = self.argv  # the measuring process's own argv means nothing to a reader
        return row

    def append(self, row: dict) -> dict:
        """Stamp a row, write it as one line and make it durable; return it as written."""
        if self._fd is None:
            raise RuntimeError("ResultsFile.append before open()")
        row = _jsonable(self.stamp(dict(row)))
        data = (json.dumps(row) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        return row

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> ResultsFile:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def default_results_path(folder: str = "results", prefix: str = "bench") -> str:
    """A fresh name in `folder`, unique even for runs started in the same second: the file is
    created here (empty, O_EXCL) so that no other run can take the same name."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ResultsFileError(
            f"cannot create the results folder {os.path.abspath(folder)} ({e.strerror}); give --out a writable path"
        ) from None
    stem = os.path.join(folder, time.strftime(f"{prefix}-%Y%m%d-%H%M%S"))
    for i in range(1, 1000):
        path = f"{stem}.jsonl" if i == 1 else f"{stem}-{i}.jsonl"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise ResultsFileError(
                f"cannot create a results file in {os.path.abspath(folder)} ({e.strerror}); give --out a writable path"
            ) from None
    raise ResultsFileError(f"cannot find a free results file name in {folder}")
