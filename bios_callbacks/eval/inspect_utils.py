"""Inspect AI model API over a bios sampling client.

`InspectAPIFromBiosSampling` turns Inspect's chat messages into a prompt with one of our
renderers, samples it through a `SamplingClient` and hands the parsed answer back as an Inspect
`ModelOutput`. Wrap it in `inspect_ai.model.Model` to use it in `eval`, `eval_async` or
`model_roles`; from Inspect's own CLI it is the `bios/` provider
(`inspect eval TASK --model bios/<name-or-path> -M renderer_name=chatml`).

Example:
    >>> import bios_callbacks as bios
    >>> from inspect_ai import eval
    >>> from inspect_ai.model import GenerateConfig, Model
    >>> client = bios.ServiceClient().create_sampling_client(  # doctest: +SKIP
    ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> api = InspectAPIFromBiosSampling(  # doctest: +SKIP
    ...     renderer_name="chatml", model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
    ...     sampling_client=client, verbose=False)
    >>> eval(my_task, model=Model(api, GenerateConfig(max_connections=32)))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from typing import Any

from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    Content,
    ContentReasoning,
    ContentText,
    GenerateConfig,
    Logprob,
    Logprobs,
    ModelAPI,
    ModelOutput,
    ModelUsage,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from bios_callbacks.eval import inspect_private
from bios_callbacks.renderers.base import (
    ContentPart,
    Message,
    TextPart,
    ThinkingPart,
    ensure_list,
    get_text_content,
)
from bios_callbacks.sampling.defaults import DEFAULT_MAX_BATCH_SIZE
from bios_callbacks.types import ModelInput, SampledSequence, SamplingParams

logger = logging.getLogger(__name__)

PROVIDER_NAME = "bios"
REGISTRY_NAME = f"bios_callbacks/{PROVIDER_NAME}"
DEFAULT_MAX_TOKENS = 512
DEFAULT_MAX_CONNECTIONS = DEFAULT_MAX_BATCH_SIZE  # one batch of the sampling client

_STOP_REASONS = {"stop": "stop", "length": "max_tokens"}
BASE_URL_ENV, API_KEY_ENV = "BIOS_BASE_URL", "BIOS_API_KEY"


class InspectAPIFromBiosSampling(ModelAPI):
    """An Inspect `ModelAPI` that generates with a bios sampling client.

    Args:
        renderer_name: chat format (`chatml`, `llama3`, `role_colon`, `hf_template`); when
            omitted it comes from the checkpoint's metadata, else from the model name.
        model_name: the model's name (hub id, checkpoint directory or `bios://run/name`); used
            to load a sampling client when `sampling_client` is not given.
        sampling_client: the client to sample with (shares the weights it was made from).
        verbose: log every prompt and response at INFO level.
        response_prefix: text every reply starts with, placed after the prompt so the model
            continues it (prefill) and included in the returned text; e.g. "GRADE:" makes a
            small grader give its verdict at once (`-M response_prefix=GRADE:`).
        dtype: weights' dtype when the provider loads the model itself ("float32" or
            "bfloat16"; `-M dtype=bfloat16`).
        base_url: sample from a serving engine's OpenAI-compatible endpoint instead of loading
            the model (`inspect eval ... --model-base-url http://127.0.0.1:8000/v1`, or
            `$BIOS_BASE_URL`); `model_name` is the name the server serves. `api_key` (or
            `$BIOS_API_KEY`) is its bearer token.
        config: Inspect's generation settings (passed by `get_model`); when the provider loads
            the model itself, `max_connections` (default 32) is also its batch size.
        include_reasoning: return a thinking renderer's reasoning (Qwen3's `<think>` block) as
            Inspect `ContentReasoning` before the answer's `ContentText`; by default (False)
            only the answer's text is returned, so scorers see the answer alone
            (`-M include_reasoning=true`).

    Inspect messages become renderer messages as tinker-cookbook converts them
    (`convert_inspect_messages`): text is stripped, the parts of a user, system or tool message
    are joined by spaces, and an assistant message with parts keeps its text and reasoning parts.

    `GenerateConfig` maps as follows: `temperature` (default 0: greedy), `max_tokens` (default
    512), `top_p`, `top_k`, `seed`, `num_choices` (samples per prompt) and `stop_seqs` (added to
    the renderer's end-of-turn markers, removed from the returned text). Tools are not
    supported: tool messages are rendered as `tool` turns and tool definitions are ignored.

    Example:
        >>> api = InspectAPIFromBiosSampling(  # doctest: +SKIP
        ...     renderer_name="chatml", model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        ...     sampling_client=client)
    """

    def __init__(
        self,
        model_name: str,
        renderer_name: str | None = None,
        sampling_client: Any = None,
        verbose: bool = False,
        response_prefix: str = "",
        dtype: str = "float32",
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),  # noqa: B008 (Inspect's own signature)
        include_reasoning: bool = False,
        **model_args: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        if model_args:
            raise TypeError(
                f"Unknown model argument(s) for the bios provider: {sorted(model_args)}; "
                "valid ones are renderer_name, sampling_client, verbose, response_prefix, dtype "
                "and include_reasoning (e.g. -M renderer_name=chatml -M dtype=bfloat16)."
            )
        self.include_reasoning = include_reasoning
        self._owns_client = sampling_client is None
        if sampling_client is None and api_key == inspect_private.model_info_api_key():
            # Inspect instantiates providers by name just to look up model facts: load nothing.
            self._owns_client = False
            return
        if sampling_client is None:  # batch as many samples as Inspect keeps in flight
            batch = config.max_connections or DEFAULT_MAX_CONNECTIONS
            sampling_client, default_renderer = _client_for(
                model_name,
                batch,
                dtype,
                base_url or os.environ.get(BASE_URL_ENV),
                api_key or os.environ.get(API_KEY_ENV),
            )
            renderer_name = renderer_name or default_renderer
        if renderer_name is None:
            from bios_callbacks.renderers import default_renderer_name

            renderer_name = default_renderer_name(model_name)

        from bios_callbacks.renderers import get_renderer

        self.sampling_client = sampling_client
        self.tokenizer = sampling_client.tokenizer
        self.renderer_name = renderer_name
        self.renderer = get_renderer(name=renderer_name, tokenizer=self.tokenizer)
        self.verbose = verbose
        self.response_prefix = response_prefix
        self._prefix_tokens = (
            self.tokenizer.encode(response_prefix, add_special_tokens=False)
            if response_prefix
            else []
        )
        # Instances made directly (not through `get_model`) still need registry info, which
        # Inspect reads to name the model ("bios/<model_name>") in logs.
        inspect_private.register_model_api(
            self, REGISTRY_NAME, {"model_name": model_name, "renderer_name": renderer_name}
        )

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        """Renders `input`, samples `config.num_choices` answers and parses them."""
        prompt = self.renderer.build_generation_prompt(convert_inspect_messages(input))
        if self._prefix_tokens:
            prompt = ModelInput.from_ints(prompt.to_ints() + self._prefix_tokens)
        params = self.sampling_params(config)
        response = await self.sampling_client.sample_async(
            prompt=prompt, num_samples=config.num_choices or 1, sampling_params=params
        )
        choices = [
            self._choice(sequence, config.stop_seqs or [], bool(config.logprobs))
            for sequence in response.sequences
        ]
        if self.verbose:
            logger.info(
                "prompt: %r\nresponse: %r",
                self.tokenizer.decode(prompt.to_ints()),
                choices[0].message.text,
            )
        output_tokens = sum(len(s.tokens) for s in response.sequences)
        return ModelOutput(
            model=self.model_name,
            choices=choices,
            usage=ModelUsage(
                input_tokens=prompt.length,
                output_tokens=output_tokens,
                total_tokens=prompt.length + output_tokens,
            ),
        )

    def sampling_params(self, config: GenerateConfig) -> SamplingParams:
        """Our sampling parameters for an Inspect `GenerateConfig`."""
        stop: list[Any] = list(self.renderer.get_stop_sequences())
        stop += list(config.stop_seqs or [])
        return SamplingParams(
            max_tokens=config.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=config.temperature if config.temperature is not None else 0.0,
            top_p=config.top_p if config.top_p is not None else 1.0,
            top_k=config.top_k if config.top_k is not None else -1,
            seed=config.seed,
            stop=stop,
        )

    def _choice(
        self, sequence: SampledSequence, stop_seqs: list[str], logprobs: bool
    ) -> ChatCompletionChoice:
        message, _ = self.renderer.parse_response(sequence.tokens, extra_stop=stop_seqs)
        content: str | list[Content]
        if self.include_reasoning:
            content = _message_to_inspect_content(message, self.response_prefix)
        else:
            content = self.response_prefix + get_text_content(message)
        return ChatCompletionChoice(
            message=ChatMessageAssistant(content=content, model=self.model_name, source="generate"),
            stop_reason=_STOP_REASONS[sequence.stop_reason],
            logprobs=self._logprobs(sequence) if logprobs else None,
        )

    def _logprobs(self, sequence: SampledSequence) -> Logprobs:
        return Logprobs(
            content=[
                Logprob(token=self.tokenizer.decode([token]), logprob=logprob)
                for token, logprob in zip(sequence.tokens, sequence.logprobs, strict=True)
            ]
        )

    def max_tokens(self) -> int | None:
        """Default `max_tokens` when a task sets none."""
        return DEFAULT_MAX_TOKENS

    def max_connections(self) -> int:
        """Requests in flight at once: enough to fill one batch of the sampling client.

        Inspect uses it when `adaptive_connections` is off; otherwise it sizes concurrency
        itself, so our CLI and inline builder set `max_connections` explicitly.
        """
        return getattr(self.sampling_client, "max_batch_size", DEFAULT_MAX_CONNECTIONS)

    def connection_key(self) -> str:
        """One connection pool per sampling client."""
        return str(id(self.sampling_client))

    def collapse_user_messages(self) -> bool:
        """Consecutive user turns become one, as chat templates expect."""
        return True

    def close(self) -> None:
        """Closes the sampling client if this API created it."""
        if self._owns_client:
            self.sampling_client.close()


def convert_inspect_messages(messages: list[ChatMessage]) -> list[Message]:
    """Inspect chat messages as renderer messages, as tinker-cookbook converts them.

    Text content is stripped. A message with content parts keeps its text and reasoning
    (`ContentReasoning` becomes a thinking part) when it is the assistant's; a user, system or
    tool message's parts are joined by spaces into one string. Other parts (images, audio) are
    left out with a warning.

    Example:
        >>> from inspect_ai.model import ChatMessageUser, ContentText
        >>> convert_inspect_messages([ChatMessageUser(content=" Hi ")])
        [{'role': 'user', 'content': 'Hi'}]
        >>> parts = [ContentText(text="Capital of"), ContentText(text="France?")]
        >>> convert_inspect_messages([ChatMessageUser(content=parts)])
        [{'role': 'user', 'content': 'Capital of France?'}]
    """
    converted: list[Message] = []
    for message in messages:
        if isinstance(message.content, str):
            converted.append(Message(role=message.role, content=message.content.strip()))
            continue
        parts: list[ContentPart] = []
        for item in message.content:
            if isinstance(item, ContentText):
                parts.append(TextPart(type="text", text=item.text))
            elif isinstance(item, ContentReasoning):
                parts.append(ThinkingPart(type="thinking", thinking=item.reasoning))
            else:
                logger.warning(
                    "Leaving out a %s part of a %s message: the bios provider renders text and "
                    "reasoning only.",
                    type(item).__name__,
                    message.role,
                )
        if message.role == "assistant" and parts:
            converted.append(Message(role=message.role, content=parts))
        else:
            text = " ".join(p["text"] if p["type"] == "text" else p["thinking"] for p in parts)
            converted.append(Message(role=message.role, content=text.strip()))
    return converted


def _message_to_inspect_content(message: Message, prefix: str = "") -> list[Content]:
    """A parsed message's parts as Inspect content: thinking as `ContentReasoning`, text as
    `ContentText`; `prefix` (the response prefix) starts the first text."""
    content: list[Content] = []
    for part in ensure_list(message["content"]):
        if part["type"] == "thinking":
            content.append(ContentReasoning(reasoning=part["thinking"]))
        else:
            content.append(ContentText(text=prefix + part["text"]))
            prefix = ""
    if prefix:  # a reply of reasoning only
        content.append(ContentText(text=prefix))
    return content


def _client_for(
    model_name: str,
    max_batch_size: int,
    dtype: str,
    base_url: str | None = None,
    api_key: str | None = None,
) -> tuple[Any, str | None]:
    """A sampling client for a hub id, local directory, checkpoint or `bios://` URI, loaded
    here or, with `base_url`, served there under that name.

    Returns the client and the renderer recorded in the checkpoint (None for base models).
    """
    from bios_callbacks.models import is_checkpoint_ref
    from bios_callbacks.sampling.service import ServiceClient

    if base_url is None:
        model_name = local_model_name(model_name)

    service = ServiceClient(
        max_batch_size=max_batch_size, dtype=dtype, base_url=base_url, api_key=api_key
    )
    if is_checkpoint_ref(model_name):
        from bios_callbacks.checkpoints import read_checkpoint_metadata, resolve_model_path

        path = resolve_model_path(model_name)
        renderer_name = read_checkpoint_metadata(path).renderer_name
        return service.create_sampling_client(model_path=str(path)), renderer_name
    return service.create_sampling_client(base_model=model_name), None


def local_model_name(name: str) -> str:
    """`name` as Inspect passes it after `bios/`, with an absolute path's lost `/` put back.

    Inspect splits `--model bios/<name>` at its first `/`, so `bios//abs/ckpt` gives
    `/abs/ckpt` and `bios/abs/ckpt` gives `abs/ckpt`. A name that is no path relative to the
    working directory but is an existing directory from `/` means that directory; hub ids,
    relative paths and `bios://` URIs are returned as they are. A path-like name that exists
    neither way is a `FileNotFoundError` showing the forms that work.

    Example:
        >>> local_model_name("tmp")  # no ./tmp here, but /tmp exists  # doctest: +SKIP
        '/tmp'
        >>> local_model_name("HuggingFaceTB/SmolLM2-135M-Instruct")
        'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    from pathlib import Path

    if name.startswith(("bios://", "/", "~", ".")) or Path(name).exists():
        return name
    absolute = Path("/", name)
    if absolute.is_dir():
        return str(absolute)
    if name.count("/") > 1:  # a hub id has one
        raise FileNotFoundError(
            f"bios/{name}: no model or checkpoint directory {name!r} (relative to "
            f"{Path.cwd()}) or {str(absolute)!r}. Name a directory after bios/: "
            "--model bios/runs/<run>/checkpoints/<name> (relative), --model bios/<absolute "
            "path> (with or without its leading /), or --model bios/bios://<run>/<name>."
        )
    return name
