"""The token ids a job's generation starts from: for chat requests, the chat template the model catalogue
records for the model (`ModelSpec.chat_template`), else the tokenizer's own, else the prompt text the gateway
wrote.

Only a template the tokenizer was configured with counts (`tokenizer.chat_template`); the class-wide default
that transformers falls back to is a guess (ChatML for any tokenizer), and the gateway's plain
`System:/User:/Assistant:` format is at least honest about being generic. A template that refuses the turns
(Llama 2's insists that roles alternate) is logged and the fallback prompt is used, so the request still runs.
"""

import logging
from typing import Any, Protocol

from protocol.catalog import ModelSpec
from protocol.jobs import GenerateJob

log = logging.getLogger(__name__)


class _Tokenizes(Protocol):
    @property
    def tokenizer(self) -> Any: ...

    @property
    def spec(self) -> ModelSpec: ...

    def encode(self, text: str) -> list[int]: ...


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries its model's own chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(served: _Tokenizes, job: GenerateJob) -> list[int]:
    """The ids to prefill for `job` on `served`'s model."""
    if not job.messages:  # a completion: nothing to format
        return served.encode(job.prompt)
    tokenizer = served.tokenizer
    template = served.spec.chat_template or (tokenizer.chat_template if has_chat_template(tokenizer) else None)
    if template:
        turns = [{"role": turn.role, "content": turn.content} for turn in job.messages]
        try:
            ids = tokenizer.apply_chat_template(
                turns, chat_template=template, add_generation_prompt=True, tokenize=True
            )
            return [int(i) for i in ids]
        except Exception as exc:  # jinja2 raises TemplateError and anything a template's raise_exception makes
            log.warning(
                "chat template refused the turns request_id=%s error=%s; using the fallback prompt",
                job.request_id,
                type(exc).__name__,
            )
    return served.encode(job.prompt)
