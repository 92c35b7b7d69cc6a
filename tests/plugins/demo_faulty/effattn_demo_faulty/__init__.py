"""A plugin that simulates a dying Ray worker, for effattn's executor tests only.

On a Ray sweep each point is measured in a child process of the Ray worker. For its first
`kill_parent_times` calls at length `at_len` (counted across processes in the file `marker`),
this plugin kills its parent (the Ray worker) and then itself, as a node failure or an OOM kill
of the worker would. Otherwise it is exact softmax attention. Never use it in a local sweep: there
its parent is the sweep itself.
"""

import os
import signal

import torch
import torch.nn.functional as F


class FaultyAttention(torch.nn.Module):
    exact = True
    supports_causal = True

    def __init__(self, kill_parent_times: int = 0, at_len: int = 0, marker: str = ""):
        super().__init__()
        self.kill_parent_times, self.at_len, self.marker = kill_parent_times, at_len, marker

    def dense_mask(self, n_q, n_k, causal=False):
        m = torch.ones(n_q, n_k, dtype=torch.bool)
        return m.tril() if causal else m

    def forward(self, q, k, v, causal=False, key_padding_mask=None):
        if self.marker and q.shape[2] == self.at_len:
            deaths = open(self.marker).read().count("\n") if os.path.exists(self.marker) else 0
            if deaths < self.kill_parent_times:
                with open(self.marker, "a") as f:
                    f.write(f"killed worker {os.getppid()}\n")
                os.kill(os.getppid(), signal.SIGKILL)
                os._exit(1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
