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
    >>> eval(my_task, model=Model(api, GenerateConfig(max_connections=64)))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Any

from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageTool,
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
from inspect_ai.tool import ToolCall as InspectToolCall
from inspect_ai.tool import ToolChoice, ToolFunction, ToolInfo

from bios_callbacks.eval import inspect_private
from bios_callbacks.exceptions import ConfigurationError
from bios_callbacks.renderers.base import (
    ContentPart,
    Message,
    Renderer,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolSpec,
    ensure_list,
    find_first_stop,
    format_content_as_string,
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
            the model itself, `max_connections` (default 64) is also its batch size.
        include_reasoning: return a thinking renderer's reasoning (Qwen3's `<think>` block) as
            Inspect `ContentReasoning` before the answer's `ContentText`; by default (False)
            only the answer's text is returned, so scorers see the answer alone
            (`-M include_reasoning=true`).

    Inspect messages become renderer messages as tinker-cookbook converts them
    (`convert_inspect_messages`): text is stripped, the parts of a user, system or tool message
    are joined by spaces, and an assistant message with parts keeps its text and reasoning parts.

    `GenerateConfig` maps as follows: `temperature` (default 0: greedy), `max_tokens` (default
    512), `top_p`, `top_k`, `seed`, `num_choices` (samples per prompt) and `stop_seqs` (added to
    the renderer's end-of-turn markers, removed from the returned text).

    Tools work as in tinker-cookbook: the task's tools are declared by the renderer's
    `create_conversation_prefix_with_tools` (Qwen3's `# Tools` system block; a renderer without
    one is a `ConfigurationError`), the model's `<tool_call>` blocks come back as Inspect tool
    calls (one that does not parse comes back as `unparsed_tool_call` with its `parse_error`,
    which Inspect reports to the model), and earlier calls and tool results are rendered in
    the conversation. `tool_choice="none"` declares no tools; `"any"` or a named function
    makes a reply without such a call an error.

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
        """Renders `input` (with `tools` declared), samples `config.num_choices` answers and
        parses them, tool calls included."""
        messages = _conversation_with_tool_declarations(
            self.renderer, convert_inspect_messages(input), tools, tool_choice
        )
        prompt = self.renderer.build_generation_prompt(messages)
        if self._prefix_tokens:
            prompt = ModelInput.from_ints(prompt.to_ints() + self._prefix_tokens)
        params = self.sampling_params(config)
        response = await self.sampling_client.sample_async(
            prompt=prompt, num_samples=config.num_choices or 1, sampling_params=params
        )
        replies = [
            self.renderer.parse_response(
                _closed_at_stop_seqs(self.renderer, self.tokenizer, s.tokens, config.stop_seqs)
            )[0]
            for s in response.sequences
        ]
        _validate_required_tool_choice(replies, tool_choice)
        choices = [
            self._choice(i, reply, sequence, bool(config.logprobs))
            for i, (reply, sequence) in enumerate(zip(replies, response.sequences, strict=True))
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
        self, index: int, message: Message, sequence: SampledSequence, logprobs: bool
    ) -> ChatCompletionChoice:
        content: str | list[Content]
        if self.include_reasoning:
            content = _message_to_inspect_content(message, self.response_prefix)
        else:
            content = self.response_prefix + get_text_content(message)
        tool_calls = _message_to_inspect_tool_calls(message, choice_index=index)
        stop_reason = _STOP_REASONS[sequence.stop_reason]
        return ChatCompletionChoice(
            message=ChatMessageAssistant(
                content=content, model=self.model_name, source="generate", tool_calls=tool_calls
            ),
            stop_reason="tool_calls" if tool_calls and stop_reason == "stop" else stop_reason,
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
    left out with a warning. An assistant's tool calls become renderer `ToolCall`s (arguments as
    compact JSON); a tool result keeps `tool_call_id` and the function as `name`, and a failed
    tool's empty result reads "Error: <message>".

    Example:
        >>> from inspect_ai.model import ChatMessageUser, ContentText
        >>> convert_inspect_messages([ChatMessageUser(content=" Hi ")])
        [{'role': 'user', 'content': 'Hi'}]
        >>> parts = [ContentText(text="Capital of"), ContentText(text="France?")]
        >>> convert_inspect_messages([ChatMessageUser(content=parts)])
        [{'role': 'user', 'content': 'Capital of France?'}]
        >>> from inspect_ai.model import ChatMessageTool
        >>> result = ChatMessageTool(content="5", tool_call_id="c1", function="add")
        >>> convert_inspect_messages([result])
        [{'role': 'tool', 'content': '5', 'tool_call_id': 'c1', 'name': 'add'}]
    """
    converted: list[Message] = []
    for message in messages:
        result = Message(role=message.role, content=_content(message))
        if isinstance(message, ChatMessageAssistant) and message.tool_calls:
            result["tool_calls"] = [_renderer_tool_call(call) for call in message.tool_calls]
        if isinstance(message, ChatMessageTool):
            if message.tool_call_id is not None:
                result["tool_call_id"] = message.tool_call_id
            if message.function is not None:
                result["name"] = message.function
            if message.error is not None and not result["content"]:
                result["content"] = f"Error: {message.error.message}"
        converted.append(result)
    return converted


def _content(message: ChatMessage) -> str | list[ContentPart]:
    """A message's content as `convert_inspect_messages` describes it."""
    if isinstance(message.content, str):
        return message.content.strip()
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
        return parts
    return " ".join(p["text"] if p["type"] == "text" else p["thinking"] for p in parts).strip()


def _renderer_tool_call(call: InspectToolCall) -> ToolCall:
    """An Inspect tool call as a renderer's, arguments as compact JSON."""
    arguments = json.dumps(call.arguments, separators=(",", ":"))
    return ToolCall(
        id=call.id, function=ToolCall.FunctionBody(name=call.function, arguments=arguments)
    )


def _inspect_tool_call(call: ToolCall, *, choice_index: int, tool_index: int) -> InspectToolCall:
    """A parsed tool call as Inspect's; arguments that are no JSON object are its parse_error."""
    arguments: dict[str, Any] = {}
    parse_error = None
    try:
        decoded = json.loads(call.function.arguments)
    except json.JSONDecodeError as e:
        parse_error = f"arguments are not JSON: {e}"
    else:
        if isinstance(decoded, dict):
            arguments = decoded
        else:
            parse_error = f"arguments must be a JSON object, got {type(decoded).__name__}"
    return InspectToolCall(
        id=call.id or f"call_{choice_index}_{tool_index}",
        function=call.function.name,
        arguments=arguments,
        parse_error=parse_error,
    )


def _message_to_inspect_tool_calls(
    message: Message, *, choice_index: int
) -> list[InspectToolCall] | None:
    """A parsed reply's tool calls as Inspect's, then its unparsed ones as calls of
    `unparsed_tool_call` carrying the raw text and the `parse_error`; None without any."""
    parsed = message.get("tool_calls") or []
    unparsed = message.get("unparsed_tool_calls") or []
    if not parsed and not unparsed:
        return None
    calls = [
        _inspect_tool_call(call, choice_index=choice_index, tool_index=i)
        for i, call in enumerate(parsed)
    ]
    calls += [
        InspectToolCall(
            id=f"unparsed_call_{choice_index}_{i}",
            function="unparsed_tool_call",
            arguments={"raw_text": call.raw_text},
            parse_error=call.error,
        )
        for i, call in enumerate(unparsed)
    ]
    return calls


def _conversation_with_tool_declarations(
    renderer: Renderer, messages: list[Message], tools: list[ToolInfo], tool_choice: ToolChoice
) -> list[Message]:
    """`messages` after the renderer's declaration of the tools `tool_choice` allows (its
    system message joined with the conversation's own); unchanged when none are allowed."""
    if tool_choice == "none":
        return messages
    if tool_choice == "any" and not tools:
        raise ConfigurationError(
            "Inspect tool_choice='any' requires at least one tool; give the task tools "
            "(use_tools(...)) or use tool_choice='auto'."
        )
    specs = [
        ToolSpec(
            name=tool.name,
            description=tool.description,
            parameters=tool.parameters.model_dump(exclude_none=True),
        )
        for tool in tools
    ]
    if isinstance(tool_choice, ToolFunction):
        specs = [spec for spec in specs if spec["name"] == tool_choice.name]
        if not specs:
            raise ConfigurationError(
                f"Inspect requested unknown tool_choice function {tool_choice.name!r}; the "
                f"task's tools are {[tool.name for tool in tools]}."
            )
    if not specs:
        return messages
    system_prompt, rest = "", messages
    if messages and messages[0]["role"] == "system":
        system_prompt, rest = format_content_as_string(messages[0]["content"]), messages[1:]
    try:
        prefix = renderer.create_conversation_prefix_with_tools(specs, system_prompt)
    except NotImplementedError as e:
        raise ConfigurationError(
            f"Renderer {renderer.name!r} does not support Inspect AI tool-use evals: {e}"
        ) from e
    return prefix + rest


def _closed_at_stop_seqs(
    renderer: Renderer, tokenizer: Any, tokens: list[int], stop_seqs: list[str] | None
) -> list[int]:
    """`tokens`; or, when one of the task's `stop_seqs` occurs in the reply before its end
    (the renderer's end-of-turn marker, or EOS), the reply cut there and closed with that
    marker, so that `parse_response` (tinker-cookbook's one-argument form, which ported
    renderers implement) reads a finished turn. The kept text is encoded as plain text, so
    marker text the model wrote stays text."""
    if not stop_seqs:
        return tokens
    markers = list(renderer.get_stop_sequences())
    ends = {m for m in markers if isinstance(m, int)} | {tokenizer.eos_token_id}
    body = list(itertools.takewhile(lambda token: token not in ends, tokens))
    text = tokenizer.decode(body, skip_special_tokens=False)
    text = text[: find_first_stop(text, [m for m in markers if isinstance(m, str)])]
    at = find_first_stop(text, stop_seqs)
    if at is None:
        return tokens
    end = markers[0] if markers else ""
    if isinstance(end, int):
        return [*_text_tokens(tokenizer, text[:at]), end]
    return _text_tokens(tokenizer, text[:at] + end)  # one text: no space before the marker


def _text_tokens(tokenizer: Any, text: str) -> list[int]:
    """`text`'s tokens with special-token strings in it kept as plain text."""
    return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))


def _validate_required_tool_choice(replies: list[Message], tool_choice: ToolChoice) -> None:
    """Raises `ConfigurationError` when `tool_choice` ("any" or a function) demanded a tool
    call and a reply made none (an unparsed call counts: Inspect reports its error)."""
    if tool_choice != "any" and not isinstance(tool_choice, ToolFunction):
        return
    for i, reply in enumerate(replies):
        calls = reply.get("tool_calls") or []
        if reply.get("unparsed_tool_calls"):
            continue
        if not calls:
            raise ConfigurationError(
                f"Inspect tool_choice={tool_choice!r} requires a tool call, but choice {i} did "
                "not produce one."
            )
        if isinstance(tool_choice, ToolFunction) and all(
            call.function.name != tool_choice.name for call in calls
        ):
            raise ConfigurationError(
                f"Inspect tool_choice requested function {tool_choice.name!r}, but choice {i} "
                f"produced {[call.function.name for call in calls]!r}."
            )


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
