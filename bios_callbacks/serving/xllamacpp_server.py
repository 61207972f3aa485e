"""llama.cpp's C++ server from the `xllamacpp` wheel, started with `llama-server`'s flags.

`xllamacpp` (PyPI, MIT) embeds llama.cpp's server: the same continuous batching over parallel
slots, OpenAI completions API with token-id prompts and logprobs with token ids as the
`llama-server` binary, without a 25-minute source build. `LlamaServer` runs this module when no
native binary is found. It accepts the flags `LlamaServer` passes (and only those), serves until
SIGTERM or SIGINT (Ctrl-C), then shuts the server down and exits 0.

Example:
    python -m bios_callbacks.serving.xllamacpp_server --model model.gguf --alias my-model \\
        --host 127.0.0.1 --port 8000 --parallel 16 --ctx-size 32768 --threads 1
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence

SUPPORTED_FLAGS = (
    "--model",
    "--alias",
    "--host",
    "--port",
    "--parallel",
    "--ctx-size",
    "--threads",
)
"""The `llama-server` flags this launcher understands; anything else is an error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(
            2,
            f"{self.prog}: error: {message}\n(the xllamacpp launcher accepts only "
            f"{' '.join(SUPPORTED_FLAGS)}; for other llama-server flags build the native "
            "binary with `make serve-build` or set $BIOS_LLAMA_SERVER)\n",
        )


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive = _int_in(1, 2**31 - 1, "an integer >= 1")
_port = _int_in(1, 65535, "a TCP port 1-65535")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses `llama-server`-style flags; exits with code 2 naming any bad or unknown flag."""
    parser = _Parser(
        prog="python -m bios_callbacks.serving.xllamacpp_server",
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    parser.add_argument("--model", required=True, help="a GGUF file")
    parser.add_argument("--alias", default=None, help="model name clients send")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8080)
    parser.add_argument("--parallel", type=_positive, default=1, help="parallel slots")
    parser.add_argument(
        "--ctx-size", type=_positive, default=4096, help="context of all slots together"
    )
    parser.add_argument("--threads", type=_positive, default=None, help="CPU threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Serves until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
    args = parse_args(argv)
    import xllamacpp  # after parsing: `--help` and flag errors work without it

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    if args.alias:
        params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size
    if args.threads is not None:
        params.cpuparams.n_threads = args.threads

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server = xllamacpp.Server(params)  # loads the model, then serves from its own threads
    except RuntimeError as error:
        print(f"xllamacpp could not start the server on {args.model}: {error}", file=sys.stderr)
        return 1
    print(f"xllamacpp server listening on {server.listening_address}", file=sys.stderr, flush=True)
    while not stop.wait(1.0):  # a timeout keeps signal handlers running promptly
        pass
    del server  # stops the HTTP and slot threads
    return 0


if __name__ == "__main__":
    sys.exit(main())
