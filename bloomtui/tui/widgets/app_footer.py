"""The footer, with each key classed by its action so the stylesheet can drop the less needed ones on narrow
terminals (app.tcss: below PANEL_SIDE_MIN_WIDTH columns the run, cancel, settings, model, panel and quit keys
must fit 80 columns whole)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class AppFooter(Footer):
    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if isinstance(widget, FooterKey):
                widget.add_class(f"-action-{widget.action.removeprefix('app.')}")
            yield widget
