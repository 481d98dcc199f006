"""One prompt and its streamed continuation: the prompt styled apart, then a status line when it ends."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.visual import visualize
from textual.widget import Widget

from bloomtui.tui.pending_text import Piece

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
    sample: int = 0
    """Which of its run's samples this is (1-based); 0 for a run that wrote one continuation."""
    samples: int = 1
    picked: bool = False
    """The sample the user picked to continue from."""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def label(self) -> str:
        """ "sample 2/4" ("" for a run of one)."""
        return f"sample {self.sample}/{self.samples}" if self.sample else ""

    def take(self, pieces: Iterable[Piece], guess: str) -> tuple[str, bool]:
        """Verified pieces join the text, a draft's guess replaces `guess` (verified pieces consume it while they
        agree with it; the first that differs ends it). Returns the guess left and whether anything changed."""
        changed = False
        for piece in pieces:
            if piece.guess:
                guess = piece.text
            elif piece.text:
                self.pieces.append(piece.text)
                guess = guess[len(piece.text) :] if guess.startswith(piece.text) else ""
            else:
                continue
            changed = True
        return guess, changed


class ExchangeView(Widget):
    """An exchange's continuation as it streams, for a run of one (RunOutput) and a sample's pane alike: its text,
    then `guess` (a draft's proposal not yet verified: dimmed, never part of the exchange), then a cursor while it
    runs or how it ended. The styles of those parts are set here once."""

    COMPONENT_CLASSES = {
        "exchange-view--text",
        "exchange-view--guess",
        "exchange-view--running",
        "exchange-view--done",
        "exchange-view--cancelled",
        "exchange-view--error",
    }
    DEFAULT_CSS = """
    ExchangeView > .exchange-view--text { color: $text; }
    ExchangeView > .exchange-view--guess { color: $text-disabled; text-style: italic; }
    ExchangeView > .exchange-view--running { color: $text-muted; text-style: italic; }
    ExchangeView > .exchange-view--done { color: $text-success; }
    ExchangeView > .exchange-view--cancelled { color: $text-warning; text-style: bold; }
    ExchangeView > .exchange-view--error { color: $text-error; text-style: bold; }
    """

    def __init__(self, exchange: Exchange, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.exchange = exchange
        self.guess = ""

    def extend(self, pieces: Iterable[Piece]) -> None:
        """Verified pieces and guesses in the order they came, then one redraw."""
        self.guess, changed = self.exchange.take(pieces, self.guess)
        if changed:
            self._text_changed()

    def _text_changed(self) -> None:
        self.refresh(layout=True)

    def finish(self, outcome: str, status: str) -> None:
        self.exchange.outcome, self.exchange.status = outcome, status
        self.guess = ""
        self.refresh(layout=True)

    def _continuation(self, text: Text) -> Text:
        """`text` with the continuation after it, each part in its style."""
        style = self.get_component_rich_style
        return continuation(text, self.exchange, self.guess, lambda part: style(f"exchange-view--{part}"))


class RunOutput(ExchangeView):
    """A run that writes one continuation: a header, the prompt styled apart, then the continuation."""

    COMPONENT_CLASSES = {"run-output--header", "run-output--prompt"}
    DEFAULT_CSS = """
    RunOutput { height: auto; padding: 0 1; }
    RunOutput > .run-output--header { color: $text-muted; }
    RunOutput > .run-output--prompt { color: $text-accent; text-style: bold; }
    """

    def __init__(self, run: int, exchange: Exchange, **kwargs: object) -> None:
        super().__init__(exchange, **kwargs)
        self.run = run
        self._laid_out: tuple[int, int] = (0, 0)
        """(width, height) of the text when a layout was last asked for."""

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        # Textual asks for another layout of the whole screen when a widget's size changed in the one just done:
        # a container may have to arrange its children again, but this one has none, and each line a fast run
        # adds would cost a second frame.
        return super()._size_updated(size, virtual_size, container_size, layout=False)

    def _text_changed(self) -> None:
        """A new layout (a full one of the screen in Textual) only when the text wrapped onto more lines; most
        appends of a fast run fill the line they are on, and a repaint of this widget is all they need."""
        width = self.content_size.width
        if width <= 0:
            self.refresh(layout=True)
            return
        size = (width, visualize(self, self.render()).get_height(self.styles, width))
        if size == self._laid_out:
            self.refresh()
        else:
            self._laid_out = size
            self.refresh(layout=True)

    def render(self) -> Text:
        style = self.get_component_rich_style
        text = Text()
        text.append(f"#{self.run} · {self.exchange.model}\n", style("run-output--header"))
        text.append(printable(self.exchange.prompt), style("run-output--prompt"))
        return self._continuation(text)


def continuation(text: Text, exchange: Exchange, guess: str, style: Callable[[str], Style]) -> Text:
    """`text` with the exchange's continuation, the guess dimmed, and a cursor while it runs or how it ended;
    `style` gives the style of each part (text, guess, running, done, cancelled, error)."""
    text.append(printable(exchange.text), style("text"))
    if guess:
        text.append(printable(guess), style("guess"))
    if exchange.outcome == "running":
        text.append(" ▍", style("running"))
    else:
        text.append(f"\n— {exchange.status}", style(exchange.outcome))
    return text
