"""Plugins that misbehave on purpose, for effattn's integrity tests only.

Each is exact softmax attention (through SDPA) except for the one thing its name says, which it
does at every length >= `at_len` (default 0: always).
"""

import atexit
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F


class _Base(torch.nn.Module):
    exact = True
    supports_causal = True

    def __init__(self, at_len: int = 0):
        super().__init__()
        self.at_len = at_len

    def dense_mask(self, n_q, n_k, causal=False):
        m = torch.ones(n_q, n_k, dtype=torch.bool)
        return m.tril() if causal else m

    def nnz(self, n_q, n_k, causal=False):
        return int(self.dense_mask(n_q, n_k, causal).sum())

    def attend(self, q, k, v, causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def misbehave(self, q):
        return q.shape[2] >= self.at_len


class WrongShape(_Base):
    """Returns (B, n, H, D) instead of (B, H, n, D)."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal)
        return out.transpose(1, 2).contiguous() if self.misbehave(q) else out


class WrongDtype(_Base):
    """Returns float64 for float32 inputs."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal)
        return out.double() if self.misbehave(q) else out


class NaNOutput(_Base):
    """Returns NaN everywhere."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal)
        return out * float("nan") if self.misbehave(q) else out


class _NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class NaNGrad(_Base):
    """A correct forward whose backward sends NaN into q, k and v."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if self.misbehave(q):
            q, k, v = (_NaNBackward.apply(t) for t in (q, k, v))
        return self.attend(q, k, v, causal)


class Detached(_Base):
    """Cuts its output off the autograd graph: no gradient reaches q, k or v."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q.detach(), k.detach(), v.detach(), causal)
        return out + 0 * q.sum().detach() if self.misbehave(q) else self.attend(q, k, v, causal)


class KeepsCache(_Base):
    """Allocates a 64 MiB cache on its `on_call`-th call (default: the first) and keeps it, as a
    plan or a workspace would."""

    def __init__(self, at_len: int = 0, cache_mib: int = 64, on_call: int = 1):
        super().__init__(at_len)
        self.cache_mib, self.on_call, self.calls = cache_mib, on_call, 0
        self._cache = None

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        self.calls += 1
        if self._cache is None and self.misbehave(q) and self.calls >= self.on_call:
            self._cache = torch.ones(self.cache_mib * 2**20 // 4)  # float32: cache_mib MiB, touched
        return self.attend(q, k, v, causal)


class Hangs(_Base):
    """Never returns."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        while self.misbehave(q):
            time.sleep(1)
        return self.attend(q, k, v, causal)


class Crashes(_Base):
    """Kills its own process with SIGSEGV, as a bad kernel would."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if self.misbehave(q):
            os.kill(os.getpid(), signal.SIGSEGV)
        return self.attend(q, k, v, causal)


class ExitsQuietly(_Base):
    """Ends its process with status 0 in the middle of a call."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if self.misbehave(q):
            os._exit(0)
        return self.attend(q, k, v, causal)


class Chatty(_Base):
    """Prints on stdout and stderr at every call and once more at exit."""

    def __init__(self, at_len: int = 0):
        super().__init__(at_len)
        atexit.register(lambda: print("chatty: goodbye {not json"))

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        print("chatty: a call")
        print("chatty: on stderr", file=sys.stderr)
        return self.attend(q, k, v, causal)


class Raises(_Base):
    """Raises what it is told: a MemoryError, or a RuntimeError whose message mentions memory."""

    def __init__(self, at_len: int = 0, what: str = "illegal"):
        super().__init__(at_len)
        self.what = what

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if self.misbehave(q):
            if self.what == "memoryerror":
                raise MemoryError("cannot allocate the workspace")
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.attend(q, k, v, causal)


class HalfMaskNoNnz(torch.nn.Module):
    """Exact causal-only attention that declares its pattern by `dense_mask` alone (no `nnz`)."""

    exact = True
    supports_causal = True

    def dense_mask(self, n_q, n_k, causal=False):
        return torch.ones(n_q, n_k, dtype=torch.bool).tril()

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class NaNLater(_Base):
    """Correct for its first `good_calls` calls, NaN afterwards."""

    def __init__(self, at_len: int = 0, good_calls: int = 3):
        super().__init__(at_len)
        self.good_calls, self.calls = good_calls, 0

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        self.calls += 1
        out = self.attend(q, k, v, causal)
        return out * float("nan") if self.calls > self.good_calls else out


class NaNInSecondInstance(_Base):
    """NaN in every instance but the first one built in this process (a model's later layers)."""

    built = 0

    def __init__(self, at_len: int = 0):
        super().__init__(at_len)
        NaNInSecondInstance.built += 1
        self.index = NaNInSecondInstance.built

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        out = self.attend(q, k, v, causal)
        return out * float("nan") if self.index % 2 == 0 else out


class MutatesInputs(_Base):
    """Overwrites v with ones and returns ones: a perfect score against a reference computed on
    the altered inputs."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        with torch.no_grad():
            v.fill_(1.0)
        return self.attend(q, k, v, causal)


class ChangesThreads(_Base):
    """Sets torch to one thread and leaves it so."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        torch.set_num_threads(1)
        return self.attend(q, k, v, causal)


class BadInit(_Base):
    """Its constructor hangs (`what=hang`) or ends the process (`what=exit`)."""

    def __init__(self, at_len: int = 0, what: str = "hang"):
        super().__init__(at_len)
        if what == "hang":
            while True:
                time.sleep(1)
        if what == "exit":
            os._exit(3)


class ForkThenCrash(_Base):
    """Forks a child that sleeps holding every descriptor, then segfaults."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if self.misbehave(q):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            os.kill(os.getpid(), signal.SIGSEGV)
        return self.attend(q, k, v, causal)


class SpawnsAProcess(_Base):
    """Starts a long-running process and never stops it."""

    def __init__(self, at_len: int = 0, marker: str = "effattn-adv-spawned"):
        super().__init__(at_len)
        self.marker, self.started = marker, False

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if not self.started:
            import subprocess

            subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(600)", self.marker])
            self.started = True
        return self.attend(q, k, v, causal)


class ExitsInForward(_Base):
    """Leaves a non-daemon thread behind, then calls sys.exit() inside forward."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if self.misbehave(q):
            import threading

            threading.Thread(target=time.sleep, args=(600,)).start()
            sys.exit(0)
        return self.attend(q, k, v, causal)


class BadNnz(_Base):
    """Counts a negative number of attended pairs."""

    def nnz(self, n_q, n_k, causal=False):
        return -5

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        return self.attend(q, k, v, causal)


class HugeMessage(_Base):
    """Raises with an 8 MB message."""

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        raise RuntimeError("x" * (8 << 20))


class NumpyMemory(_Base):
    """Allocates (and touches) `mib` MiB through NumPy at every call, outside torch's allocator,
    and frees it before returning."""

    def __init__(self, at_len: int = 0, mib: int = 256):
        super().__init__(at_len)
        self.mib = mib

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        import numpy as np

        if self.misbehave(q):
            scratch = np.ones(self.mib * 2**20 // 8)  # float64, every page written
            scratch.sum()
            del scratch
        return self.attend(q, k, v, causal)
