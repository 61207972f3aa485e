"""`python -m bios_callbacks.serving`: serve a model with llama.cpp's server.

    python -m bios_callbacks.serving serve --port 8000      # the embedded model, 16 slots
    python -m bios_callbacks.serving serve --model runs/x/checkpoints/final   # converts once
    python -m bios_callbacks.serving convert runs/x/checkpoints/final         # just the GGUF
    python -m bios_callbacks.serving build                  # optional native build, cached

`serve` runs a native `llama-server` when there is one ($BIOS_LLAMA_SERVER, the cached build,
PATH), else the server embedded in the `xllamacpp` wheel (the `serve` and `dev` extras).
`make serve` and `make serve-build` run `serve` and `build`. Clients connect with
`bios.ServiceClient(base_url="http://127.0.0.1:8000/v1")`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bios_callbacks.serving.llama_cpp import (
    DEFAULT_CTX_PER_SLOT,
    DEFAULT_PARALLEL,
    LlamaServer,
    build_llama_server,
    llama_server_command,
)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m bios_callbacks.serving", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build", help="build the native llama-server once (cached) and print its path"
    )
    build.add_argument("--jobs", type=int, default=None, help="compile jobs (default: all cores)")
    serve = commands.add_parser("serve", help="serve a model on an OpenAI-compatible endpoint")
    serve.add_argument(
        "--model",
        default=None,
        help="a GGUF file or a checkpoint directory / bios://run/name (converted to GGUF once); "
        "default: the embedded SmolLM2-135M-Instruct",
    )
    serve.add_argument("--alias", default=None, help="model name clients send")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, help="parallel slots")
    serve.add_argument("--ctx-per-slot", type=int, default=DEFAULT_CTX_PER_SLOT)
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: half the logical CPUs, at least 1)",
    )
    serve.add_argument("--jobs", type=int, default=None, help="compile jobs if it must build")
    convert = commands.add_parser("convert", help="convert a full-weight checkpoint to GGUF")
    convert.add_argument("checkpoint", help="a checkpoint directory or bios://run/name")
    args = parser.parse_args(argv)

    if args.command == "build":
        print(build_llama_server(jobs=args.jobs))
        return 0
    if args.command == "convert":
        from bios_callbacks.serving.gguf_convert import checkpoint_to_gguf

        print(checkpoint_to_gguf(args.checkpoint))
        return 0
    if llama_server_command() is None:
        print(
            "No llama-server and no xllamacpp (`pip install xllamacpp` is quicker); building "
            "llama-server once (about 25 minutes, cached).",
            file=sys.stderr,
        )
        build_llama_server(jobs=args.jobs)
    model, alias = args.model, args.alias
    if model is not None and not model.endswith(".gguf"):
        from bios_callbacks.models import is_checkpoint_ref, resolve_model_path
        from bios_callbacks.serving.gguf_convert import checkpoint_to_gguf

        # Served under its directory's absolute path: clients naming it either way match it.
        directory = resolve_model_path(model) if is_checkpoint_ref(model) else Path(model)
        alias = alias or str(directory.resolve())
        model = str(checkpoint_to_gguf(model))
    server = LlamaServer(
        model,
        alias=alias,
        host=args.host,
        port=args.port,
        parallel=args.parallel,
        ctx_per_slot=args.ctx_per_slot,
        threads=args.threads,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the server too
    server.start()
    print(
        f"Serving {server.alias!r} ({server.model.name}, {server.parallel} slots) at "
        f"{server.base_url}\n  client: bios.ServiceClient(base_url={server.base_url!r})"
        f".create_sampling_client(base_model={server.alias!r})\nCtrl-C stops it.",
        flush=True,
    )
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
