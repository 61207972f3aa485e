"""evaluation_mode: flags restored one by one, and overlapping blocks (several threads) agree."""

from __future__ import annotations

import threading

import torch

from bios_callbacks.models.train_flags import evaluation_mode


def _net() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    net[2].eval()  # a deliberately frozen submodule
    return net


def test_flags_come_back_one_by_one():
    net = _net()
    with evaluation_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, True, False]


def test_overlapping_blocks_in_two_threads_keep_eval_until_the_last_ends():
    net = _net()
    entered, release_first, first_done = threading.Event(), threading.Event(), threading.Event()

    released = []

    def first():
        with evaluation_mode(net):
            entered.set()
            released.append(release_first.wait(5))
        first_done.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(5)
    with evaluation_mode(net):  # entered while the other thread's block is still open
        release_first.set()
        assert first_done.wait(5)
        # The other block ended while this one runs: still eval mode (no dropout mid-forward).
        assert not any(m.training for m in net.modules())
    thread.join()
    assert released == [True]  # the two blocks really overlapped
    assert [m.training for m in net.modules()] == [True, True, True, False]
