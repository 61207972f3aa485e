"""The parts of a split round in one process: the leader's bookkeeping (pure Python) and the
tick loop over a one-rank gloo group, with faults injected into a worker."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from bios_callbacks import types
from bios_callbacks.distributed.leader import Leader
from bios_callbacks.distributed.wire import Done, Report
from bios_callbacks.sampling.request import Request

GREEDY = types.SamplingParams(max_tokens=5, temperature=0.0)


def _request(prompt_len: int, num_samples: int, seed: int = 3) -> Request:
    return Request(list(range(1, prompt_len + 1)), num_samples, GREEDY, 5, seed=seed)


def test_samples_of_one_call_are_sliced_over_ranks_keeping_their_indices():
    leader = Leader(world_size=3)
    leader.submit_sample(_request(4, 7))
    jobs = leader.next_tick().jobs
    assert sorted((job.first, job.count) for job in jobs) == [(0, 3), (3, 2), (5, 2)]
    assert sorted(job.rank for job in jobs) == [0, 1, 2]
    assert {job.seed for job in jobs} == {3}


def test_single_samples_go_to_the_least_loaded_rank():
    leader = Leader(world_size=2)
    leader.submit_sample(_request(50, 1))  # a long one
    for _ in range(4):
        leader.submit_sample(_request(5, 1))
    ranks = [job.rank for job in leader.next_tick().jobs]
    assert ranks == [0, 1, 1, 1, 1]  # the short ones fill rank 1 until it carries as much


def test_a_call_resolves_in_call_order_once_every_slice_is_back():
    leader = Leader(world_size=2)
    future = leader.submit_score([[1, 2], [3, 4, 5], [6, 7]], batch_size=8)
    first, second = leader.next_tick().jobs
    leader.receive([Report(), Report(done=[Done(second.job_id, result=[[-3.0]])])])
    assert not future.done()
    leader.receive([Report(done=[Done(first.job_id, result=[[-1.0], [-2.0, -2.5]])]), Report()])
    assert future.result() == [[-1.0], [-2.0, -2.5], [-3.0]]


def test_a_failed_slice_fails_its_call_naming_the_rank_and_cancels_the_rest():
    leader = Leader(world_size=2)
    request = _request(4, 2)
    leader.submit_sample(request)
    jobs = leader.next_tick().jobs
    on_one = next(job for job in jobs if job.rank == 1)
    leader.receive([Report(), Report(done=[Done(on_one.job_id, error="OSError: disk")])])
    with pytest.raises(RuntimeError, match=r"rank 1: OSError: disk"):
        request.future.result()
    other = next(job for job in jobs if job.rank == 0)
    assert leader.next_tick().cancelled == [other.job_id]


def test_a_cancelled_call_cancels_its_slices_and_frees_their_load():
    leader = Leader(world_size=2)
    request = _request(30, 2)
    leader.submit_sample(request)
    jobs = leader.next_tick().jobs
    request.future.cancel()
    assert sorted(leader.next_tick().cancelled) == sorted(job.job_id for job in jobs)
    leader.submit_sample(_request(5, 1))
    assert [job.rank for job in leader.next_tick().jobs] == [0]  # both ranks idle again


def test_after_the_round_breaks_new_calls_fail_at_once():
    leader = Leader(world_size=2)
    pending = leader.submit_score([[1, 2]], batch_size=8)
    leader.fail_all(RuntimeError("lost contact"))
    later = leader.submit_sample(_request(4, 1))
    for future in (pending, later):
        with pytest.raises(RuntimeError, match="lost contact"):
            future.result()


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_fault_in_a_worker_fails_only_the_calls_it_holds_and_the_round_goes_on(
    one_rank_group, tiny_model, tokenizer, monkeypatch
):
    from bios_callbacks.callback.round import RoundOutcome
    from bios_callbacks.distributed.rounds import SplitRounds
    from bios_callbacks.distributed.worker import RankWorker
    from bios_callbacks.sampling import SamplingClient

    prompt = tokenizer.encode("a few words")
    with SamplingClient.from_module(tiny_model, tokenizer) as local:
        expected = local.sample(prompt, 2, GREEDY).sequences

    accept = RankWorker._accept
    calls = []

    def accept_once_broken(self, job):
        calls.append(job)
        if len(calls) == 1:
            raise MemoryError("injected")
        return accept(self, job)

    monkeypatch.setattr(RankWorker, "_accept", accept_once_broken)
    rounds = SplitRounds(tiny_model, tokenizer, sharded=False)

    seen = {}

    async def evaluate(clients) -> RoundOutcome:
        client = clients.sampling()
        with pytest.raises(RuntimeError, match=r"rank 0: evaluation worker failed: MemoryError"):
            await client.sample_async(prompt, 2, GREEDY)
        seen["again"] = (await client.sample_async(prompt, 2, GREEDY)).sequences
        seen["scored"] = await clients.training().compute_logprobs_async([prompt])
        return RoundOutcome()

    rounds.run(None, evaluate)
    rounds.close()
    assert seen["again"] == expected
    assert len(seen["scored"][0]) == len(prompt) - 1  # the scoring call was served too
    assert rounds.served == [3]  # 2 samples + 1 scored sequence, all on the only rank


def test_split_scoring_matches_one_process_under_a_sampling_dtype_and_empty_calls_return(
    one_rank_group, tiny_model, tokenizer
):
    """Scoring stays in the weights' dtype whatever autocast sampling uses, an empty scoring
    call returns at once, and the client options a user may pass (model_name) are taken."""
    from bios_callbacks.callback.round import RoundOutcome
    from bios_callbacks.distributed.rounds import SplitRounds
    from bios_callbacks.training_client import TrainingClient

    sequences = [tokenizer.encode("some held-out words"), tokenizer.encode("and more")]
    expected = TrainingClient(tiny_model).compute_logprobs(sequences)
    options = {"compute_dtype": "bfloat16", "model_name": "tiny"}
    rounds = SplitRounds(tiny_model, tokenizer, sharded=False, sampling_options=options)

    seen = {}

    async def score(clients) -> RoundOutcome:
        training = clients.training()
        seen["empty"] = await training.compute_logprobs_async([])
        seen["scored"] = await training.compute_logprobs_async(sequences)
        seen["named"] = clients.sampling().model_name
        return RoundOutcome()

    rounds.run(None, score)
    rounds.close()
    assert seen == {"empty": [], "scored": expected, "named": "tiny"}
