"""A rank that stops on an error says so through the rendezvous store, so the others name
it even while its process is still ending (two gloo ranks on loopback).

Run as ``python -m tests.pyro_vae.test_distributed_announce OUT`` with torchrun's
variables set, this module is one rank: rank 1 raises after a few all-reduces and stays
alive until rank 0 has written what it caught to ``OUT/rank0.txt``.
"""

import os
import sys
import time
from pathlib import Path

import torch

from pyro_vae.distributed import Group, RankLost, _alive, session
from tests.pyro_vae.test_distributed import _ranks


def test_a_rank_that_stops_on_an_error_is_named_while_its_process_lives(tmp_path):
    ranks = _ranks(["-m", "tests.pyro_vae.test_distributed_announce", str(tmp_path)])
    assert [p.wait(timeout=120) for p in ranks] == [0, 0]
    caught = (tmp_path / "rank0.txt").read_text()
    assert "rank 0 of 2: the all-reduce failed, rank 1 stopped (ValueError: no more data)" in caught


class _Store:
    def __init__(self, keys):
        self.keys = keys

    def set_timeout(self, timeout):
        pass

    def check(self, keys):
        return all(k in self.keys for k in keys)

    def get(self, key):
        return self.keys[key].encode()


def test_announced_and_gone_ranks_are_named_together_and_an_unreachable_store_is_skipped():
    host, me = os.uname().nodename, os.getpid()
    peers = ((host, me), ("elsewhere", 1), (host, me))
    group = Group(0, 3, peers, _Store({"left/1": "MemoryError"}))
    assert group._who_is_gone() == "rank 1 stopped (MemoryError)"

    class Broken(_Store):
        def check(self, keys):
            raise RuntimeError("connection refused")

    group = Group(0, 3, peers, Broken({}))
    assert "ranks [1] not checked" in group._who_is_gone(wait=0.2)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    try:
        with session() as group:
            peer_pid = group.peers[0][1]
            for _ in range(20):
                group.all_reduce(torch.ones(3))
            if group.rank == 1:
                raise ValueError("no more data")
            group.all_reduce(torch.ones(3))
    except RankLost as err:
        (out / "rank0.txt").write_text(str(err))
    except ValueError:
        deadline = time.monotonic() + 60
        while _alive(peer_pid) and time.monotonic() < deadline:  # rank 0 reports first
            time.sleep(0.05)
