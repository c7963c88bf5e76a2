"""The token ids a job's generation starts from: the tokenizer's own chat template for chat requests, when the
model has one, else the prompt text the gateway wrote.

Only a template the tokenizer was configured with counts (`tokenizer.chat_template`); the class-wide default
that transformers falls back to is a guess (ChatML for any tokenizer), and the gateway's plain
`System:/User:/Assistant:` format is at least honest about being generic. A template that refuses the turns
(Llama 2's insists that roles alternate) is logged and the fallback prompt is used, so the request still runs.
"""

import logging
from typing import Any, Protocol

from protocol.jobs import GenerateJob

log = logging.getLogger(__name__)


class _Tokenizes(Protocol):
    @property
    def tokenizer(self) -> Any: ...

    def encode(self, text: str) -> list[int]: ...


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries its model's own chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(served: _Tokenizes, job: GenerateJob) -> list[int]:
    """The ids to prefill for `job` on `served`'s model."""
    tokenizer = served.tokenizer
    if job.messages and has_chat_template(tokenizer):
        turns = [{"role": turn.role, "content": turn.content} for turn in job.messages]
        try:
            return [int(i) for i in tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)]
        except Exception as exc:  # jinja2 raises TemplateError and anything a template's raise_exception makes
            log.warning(
                "chat template refused the turns request_id=%s error=%s; using the fallback prompt",
                job.request_id,
                type(exc).__name__,
            )
    return served.encode(job.prompt)
