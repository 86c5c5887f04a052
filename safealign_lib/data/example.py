"""One conversation turn, the unit of every data set the course reads or generates."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChatExample:
    """One conversation turn: an optional system prompt, a user message and (for training)
    the assistant's response. ``meta`` carries labels such as ``{"harmful": True}``."""

    user: str
    response: str | None = None
    system: str | None = None
    meta: dict = field(default_factory=dict)

    def messages(self, with_response: bool) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": self.user})
        if with_response:
            if self.response is None:
                raise ValueError(
                    "This example has no response; it can be used for evaluation only."
                )
            msgs.append({"role": "assistant", "content": self.response})
        return msgs
