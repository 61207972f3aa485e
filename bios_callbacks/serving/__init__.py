"""Serving engines for sampling over HTTP: llama.cpp's `llama-server`, built and started here.

    llama_cpp.py      find / build llama-server once (cached), `LlamaServer` process
    gguf_convert.py   a saved full-weight checkpoint -> GGUF, for llama-server
    __main__.py       `python -m bios_callbacks.serving build|serve|convert` (`make serve`)

Clients connect with `bios.ServiceClient(base_url=...)`; on GPUs, `vllm serve <checkpoint dir>`
serves the same API.

Example:
    >>> from bios_callbacks.serving.llama_cpp import LlamaServer  # doctest: +SKIP
"""
