"""Evaluation rounds spread over the ranks of a multi-process run (DDP, FSDP, FSDP2).

- `rounds`: `SplitRounds`, what `EvalCallback` runs a round through when world_size > 1.
- `leader`: rank 0 cuts client calls into per-rank jobs and resolves their futures.
- `worker`: every rank decodes and scores its jobs, one forward pass per tick.
- `clients`: rank 0's sampling and training clients over the leader.
- `exchange`: the ticks' own gloo group, with a timeout. `wire`: what a tick carries.
"""
