"""An OpenAI request body -> the engine Requests that answer it (one per choice), checked against
the model: the chat layout chat_completion uses, prompts encoded as text_completion encodes them,
the context's room for max_tokens."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, cast

from ..chat_format import Dialog, encode_dialog, is_unsafe
from ..decoding.requests import Request
from ..decoding.sampler import SamplingParams
from ..errors import ConfigError
from . import fields
from .errors import APIError, bad_field
from .tool_calls import ToolPlan, plan_tools

CHAT_ROLES = ("system", "user", "assistant")


@dataclass
class Choice:
    index: int
    request: Request
    prompt_text: str = ""  # completions with echo: the prompt as given
    unsafe: bool = False  # a Llama 2 dialog with [INST]/<<SYS>> tags: the answer is replaced (as chat_completion does)


@dataclass
class Job:
    kind: str  # "chat" or "text"
    common: fields.Common
    choices: List[Choice] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    echo: bool = False
    tools: Optional[ToolPlan] = None

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens counted once per prompt (n choices of one prompt share it)."""
        return sum(len(c.request.prompt_tokens) for c in self.choices[:: self.common.n])


def check_model(body: dict, model_id: str) -> None:
    model = body.get("model")
    if model is not None and model != model_id:
        raise APIError(404, f"The model {model!r} does not exist; this server serves {model_id!r}",
                       param="model", code="model_not_found")  # fmt: skip


def _room(prompt: List[int], max_tokens: Optional[int], max_seq_len: int, where: str) -> int:
    """max_tokens, or all the context the prompt leaves; 400 giving both numbers when they do not fit."""
    if len(prompt) >= max_seq_len:
        message = (f"This model's maximum context length is {max_seq_len} tokens, and the prompt ('{where}') already "
                   f"has {len(prompt)}; shorten it")  # fmt: skip
        raise APIError(400, message, param=where, code="context_length_exceeded")
    if max_tokens is None:
        return max_seq_len - len(prompt)
    if len(prompt) + max_tokens > max_seq_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_seq_len} tokens; the prompt ('{where}') has {len(prompt)} "
            f"tokens and max_tokens asks for {max_tokens} more ({len(prompt) + max_tokens} in all); lower max_tokens "
            f"to at most {max_seq_len - len(prompt)} or shorten the prompt",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens


def _requests(job: Job, prompts: List[List[int]], max_seq_len: int, where: str, **extra: Any) -> None:
    c = job.common
    for p, prompt in enumerate(prompts):
        room = _room(prompt, c.max_tokens, max_seq_len, where)
        for k in range(c.n):
            seed = None if c.seed is None else c.seed + k  # n choices of one seeded request differ, reproducibly
            sampling = SamplingParams(temperature=c.temperature, top_p=c.top_p, seed=seed,
                                      frequency_penalty=c.frequency_penalty,
                                      presence_penalty=c.presence_penalty)  # fmt: skip
            request = Request(prompt, room, sampling, stop_strings=tuple(c.stop), logprobs=job.logprobs,
                              top_logprobs=job.top_logprobs, **extra)  # fmt: skip
            job.choices.append(Choice(p * c.n + k, request))


def _dialog(messages: Any, tools_allowed: bool) -> List[Dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise bad_field("messages", "a non-empty list of messages", messages)
    roles = CHAT_ROLES + (("tool",) if tools_allowed else ())
    dialog = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_field(where, 'an object like {"role": "user", "content": "..."}', msg)
        if msg.get("role") not in roles:
            raise bad_field(f"{where}.role", " or ".join(repr(r) for r in roles), msg.get("role"))
        content = msg.get("content")
        text = "" if content is None and msg.get("tool_calls") else fields.text_of(content, f"{where}.content")
        out = {"role": msg["role"], "content": text}
        if msg.get("tool_calls"):
            out["tool_calls"] = msg["tool_calls"]
        dialog.append(out)
    return dialog


def chat_job(body: dict, generator) -> Job:
    fields.refuse_unsupported(body)
    logprobs = fields.boolean(body, "logprobs")
    top = fields.integer(body, "top_logprobs", 0, fields.MAX_TOP_LOGPROBS) or 0
    if top and not logprobs:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value")
    job = Job("chat", fields.common(body), logprobs=logprobs, top_logprobs=top)
    job.tools = plan_tools(body, generator)
    dialog = _dialog(body.get("messages"), tools_allowed=job.tools is not None)
    try:
        if job.tools is not None:
            prompt = job.tools.encode(dialog)
        else:
            prompt = encode_dialog(generator.tokenizer, cast(Dialog, dialog))
    except (ConfigError, TypeError) as exc:
        raise APIError(400, str(exc).replace("dialog 0, ", ""), param="messages", code="invalid_value") from None
    _requests(job, [prompt], generator.model.params.max_seq_len, "messages")
    unsafe = is_unsafe(generator.tokenizer, cast(Dialog, dialog))
    for choice in job.choices:
        choice.unsafe = unsafe
    return job


def completion_job(body: dict, generator) -> Job:
    fields.refuse_unsupported(body, ("tools", "tool_choice"))
    best_of = fields.integer(body, "best_of", 1)
    if best_of not in (None, 1):
        raise APIError(400, "'best_of' other than 1 is not supported by this server; leave it out", param="best_of",
                       code="unsupported_parameter")  # fmt: skip
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise bad_field("prompt", "a string or a non-empty list of strings", prompt)
    top = fields.integer(body, "logprobs", 0, fields.MAX_TOP_LOGPROBS)
    echo = fields.boolean(body, "echo")
    job = Job("text", fields.common(body), logprobs=top is not None, top_logprobs=top or 0, echo=echo)
    tokens = [generator.tokenizer.encode(p, bos=True, eos=False) for p in prompts]
    _requests(job, tokens, generator.model.params.max_seq_len, "prompt", prompt_logprobs=echo and top is not None)
    for choice in job.choices:
        choice.prompt_text = prompts[choice.index // job.common.n]
    return job
