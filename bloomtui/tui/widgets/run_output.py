"""One prompt and its streamed continuation: the prompt styled apart, then a status line when it ends."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.widget import Widget

# C0 controls other than newline and tab would reach the terminal raw (a random model emits them): show
# them as their Unicode control pictures instead (U+2400 + code), so they are visible and harmless.
_CONTROLS = {code: 0x2400 + code for code in range(32) if chr(code) not in "\n\t"} | {0x7F: 0x2421}


def printable(text: str) -> str:
    return text.translate(_CONTROLS)


@dataclass
class Exchange:
    """A prompt, the text generated for it so far, and how the run ended (empty while running)."""

    prompt: str
    model: str
    pieces: list[str] = field(default_factory=list)
    status: str = ""
    outcome: str = "running"
    """running, done, cancelled or error."""

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class RunOutput(Widget):
    """`guess` is a draft's proposal not yet verified: shown dimmed after the text, never part of the exchange.
    Verified pieces consume it while they agree with it; the first that differs ends it."""

    COMPONENT_CLASSES = {
        "run-output--guess",
        "run-output--header",
        "run-output--prompt",
        "run-output--text",
        "run-output--running",
        "run-output--done",
        "run-output--cancelled",
        "run-output--error",
    }
    DEFAULT_CSS = """
    RunOutput { height: auto; padding: 0 1 1 1; }
    RunOutput > .run-output--header { color: $text-muted; }
    RunOutput > .run-output--prompt { color: $text-accent; text-style: bold; }
    RunOutput > .run-output--text { color: $text; }
    RunOutput > .run-output--guess { color: $text-disabled; text-style: italic; }
    RunOutput > .run-output--running { color: $text-muted; text-style: italic; }
    RunOutput > .run-output--done { color: $text-success; }
    RunOutput > .run-output--cancelled { color: $text-warning; text-style: bold; }
    RunOutput > .run-output--error { color: $text-error; text-style: bold; }
    """

    def __init__(self, run: int, exchange: Exchange, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.run = run
        self.exchange = exchange
        self.guess = ""

    def append(self, piece: str) -> None:
        if piece:
            self.exchange.pieces.append(piece)
            self.guess = self.guess[len(piece) :] if self.guess.startswith(piece) else ""
            # Rendering happens at most once per frame however many pieces arrive before it.
            self.refresh(layout=True)

    def show_guess(self, text: str) -> None:
        self.guess = text
        self.refresh(layout=True)

    def finish(self, outcome: str, status: str) -> None:
        self.exchange.outcome, self.exchange.status = outcome, status
        self.guess = ""
        self.refresh(layout=True)

    def render(self) -> Text:
        style = self.get_component_rich_style
        text = Text()
        text.append(f"#{self.run} · {self.exchange.model}\n", style("run-output--header"))
        text.append(printable(self.exchange.prompt), style("run-output--prompt"))
        text.append(printable(self.exchange.text), style("run-output--text"))
        if self.guess:
            text.append(printable(self.guess), style("run-output--guess"))
        if self.exchange.outcome == "running":
            text.append(" ▍", style("run-output--running"))
        else:
            text.append(f"\n— {self.exchange.status}", style(f"run-output--{self.exchange.outcome}"))
        return text
