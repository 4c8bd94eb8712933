"""One choice of a streamed answer: the `choices` entries of its chunks, from the engine's events.

Chat: a first delta with the role, then content deltas; with tools, text that may still become a
call is held back until it cannot (then streamed as content) or the answer ends (then sent as
tool-call deltas: the id and name first, then the arguments); a last delta with the finish_reason.
"""

from typing import List, Optional

from ..chat_format import UNSAFE_ERROR
from ..decoding.requests import Completion, TokenEvent
from . import shapes
from .prepare import Choice, Job


class ChoiceStream:
    def __init__(self, job: Job, choice: Choice, tokenizer):
        self.job, self.choice, self.tokenizer = job, choice, tokenizer
        self.chat = job.kind == "chat"
        self.held = job.tools is not None and not choice.unsafe  # tools: text held while it may be a call
        self.text = ""  # everything generated so far
        self.offset = len(choice.prompt_text) if job.echo else 0  # completions' text_offset

    def _entry(self, delta: Optional[dict] = None, text: str = "", logprobs=None, finish: Optional[str] = None):
        if self.chat:
            return {"index": self.choice.index, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish}
        return {"index": self.choice.index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def opening(self) -> List[dict]:
        if self.chat:
            return [self._entry({"role": "assistant", "content": ""})]
        return [self._entry(text=self.choice.prompt_text)] if self.job.echo and self.choice.prompt_text else []

    def event(self, event: TokenEvent) -> List[dict]:
        self.text += event.text
        if self.choice.unsafe:
            return []
        if self.held:
            if self.job.tools is not None and self.job.tools.may_be_call(self.text):
                return []
            self.held = False  # not a call after all: what was held goes out now
            return [self._entry({"content": self.text})] if self.text else []
        logprobs = self._logprobs(event)
        if not event.text and logprobs is None:
            return []
        if self.chat:
            return [self._entry({"content": event.text}, logprobs=logprobs)]
        return [self._entry(text=event.text, logprobs=logprobs)]

    def _logprobs(self, event: TokenEvent):
        if not self.job.logprobs or event.token is None or event.logprob is None:
            return None
        tops = [event.top_logprobs] if event.top_logprobs is not None else None
        if self.chat:
            return shapes.chat_logprobs(self.tokenizer, [event.token], [event.logprob], tops)
        out = shapes.text_logprobs(self.tokenizer, [event.token], [event.logprob], tops or [None], self.offset)
        self.offset += len(event.text)
        return out

    def closing(self, completion: Completion) -> List[dict]:
        out = []
        calls: List[dict] = []
        if self.choice.unsafe:
            out.append(self._entry({"content": UNSAFE_ERROR}, text=UNSAFE_ERROR))
        elif self.held and self.job.tools is not None:
            content, calls = self.job.tools.answer(completion.text)
            for i, call in enumerate(calls):
                head = {"index": i, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}  # fmt: skip
                out.append(self._entry({"tool_calls": [head]}))
                out.append(
                    self._entry(
                        {"tool_calls": [{"index": i, "function": {"arguments": call["function"]["arguments"]}}]}
                    )
                )
            if not calls and content:
                out.append(self._entry({"content": content}))
        out.append(self._entry(finish=shapes.finish_reason(completion, calls)))
        return out
