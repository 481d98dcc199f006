"""The app's widgets, one per module."""

from bloomtui.tui.widgets.app_footer import AppFooter
from bloomtui.tui.widgets.block_map import BlockMap
from bloomtui.tui.widgets.engine_panel import EnginePanel
from bloomtui.tui.widgets.output_view import Notice, OutputView
from bloomtui.tui.widgets.prompt_editor import PromptEditor
from bloomtui.tui.widgets.run_output import Exchange, RunOutput
from bloomtui.tui.widgets.status_line import StatusLine

__all__ = [
    "AppFooter",
    "BlockMap",
    "EnginePanel",
    "Exchange",
    "Notice",
    "OutputView",
    "PromptEditor",
    "RunOutput",
    "StatusLine",
]
